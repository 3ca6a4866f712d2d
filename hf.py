"""
Hugging Face checkpoints, local directories only (config.json + safetensors; nothing downloaded):
from_pretrained loads GPT-2, Qwen2/Qwen2.5, Qwen3 and Llama weights into our GPT exactly (strict: every
tensor used, every parameter filled, every shape checked); save_pretrained writes our GPT back in that
format (a from-scratch GPT as a Llama, whose block ours is by default).
"""

import os

import torch

from model import GPT, GPTConfig, rope_tables
from tokenizer import CheckpointError, read_json

ARCHITECTURES = ("GPT2LMHeadModel", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM")   # what loads


def hf_config(path):
    """GPTConfig for a Hugging Face config.json (GPT2LMHeadModel, Qwen2ForCausalLM, Qwen3ForCausalLM,
    LlamaForCausalLM)."""
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
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM"):
        rope = c.get("rope_parameters") or {}
        scaling = c.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise CheckpointError(f"{cfg_path}: rope scaling {scaling} is not supported")
        if c.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"{cfg_path}: hidden_act {c['hidden_act']!r} is not supported")
        heads = c["num_attention_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // heads
        if head_dim * heads != c["hidden_size"] and arch != "Qwen3ForCausalLM":
            raise CheckpointError(f"{cfg_path}: head_dim x num_attention_heads != hidden_size is not supported")
        qkv_bias = arch == "Qwen2ForCausalLM" or c.get("attention_bias", False)
        return GPTConfig(vocab_size=c["vocab_size"], n_layer=c["num_hidden_layers"], n_head=heads,
                         n_kv_head=c.get("num_key_value_heads", heads), n_embd=c["hidden_size"],
                         block_size=c.get("max_position_embeddings", 2048), n_inner=c["intermediate_size"],
                         norm="rmsnorm", norm_eps=c.get("rms_norm_eps", 1e-6), pos="rope",
                         rope_theta=float(c.get("rope_theta", rope.get("rope_theta", 10000.0))), mlp="swiglu",
                         bias=False, qkv_bias=qkv_bias, qk_norm=arch == "Qwen3ForCausalLM",
                         head_size=head_dim if head_dim * heads != c["hidden_size"] else 0,
                         tie_embeddings=c.get("tie_word_embeddings", False))
    raise CheckpointError(f"{cfg_path}: architecture {arch!r} is not supported ({', '.join(ARCHITECTURES)})")


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
            if config.qk_norm:
                names[f"blocks.{i}.attn.q_norm.weight"] = (h + "self_attn.q_norm.weight", None)
                names[f"blocks.{i}.attn.k_norm.weight"] = (h + "self_attn.k_norm.weight", None)
            names[f"blocks.{i}.ln_1.weight"] = (h + "input_layernorm.weight", None)
            names[f"blocks.{i}.ln_2.weight"] = (h + "post_attention_layernorm.weight", None)
        names["ln_f.weight"] = ("model.norm.weight", None)
    if not config.tie_embeddings:
        names["lm_head.weight"] = ("lm_head.weight", None)
    return names


def tensor_locations(path):
    """Every tensor of a checkpoint's safetensors files (model.safetensors, or the shards listed in
    model.safetensors.index.json): {Hugging Face key, GPT-2's "transformer." prefix dropped: (file, key)}."""
    from safetensors import safe_open
    single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(read_json(index)["weight_map"].values()))
    elif os.path.exists(single):
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"no model.safetensors or model.safetensors.index.json in {path}")
    where = {}
    for fname in files:
        fpath = os.path.join(path, fname)
        if not os.path.exists(fpath):
            raise CheckpointError(f"missing shard {fpath} (listed in {index})")
        with safe_open(fpath, framework="pt") as f:
            for k in f.keys():
                where[k[len("transformer."):] if k.startswith("transformer.") else k] = (fpath, k)
    return where


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
    where = tensor_locations(path)
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
    return materialize(model, state, dtype)


def materialize(model, state, dtype):
    """A GPT made on the meta device, filled with state (every parameter's tensor, checked by the caller):
    tied embeddings tied again, the rotary tables computed (buffers, kept in float32)."""
    model = model.to_empty(device="cpu").to(dtype)
    model.load_state_dict(state, strict=False)
    if model.config.tie_embeddings:
        model.lm_head.weight = model.wte.weight
    if model.config.pos == "rope":
        model.rope_cos, model.rope_sin = rope_tables(model.config)
    return model


# ---------------------------------------------------------------------------------------------
# export: our GPT as a Hugging Face checkpoint directory that transformers loads

