"""
One RL step of ours against TRL's GRPOTrainer on the same checkpoint, prompts, reward and lengths
(docs/performance.md, "One RL step against TRL"): `python -m benchmarks.bench --trl [--real_lengths]` runs it.
"""

import contextlib
import itertools
import os
import statistics
import sys
import tempfile
import time

import torch

from benchmarks.common import raise_eos, sync


def tiny_qwen2(path, problems_text, real_lengths=False):
    """A ~3M-parameter Qwen2 (4 layers x 256, random weights) with a byte-level BPE of 320 ids trained on
    task text (the tokenizers library), saved with transformers: one checkpoint both trainers load.
    real_lengths: a GPT-2 of the same size instead, whose EOS is raised as in save_stopping (Qwen2's
    RMSNorm has no bias to raise it with), so that responses stop at many lengths."""
    import transformers
    from tokenizers import Tokenizer as BPE, decoders, models, pre_tokenizers, trainers
    bpe = BPE(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(problems_text, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                                pad_token="<|endoftext|>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    if real_lengths:
        cfg = transformers.GPT2Config(vocab_size=len(fast), n_embd=256, n_layer=4, n_head=4, n_positions=256,
                                      bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id)
        m = transformers.GPT2LMHeadModel(cfg)
        raise_eos(m, fast.eos_token_id, p_stop=1 / 24)
        m.save_pretrained(path)
        return fast
    cfg = transformers.Qwen2Config(vocab_size=len(fast), hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                                   tie_word_embeddings=True, eos_token_id=fast.eos_token_id)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(path)
    return fast


def our_rl_step(path, algo, args, out_dir, new_tokens=16, lr=1e-5):
    """One of our RL steps (collect + update: rollout, rewards, reference, loss, AdamW) as a function
    that runs the next step and returns its seconds."""
    import config
    import starts
    import train
    device = torch.device(args.device)
    a = config.parse_args(["--init_from", path, "--task", "countdown", "--algo", algo, "--batch_prompts", "16",
                           "--group_size", "8", "--max_new_tokens", str(new_tokens), "--lr", str(lr),
                           "--kl_coef", "0.04",
                           "--device", args.device, "--out_dir", out_dir,
                           "--bf16" if args.dtype == "bf16" else "--no-bf16"] + (["--compile"] if args.compile else []))
    warm, tok, task = starts.load_start(a, 0, 1, device)
    run = train.new_run(a, algo, warm, task, device, 0, 1)
    steps = itertools.count()

    def step():
        i = next(steps)
        sync(device)
        t0 = time.perf_counter()
        train.update(a, run, train.collect(a, run, task, tok, i, 0, 1), i, 1)
        sync(device)
        return time.perf_counter() - t0
    return step


def trl_interleaved(path, tokenizer, problems, task, args, ours, new_tokens=16, lr=1e-5):
    """Steps of TRL's GRPOTrainer on the same checkpoint, prompts, reward, batch (16 prompts x 8), lengths
    (16 new tokens), lr, temperature, with a reference model (beta 0.04); no vLLM. After each of its steps
    (timed from step begin to step end) one step of each of ours runs, in an order that alternates, so
    that the machine's drift falls on both sides alike. Returns {name: [seconds per step]}."""
    import datasets
    import transformers
    from trl import GRPOConfig, GRPOTrainer
    data = datasets.Dataset.from_dict({"prompt": [p.prompt for p in problems], "idx": list(range(len(problems)))})
    times = {name: [] for name in ["trl", *ours]}

    def reward(prompts, completions, idx, **kw):
        return [task.reward(problems[i], c) for i, c in zip(idx, completions)]

    device = torch.device(args.device)

    class Interleave(transformers.TrainerCallback):
        def on_step_begin(self, *a, **kw):
            sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **kw):
            sync(device)
            times["trl"].append(time.perf_counter() - self.t0)
            names = list(ours) if len(times["trl"]) % 2 else list(ours)[::-1]
            for name in names:
                times[name].append(ours[name]())
    cfg = GRPOConfig(output_dir=os.path.join(path, "trl"), per_device_train_batch_size=128, num_generations=8,
                     max_completion_length=new_tokens, beta=0.04, learning_rate=lr, temperature=1.0, use_vllm=False,
                     max_steps=args.reps + 1, loss_type="grpo", logging_steps=1, report_to="none", save_strategy="no",
                     use_cpu=device.type == "cpu", bf16=args.dtype == "bf16", disable_dropout=True,
                     gradient_checkpointing=False, seed=0)                       # ours: no checkpointing either
    GRPOTrainer(model=path, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=tokenizer,
                callbacks=[Interleave()]).train()
    return {name: t[1:] for name, t in times.items()}                            # the first step warms up


def trl_table(args):
    """One RL step, ours (FlowRL, GRPO with k3 KL 0.04) against TRL's GRPOTrainer (beta 0.04): medians of
    the step times and of the paired ratios (TRL's step over ours right after it)."""
    import random

    from rewards import get_task
    task = get_task("countdown")
    rng = random.Random(0)
    problems = [task.sample(rng) for _ in range(16 * (args.reps + 2))]
    # real lengths: a learning rate of 1e-12, so that no trainer's policy, and with it no trainer's answer
    # lengths, drifts during the measurement (at 1e-5 a random model's lengths move within a few steps,
    # each trainer's its own way); every step still runs its whole rollout, forward, backward and AdamW
    T, lr = (64, 1e-12) if args.real_lengths else (16, 1e-5)
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(sys.stderr):   # the trainers' logs
        tok = tiny_qwen2(d, [p.prompt + task.solutions(p)[0] for p in problems[:200]], args.real_lengths)
        ours = {algo: our_rl_step(d, algo, args, os.path.join(d, algo), T, lr) for algo in ("flowrl", "grpo")}
        times = trl_interleaved(d, tok, problems, task, args, ours, T, lr)
    dev = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
           else f"the CPU ({os.cpu_count()} cores)")
    what = ("GPT-2 whose answers stop at many lengths (EOS raised), countdown, 16 prompts x 8 samples x up to 64 new "
            "tokens" if args.real_lengths else "Qwen2, countdown, 16 prompts x 8 samples x 16 new tokens")
    print(f"\nOne RL step on {dev} ({args.dtype}, torch {torch.__version__}): a ~3M-parameter {what}, "
          f"lr {lr:g}, with a reference model; "
          f"{args.reps} steps of each after one warm-up step, interleaved (TRL, then ours)\n")
    print("| trainer | median s / step | TRL's step / this: median of the paired ratios (min-max) |")
    print("|---|---|---|")
    for name, label in [("flowrl", "ours, flowrl"), ("grpo", "ours, grpo (k3 KL 0.04)"),
                        ("trl", "TRL GRPOTrainer (beta 0.04)")]:
        ratios = [a / b for a, b in zip(times["trl"], times[name])]
        print(f"| {label} | {statistics.median(times[name]):.3f} | {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}) |")
