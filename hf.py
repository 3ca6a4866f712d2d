"""
Hugging Face checkpoints, local directories only (config.json + safetensors; nothing downloaded):
from_pretrained loads GPT-2, Qwen2/Qwen2.5 and Llama weights into our GPT exactly (strict: every
tensor used, every parameter filled, every shape checked).
"""

import os

import torch

from model import GPT, GPTConfig, rope_tables
from tokenizer import CheckpointError, read_json


def hf_config(path):
    """GPTConfig for a Hugging Face config.json (GPT2LMHeadModel, Qwen2ForCausalLM, LlamaForCausalLM)."""
    cfg_path = os.path.join(path, "config.json")
    c = read_json(cfg_path)
    arch = (c.get("architectures") or [None])[0]
    if arch == "GPT2LMHeadModel":
        if c.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise CheckpointError(f"{cfg_path}: activation_function {c['activation_function']!r} is not supported")
        return GPTConfig(vocab_size=c["vocab_size"], n_layer=c["n_layer"], n_head=c["n_head"], n_kv_head=c["n_head"],
                         n_embd=c["n_embd"], block_size=c["n_positions"], n_inner=c.get("n_inner") or 0,
                         norm="layernorm", norm_eps=c.get("layer_norm_epsilon", 1e-5), pos="learned", mlp="gelu",
                         bias=True, tie_embeddings=c.get("tie_word_embeddings", True))
    if arch in ("Qwen2ForCausalLM", "LlamaForCausalLM"):
        rope = c.get("rope_parameters") or {}
        scaling = c.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise CheckpointError(f"{cfg_path}: rope scaling {scaling} is not supported")
        if c.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"{cfg_path}: hidden_act {c['hidden_act']!r} is not supported")
        heads = c["num_attention_heads"]
        if c.get("head_dim", c["hidden_size"] // heads) * heads != c["hidden_size"]:
            raise CheckpointError(f"{cfg_path}: head_dim x num_attention_heads != hidden_size is not supported")
        qkv_bias = arch == "Qwen2ForCausalLM" or c.get("attention_bias", False)
        return GPTConfig(vocab_size=c["vocab_size"], n_layer=c["num_hidden_layers"], n_head=heads,
                         n_kv_head=c.get("num_key_value_heads", heads), n_embd=c["hidden_size"],
                         block_size=c.get("max_position_embeddings", 2048), n_inner=c["intermediate_size"],
                         norm="rmsnorm", norm_eps=c.get("rms_norm_eps", 1e-6), pos="rope",
                         rope_theta=float(c.get("rope_theta", rope.get("rope_theta", 10000.0))), mlp="swiglu",
                         bias=False, qkv_bias=qkv_bias, tie_embeddings=c.get("tie_word_embeddings", False))
    raise CheckpointError(f"{cfg_path}: architecture {arch!r} is not supported "
                          f"(GPT2LMHeadModel, Qwen2ForCausalLM, LlamaForCausalLM)")


def _hf_names(config, arch):
    """Our parameter name -> (Hugging Face key, transform). GPT-2's fused, transposed Conv1D c_attn
    (C, 3C) is split into q, k, v; every Conv1D weight is transposed to Linear's (out, in)."""
    C = config.n_embd
    names = {}
    if arch == "GPT2LMHeadModel":
        T = lambda w: w.t()
        names["wte.weight"] = ("wte.weight", None)
        names["wpe.weight"] = ("wpe.weight", None)
        for i in range(config.n_layer):
            h = f"h.{i}."
            for j, q in enumerate("qkv"):
                names[f"blocks.{i}.attn.{q}_proj.weight"] = (h + "attn.c_attn.weight",
                                                              lambda w, j=j: w[:, j * C:(j + 1) * C].t())
                names[f"blocks.{i}.attn.{q}_proj.bias"] = (h + "attn.c_attn.bias", lambda b, j=j: b[j * C:(j + 1) * C])
            names.update({
                f"blocks.{i}.attn.o_proj.weight": (h + "attn.c_proj.weight", T),
                f"blocks.{i}.attn.o_proj.bias": (h + "attn.c_proj.bias", None),
                f"blocks.{i}.mlp.up_proj.weight": (h + "mlp.c_fc.weight", T),
                f"blocks.{i}.mlp.up_proj.bias": (h + "mlp.c_fc.bias", None),
                f"blocks.{i}.mlp.down_proj.weight": (h + "mlp.c_proj.weight", T),
                f"blocks.{i}.mlp.down_proj.bias": (h + "mlp.c_proj.bias", None),
            })
            for n in ("ln_1", "ln_2"):
                names[f"blocks.{i}.{n}.weight"] = (h + n + ".weight", None)
                names[f"blocks.{i}.{n}.bias"] = (h + n + ".bias", None)
        names["ln_f.weight"], names["ln_f.bias"] = ("ln_f.weight", None), ("ln_f.bias", None)
    else:
        names["wte.weight"] = ("model.embed_tokens.weight", None)
        for i in range(config.n_layer):
            h = f"model.layers.{i}."
            for q in "qkvo":
                names[f"blocks.{i}.attn.{q}_proj.weight"] = (h + f"self_attn.{q}_proj.weight", None)
                if q != "o" and config.qkv_bias:
                    names[f"blocks.{i}.attn.{q}_proj.bias"] = (h + f"self_attn.{q}_proj.bias", None)
            for m in ("gate", "up", "down"):
                names[f"blocks.{i}.mlp.{m}_proj.weight"] = (h + f"mlp.{m}_proj.weight", None)
            names[f"blocks.{i}.ln_1.weight"] = (h + "input_layernorm.weight", None)
            names[f"blocks.{i}.ln_2.weight"] = (h + "post_attention_layernorm.weight", None)
        names["ln_f.weight"] = ("model.norm.weight", None)
    if not config.tie_embeddings:
        names["lm_head.weight"] = ("lm_head.weight", None)
    return names


def from_pretrained(path, dtype=torch.float32):
    """A GPT holding the weights of a local Hugging Face checkpoint directory: config.json and
    model.safetensors, or shards listed in model.safetensors.index.json. Read with safetensors
    (never pickle) and strict: every tensor of the files is used, every parameter is filled, every
    shape is checked; an error (CheckpointError) names the file, the key and the expected shape."""
    from safetensors import safe_open
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    config = hf_config(path)
    arch = read_json(os.path.join(path, "config.json"))["architectures"][0]
    single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(read_json(index)["weight_map"].values()))
    elif os.path.exists(single):
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"no model.safetensors or model.safetensors.index.json in {path}")
    where = {}                                                                       # HF key -> file
    for fname in files:
        fpath = os.path.join(path, fname)
        if not os.path.exists(fpath):
            raise CheckpointError(f"missing shard {fpath} (listed in {index})")
        with safe_open(fpath, framework="pt") as f:
            for k in f.keys():
                where[k[len("transformer."):] if k.startswith("transformer.") else k] = (fpath, k)
    # buffers some GPT-2 files carry (causal masks) and rotary tables are not weights
    ignored = {k for k in where if k.endswith("rotary_emb.inv_freq") or
               (arch == "GPT2LMHeadModel" and k.endswith((".attn.bias", ".attn.masked_bias")))}
    if config.tie_embeddings and "lm_head.weight" in where:
        ignored.add("lm_head.weight")                                                # tied: the same tensor as wte
    with torch.device("meta"):
        model = GPT(config)
    names = _hf_names(config, arch)
    params = dict(model.named_parameters())
    missing = [n for n in params if n not in names and not (n == "lm_head.weight" and config.tie_embeddings)]
    assert not missing, f"no Hugging Face name for {missing}"                        # a bug of ours, not the user's
    state, used = {}, set(ignored)
    handles = {}
    for ours, (key, fn) in names.items():
        if key not in where:
            raise CheckpointError(f"{path}: tensor {key!r} (for {ours}, shape {tuple(params[ours].shape)}) "
                                  f"is in no file")
        fpath, raw_key = where[key]
        if fpath not in handles:
            handles[fpath] = safe_open(fpath, framework="pt")
        t = handles[fpath].get_tensor(raw_key)
        t = fn(t) if fn is not None else t
        if tuple(t.shape) != tuple(params[ours].shape):
            raise CheckpointError(f"{fpath}: tensor {raw_key!r} has shape {tuple(t.shape)} (after transposition "
                                  f"where GPT-2 needs it); expected {tuple(params[ours].shape)} for {ours}")
        state[ours] = t.to(dtype).contiguous()
        used.add(key)
    unused = sorted(set(where) - used)
    if unused:
        fpath, raw = where[unused[0]]
        raise CheckpointError(f"{fpath}: tensor {raw!r} is not used by a {arch} of this config "
                              f"({len(unused)} unused tensors in all)")
    model = model.to_empty(device="cpu").to(dtype)
    model.load_state_dict(state, strict=False)                                       # every parameter checked above
    if config.tie_embeddings:
        model.lm_head.weight = model.wte.weight
    if config.pos == "rope":                                                          # buffers, kept in float32
        model.rope_cos, model.rope_sin = rope_tables(config)
    return model