MODEL_TYPES = {"GPT2LMHeadModel": "gpt2", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
               "LlamaForCausalLM": "llama"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja")


def export_config(config, arch):
    """The config.json of our GPTConfig as the Hugging Face architecture `arch`; a ValueError names
    the switch that this architecture cannot express."""
    c = config
    if arch == "GPT2LMHeadModel":
        if (c.norm, c.pos, c.mlp, c.bias) != ("layernorm", "learned", "gelu", True) or c.n_kv_head != c.n_head:
            raise ValueError("a GPT2LMHeadModel needs norm=layernorm, pos=learned, mlp=gelu, bias, n_kv_head=n_head")
        return {"architectures": [arch], "model_type": "gpt2", "vocab_size": c.vocab_size, "n_embd": c.n_embd,
                "n_layer": c.n_layer, "n_head": c.n_head, "n_positions": c.block_size, "n_inner": c.mlp_width,
                "activation_function": "gelu_new", "layer_norm_epsilon": c.norm_eps, "resid_pdrop": 0.0,
                "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": c.tie_embeddings}
    if (c.norm, c.pos, c.mlp, c.bias) != ("rmsnorm", "rope", "swiglu", False):
        raise ValueError(f"a {arch} needs norm=rmsnorm, pos=rope, mlp=swiglu and no biases but q/k/v's")
    if c.qk_norm != (arch == "Qwen3ForCausalLM") or (c.qkv_bias and arch == "Qwen3ForCausalLM"):
        raise ValueError(f"qk_norm={c.qk_norm}, qkv_bias={c.qkv_bias} do not fit a {arch}")
    if c.qkv_bias != (arch == "Qwen2ForCausalLM") and arch != "LlamaForCausalLM":
        raise ValueError(f"qkv_bias={c.qkv_bias} does not fit a {arch}")
    if c.qkv_bias and arch == "LlamaForCausalLM":
        raise ValueError("a LlamaForCausalLM's attention_bias covers o_proj too: export q/k/v biases as a Qwen2")
    return {"architectures": [arch], "model_type": MODEL_TYPES[arch], "vocab_size": c.vocab_size,
            "hidden_size": c.n_embd, "intermediate_size": c.mlp_width, "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim,
            "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps, "hidden_act": "silu",
            "rope_theta": c.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
            "attention_bias": False, "tie_word_embeddings": c.tie_embeddings}


def export_state(model, arch):
    """Our parameters under their Hugging Face names (the inverse of _hf_names): GPT-2's q, k, v are
    fused back into c_attn and every Conv1D weight transposed back to (in, out)."""
    ours = dict(model.named_parameters())                                            # tied weights listed once
    state = {}
    for name, (key, fn) in _hf_names(model.config, arch).items():
        if name not in ours or ".c_attn." in key:                                     # c_attn: fused below
            continue
        t = ours[name].detach()
        if arch == "GPT2LMHeadModel":
            key = "transformer." + key if not key.startswith("lm_head") else key
            if fn is not None:                                                        # Conv1D: (in, out)
                t = t.t()
        state[key] = t
    if arch == "GPT2LMHeadModel":                                                    # fuse q, k, v: (C, 3C), (3C,)
        for i in range(model.config.n_layer):
            a = model.blocks[i].attn
            state[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat(
                [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).t().detach()
            qkv_bias = [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]
            state[f"transformer.h.{i}.attn.c_attn.bias"] = torch.cat(qkv_bias).detach()
    return {k: v.float().contiguous().cpu() for k, v in state.items()}


def save_pretrained(model, path, arch="LlamaForCausalLM", stop_ids=(), tokenizer_from=None, then=None):
    """Write model as a Hugging Face directory: config.json, model.safetensors, generation_config.json,
    and the tokenizer files of tokenizer_from (a Hugging Face checkpoint directory) if given; then(dir)
    writes more files into it (a GGUF start's tokenizer). Written to path + '.tmp' and renamed: a crash
    never leaves half a directory."""
    import json
    import shutil

    from safetensors.torch import save_file
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump({**export_config(model.config, arch), "torch_dtype": "float32"}, f, indent=2)
    save_file(export_state(model, arch), os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    gen = {"eos_token_id": list(stop_ids) if len(stop_ids) > 1 else (stop_ids[0] if stop_ids else None)}
    if tokenizer_from and os.path.exists(os.path.join(tokenizer_from, "generation_config.json")):
        gen = read_json(os.path.join(tokenizer_from, "generation_config.json"))
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
    for name in TOKENIZER_FILES if tokenizer_from else ():
        if os.path.exists(os.path.join(tokenizer_from, name)):
            shutil.copy(os.path.join(tokenizer_from, name), os.path.join(tmp, name))
    if then is not None:
        then(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def architecture(path):
    """The Hugging Face architecture named in path/config.json."""
    return (read_json(os.path.join(path, "config.json")).get("architectures") or [None])[0]
