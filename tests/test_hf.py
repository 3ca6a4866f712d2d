"""Hugging Face checkpoints: our model.py against transformers on tiny random checkpoints written
to a temp dir (no hub), and our tiktoken BPE against the tokenizers library."""
import json
import os
import random

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf import from_pretrained
from tokenizer import CheckpointError, Tokenizer
from rollout import generate
from conftest import HANG

transformers = pytest.importorskip("transformers")   # installed by requirements-test.txt; CI runs these

V = 96


def make(tmp, arch, shard=False, **kw):
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                      bos_token_id=1, eos_token_id=2, **kw)
        m = transformers.GPT2LMHeadModel(cfg)
    elif arch == "qwen2":
        base = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
        base.update(kw)
        m = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**base))
    elif arch == "qwen3":                       # head_dim 16 != hidden 32 / 4 heads, per-head q/k norms
        base = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, max_position_embeddings=64, tie_word_embeddings=False)
        base.update(kw)
        m = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**base))
    else:
        base = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False)
        base.update(kw)
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(**base))
    with torch.no_grad():                       # non-trivial biases and norms, so that a swap would show
        for n, p in m.named_parameters():
            if n.endswith("bias") or "norm" in n or "ln_" in n:
                p.add_(0.1 * torch.randn_like(p))
    path = str(tmp / f"{arch}_{len(os.listdir(tmp))}")
    m.save_pretrained(path, max_shard_size="20KB" if shard else "5GB")
    return path, m.eval()


CONFIGS = [
    ("gpt2", False, {}),
    ("gpt2", True, {"n_inner": 80}),
    ("qwen2", False, {}),                                                        # untied, GQA 2:1
    ("qwen2", True, {"tie_word_embeddings": True, "num_key_value_heads": 1}),    # tied, GQA 4:1, sharded
    ("qwen2", False, {"num_key_value_heads": 4, "rope_theta": 1e6}),             # MHA, Qwen2.5's rope theta
    ("qwen3", False, {}),                                                        # untied, head_dim 16
    ("qwen3", True, {"tie_word_embeddings": True, "head_dim": 4}),               # tied, head_dim 4, sharded
    ("llama", False, {}),
]


@pytest.mark.parametrize("arch,shard,kw", CONFIGS)
def test_logits_and_greedy_match_transformers(tmp_path, arch, shard, kw):
    path, ref = make(tmp_path, arch, shard, **kw)
    if shard:
        assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    ours = from_pretrained(path).eval()
    idx = torch.randint(0, V, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(idx) - ref(idx).logits).abs().max().item()
    assert diff < 1e-4, diff
    # greedy decoding with our KV cache equals transformers' greedy generate
    prompts = [idx[0, :7].tolist(), idx[1, :7].tolist()]
    eos = 5
    r = generate(ours, prompts, num_samples=1, max_new_tokens=12, temperature=0, eos_id=eos)
    for i, p in enumerate(prompts):
        out = ref.generate(torch.tensor([p]), do_sample=False, max_new_tokens=12, eos_token_id=eos, pad_token_id=eos)
        theirs = out[0, len(p):].tolist()
        mine = r.response[i][r.mask[i]].tolist()
        assert mine == theirs[:len(mine)] and len(mine) == len(theirs), (mine, theirs)


def test_bf16_load_keeps_rope_tables_in_fp32(tmp_path):
    path, _ = make(tmp_path, "qwen2")
    m = from_pretrained(path, dtype=torch.bfloat16)
    assert m.wte.weight.dtype == torch.bfloat16 and m.rope_cos.dtype == torch.float32
    assert m(torch.randint(0, V, (1, 5))).dtype == torch.float32


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        from_pretrained(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        from_pretrained(str(empty))
    path, _ = make(tmp_path, "qwen2")
    cfg = json.load(open(os.path.join(path, "config.json")))
    cfg["architectures"] = ["MambaForCausalLM"]
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(CheckpointError, match="MambaForCausalLM"):
        from_pretrained(path)
    path, _ = make(tmp_path, "qwen2")
    f = os.path.join(path, "model.safetensors")
    sd = load_file(f)
    sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(47, 32)
    save_file(sd, f)
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(47, 32\).*\(48, 32\)"):
        from_pretrained(path)
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, f)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight'.*\(48, 32\)"):
        from_pretrained(path)
    sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(48, 32)
    sd["model.layers.1.mlp.extra.weight"] = torch.zeros(3)
    save_file(sd, f)
    with pytest.raises(CheckpointError, match="extra.weight.*not used"):
        from_pretrained(path)
    os.remove(f)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        from_pretrained(path)


# ---- tokenizer parity ----

def train_bpe(tmp, qwen=False):
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if qwen else ["<|endoftext|>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    rng = random.Random(0)
    words = ["the", "answer", "is", "12", "345", "flow", "reward", "  ", "\n", "x=7", "héllo", "naïve", "日本",
             "'s", "'ll"]
    corpus = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(400)]
    tok.train_from_iterator(corpus, trainer)
    path = tmp / ("qwen_tok" if qwen else "gpt2_tok")
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))
    tok.model.save(str(path))                                   # vocab.json + merges.txt
    json.dump({"model_type": "gpt2"}, open(path / "config.json", "w"))
    json.dump({"eos_token_id": tok.token_to_id("<|im_end|>" if qwen else "<|endoftext|>")},
              open(path / "generation_config.json", "w"))
    return str(path), tok


def random_text(rng):
    pieces = ["0", "42", "31415", " ", "  ", "   ", "\n", "\n\n", "\t", "a", "The", " reward", "'s", "'ll", "é", "ü",
              "日本語", "🙂", "<|endoftext|>", "x+y=3", "  \n ", "...", "!?", "ΔlogZ", "\u00a0"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))


def test_tokenizer_matches_tokenizers_library(tmp_path):
    path, hf = train_bpe(tmp_path)
    ours = Tokenizer.from_pretrained(path)
    rng = random.Random(1)
    for _ in range(500):
        text = random_text(rng)
        ids = ours.encode(text)
        assert ids == hf.encode(text).ids, text
        assert ours.decode(ids) == text
    assert ours.eos_id == hf.token_to_id("<|endoftext|>") and ours.chat is None


CHATML_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chat_prompts_only_with_a_chat_template(tmp_path):
    path, hf = train_bpe(tmp_path, qwen=True)
    base = Tokenizer.from_pretrained(path)             # ChatML specials but no chat template: a base model
    assert base.chat is None and base.prompt("Compute 2+3.") == "Compute 2+3."
    json.dump({"chat_template": CHATML_TEMPLATE}, open(os.path.join(path, "tokenizer_config.json"), "w"))
    assert Tokenizer.from_pretrained(path).chat == CHATML_TEMPLATE
    os.remove(os.path.join(path, "tokenizer_config.json"))
    with open(os.path.join(path, "chat_template.jinja"), "w") as f:   # where transformers 5 writes it
        f.write(CHATML_TEMPLATE)
    tok = Tokenizer.from_pretrained(path)
    assert tok.chat == CHATML_TEMPLATE
    assert tok.prompt("Compute 2+3.") == "<|im_start|>user\nCompute 2+3.<|im_end|>\n<|im_start|>assistant\n"


def test_every_eos_id_of_generation_config_is_a_stop_id(tmp_path):
    path, hf = train_bpe(tmp_path, qwen=True)
    ids = [hf.token_to_id("<|im_end|>"), hf.token_to_id("<|endoftext|>")]
    json.dump({"eos_token_id": ids}, open(os.path.join(path, "generation_config.json"), "w"))
    tok = Tokenizer.from_pretrained(path)
    assert tok.stop_ids == tuple(ids) and tok.eos_id == ids[0]


def test_tokenizer_chatml_specials(tmp_path):
    path, hf = train_bpe(tmp_path, qwen=True)
    json.dump({"chat_template": CHATML_TEMPLATE}, open(os.path.join(path, "tokenizer_config.json"), "w"))
    ours = Tokenizer.from_pretrained(path)
    assert ours.eos_id == hf.token_to_id("<|im_end|>")
    text = ours.prompt("Compute 2+3.")
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert ours.encode(text) == hf.encode(text).ids
    assert ours.encode(text).count(hf.token_to_id("<|im_start|>")) == 2
    with pytest.raises(CheckpointError, match="does not exist"):
        Tokenizer.from_pretrained(str(tmp_path / "missing"))


@pytest.mark.slow
def test_train_init_from_tiny_qwen2(tmp_path):
    import train
    path, hf = train_bpe(tmp_path, qwen=True)
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=hf.get_vocab_size() + 13, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=256, tie_word_embeddings=True)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(path)   # beside the tokenizer files; more rows than ids
    json.dump({"eos_token_id": [hf.token_to_id("<|im_end|>"), hf.token_to_id("<|endoftext|>")]},
              open(os.path.join(path, "generation_config.json"), "w"))
    out = str(tmp_path / "out")
    summary = train.main(["--init_from", path, "--task", "countdown", "--algo", "flowrl", "grpo", "--steps", "2",
                          "--batch_prompts", "2", "--group_size", "2", "--max_new_tokens", "12", "--eval_k", "2",
                          "--eval_prompts", "2", "--eval_every", "1", "--out_dir", out, "--no_plot"])
    for algo in ("flowrl", "grpo"):
        rows = [json.loads(line) for line in open(os.path.join(out, algo, "metrics.jsonl"))]
        tr = [r for r in rows if r["kind"] == "train"]
        assert len(tr) == 2 and all(torch.isfinite(torch.tensor(r["entropy"])) for r in tr)
        assert tr[0]["completions/mean_length"] > 0
        assert "kl_to_target" not in rows[0]                    # BPE + instruct prompts: no exact metrics
        assert summary[algo]["k"] == 2
    ck = torch.load(os.path.join(out, "flowrl", "ckpt.pt"), weights_only=True)
    assert ck["head"]["out.weight"].shape == (1, 32)            # log Z head sized to the model


def test_train_init_from_bad_directory_exits_2(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for target, needle in ((str(tmp_path / "missing"), "not a directory"), (str(tmp_path), "config.json"),
                           (str(tmp_path / "m.gguf"), "GGUF file"), (__file__, "not a directory")):
        p = subprocess.run([sys.executable, os.path.join(root, "train.py"), "--init_from", target, "--out_dir",
                            str(tmp_path / "o")], capture_output=True, text=True, timeout=HANG)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], p.stderr
