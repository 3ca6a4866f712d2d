"""
A small decoder-only transformer with a preallocated KV cache, and a tiktoken tokenizer.

One class, three block styles, chosen by GPTConfig switches:
- the from-scratch default: RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention;
- GPT-2: LayerNorm, learned positions, GELU MLP, biases everywhere, tied LM head;
- Qwen2 / Llama: RMSNorm, rotary positions (rope_theta), SwiGLU, q/k/v bias (Qwen2), tied or not.

Padding. Prompts of different lengths are left-padded; `valid` (B, T) marks the real tokens.
A query attends to the real keys at or before it; positions count real tokens only, so a
left-padded row computes exactly what the same row would compute unpadded.
"""

import math
import os
from dataclasses import dataclass

import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


@dataclass
class GPTConfig:
    vocab_size: int = 32
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4        # grouped-query attention: n_kv_head divides n_head
    n_embd: int = 128
    block_size: int = 64      # the longest sequence (prompt + response) the model sees
    n_inner: int = 0          # MLP hidden width; 0 means the style's default
    norm: str = "rmsnorm"     # "rmsnorm" | "layernorm"
    norm_eps: float = 1e-5
    pos: str = "rope"         # "rope" | "learned"
    rope_theta: float = 10000.0
    mlp: str = "swiglu"       # "swiglu" | "gelu" (GPT-2's tanh approximation)
    bias: bool = False        # biases in every linear layer and norm (GPT-2)
    qkv_bias: bool = False    # biases in the q, k, v projections only (Qwen2)
    tie_embeddings: bool = True

    def __post_init__(self):
        problems = []
        if self.n_head % self.n_kv_head:
            problems.append(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")
        if self.n_embd % self.n_head:
            problems.append(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            problems.append("rotary positions need an even head size")
        if self.norm not in ("rmsnorm", "layernorm"):
            problems.append(f"norm must be 'rmsnorm' or 'layernorm', got {self.norm!r}")
        if self.pos not in ("rope", "learned"):
            problems.append(f"pos must be 'rope' or 'learned', got {self.pos!r}")
        if self.mlp not in ("swiglu", "gelu"):
            problems.append(f"mlp must be 'swiglu' or 'gelu', got {self.mlp!r}")
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "block_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if problems:
            raise ValueError("bad GPTConfig: " + "; ".join(problems))

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def mlp_width(self):
        if self.n_inner:
            return self.n_inner
        # SwiGLU has three matrices, so 8/3·C keeps the parameter count of a 4·C GELU MLP
        return 4 * self.n_embd if self.mlp == "gelu" else 64 * math.ceil(8 * self.n_embd / 3 / 64)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def make_norm(config):
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def rotate(x, cos, sin):
    """Rotary position embedding, the 'rotate half' convention of GPT-NeoX / Llama / Qwen2.
    x: (B, nh, T, hs); cos, sin: (B, 1, T, hs/2)."""
    x1, x2 = x.chunk(2, dim=-1)                                  # (B, nh, T, hs/2) each
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def rope_tables(config, device=None):
    """cos and sin of the rotary angles pos·θ^(−2i/hs), (block_size, hs/2), computed in float64."""
    hs = config.head_dim
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float64, device=device) / hs)
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float64, device=device), inv_freq)
    return angles.cos().float(), angles.sin().float()


class KVCache:
    """Preallocated keys and values for every layer; decoding writes in place (no torch.cat).
    k, v: (n_layer, B, n_kv_head, max_len, hs); valid: (B, max_len), true for real tokens."""

    def __init__(self, config, batch_size, max_len, device, dtype):
        shape = (config.n_layer, batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.n_real = torch.zeros(batch_size, dtype=torch.long, device=device)  # real tokens so far
        self.length = 0  # slots filled, the same for every row
        self.no_padding = None  # after the prefill: true when no row has padding (decode needs no mask)

    def select(self, rows):
        """A new cache holding the given rows (LongTensor (B',)), e.g. each prompt's row repeated G
        times so that one prefill is shared by the G samples of its group."""
        out = KVCache.__new__(KVCache)
        out.k, out.v = self.k[:, rows], self.v[:, rows]
        out.valid, out.n_real = self.valid[rows], self.n_real[rows]
        out.length, out.no_padding = self.length, self.no_padding
        return out

    @staticmethod
    def concat(caches):
        """The rows of several caches of the same length, in order, as one cache."""
        out = KVCache.__new__(KVCache)
        out.k, out.v = torch.cat([c.k for c in caches], 1), torch.cat([c.v for c in caches], 1)
        out.valid, out.n_real = torch.cat([c.valid for c in caches]), torch.cat([c.n_real for c in caches])
        out.length, out.no_padding = caches[0].length, caches[0].no_padding
        return out


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        C, hs = config.n_embd, config.head_dim
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, hs
        qkv_bias = config.bias or config.qkv_bias
        self.q_proj = nn.Linear(C, config.n_head * hs, bias=qkv_bias)
        self.k_proj = nn.Linear(C, config.n_kv_head * hs, bias=qkv_bias)
        self.v_proj = nn.Linear(C, config.n_kv_head * hs, bias=qkv_bias)
        self.o_proj = nn.Linear(config.n_head * hs, C, bias=config.bias)

    def forward(self, x, rope, attn_mask, cache, layer):
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)     # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        if cache is not None:
            t0 = cache.length
            cache.k[layer, :, :, t0:t0 + T] = k
            cache.v[layer, :, :, t0:t0 + T] = v
            k = cache.k[layer, :, :, :t0 + T]                                          # (B, nkv, L, hs)
            v = cache.v[layer, :, :, :t0 + T]
        gqa = self.n_kv_head != self.n_head
        if attn_mask is None:   # no padding: plain causal attention, or one query seeing every key
            y = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None, enable_gqa=gqa)
        else:                   # attn_mask: (B, 1, T, L) bool, true where a query may look
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)               # (B, T, nh*hs)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        C, H = config.n_embd, config.mlp_width
        self.swiglu = config.mlp == "swiglu"
        if self.swiglu:
            self.gate_proj = nn.Linear(C, H, bias=config.bias)
        self.up_proj = nn.Linear(C, H, bias=config.bias)
        self.down_proj = nn.Linear(H, C, bias=config.bias)

    def forward(self, x):
        if self.swiglu:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = Attention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope, attn_mask, cache, layer):
        x = x + self.attn(self.ln_1(x), rope, attn_mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.grad_checkpointing = False   # activation checkpointing: less memory, one more forward
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if config.pos == "rope":
            cos, sin = rope_tables(config)
            self.register_buffer("rope_cos", cos, persistent=False)                  # (block_size, hs/2)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():   # GPT-2's scaled init of the residual projections
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def make_cache(self, batch_size, max_len):
        if max_len > self.config.block_size:
            raise ValueError(f"a sequence of {max_len} tokens exceeds block_size={self.config.block_size}")
        p = self.wte.weight
        return KVCache(self.config, batch_size, max_len, p.device, p.dtype)

    def forward(self, idx, valid=None, cache=None, return_hidden=False, logits_from=0):
        """idx: (B, T) token ids. valid: (B, T) bool, false at padding (None: all real).
        With a cache, idx holds the T tokens that follow the cache's filled slots.
        Returns logits (B, T - logits_from, vocab_size) for the positions from logits_from on (0: all),
        and with return_hidden also the final-layer hidden states after the last norm (B, T, n_embd),
        which the log Z and value heads read."""
        B, T = idx.shape
        if valid is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=idx.device)
        if cache is None:
            t0, keys_valid = 0, valid                                               # (B, L), L = T
            pos = valid.long().cumsum(-1) - 1                                       # (B, T)
        else:
            t0 = cache.length
            if t0 + T > cache.valid.shape[1]:
                raise ValueError(f"KV cache full: {t0} + {T} tokens > {cache.valid.shape[1]} slots")
            cache.valid[:, t0:t0 + T] = valid
            if T > 1:
                cache.no_padding = None                                             # recheck at the next step
            keys_valid = cache.valid[:, :t0 + T]                                    # (B, L), L = t0+T
            pos = cache.n_real[:, None] + valid.long().cumsum(-1) - 1               # (B, T)
        pos = pos.clamp(min=0)          # (positions < block_size: checked by make_cache and below, no sync)
        if cache is None and T > self.config.block_size:
            raise ValueError(f"a sequence of {T} tokens exceeds block_size={self.config.block_size}")

        # attention mask (B, 1, T, L): causal, real keys only; a padding query sees itself (no NaN)
        if cache is None and bool(valid.all()):
            attn_mask = None
        elif T == 1:                                                                # a decode step
            no_pad = cache.no_padding if cache.no_padding is not None else bool(keys_valid.all())
            cache.no_padding = no_pad                                               # known once: no sync per step
            attn_mask = None if no_pad else keys_valid[:, None, None, :]           # (B, 1, 1, L)
        else:
            L = t0 + T
            q_slot = torch.arange(t0, L, device=idx.device)[:, None]               # (T, 1)
            k_slot = torch.arange(L, device=idx.device)[None, :]                   # (1, L)
            causal = k_slot <= q_slot                                               # (T, L)
            attn_mask = (causal & keys_valid[:, None, :]) | (k_slot == q_slot)     # (B, T, L)
            attn_mask = attn_mask[:, None]                                          # (B, 1, T, L)

        x = self.wte(idx)                                                           # (B, T, C)
        rope = None
        if self.config.pos == "learned":
            x = x + self.wpe(pos)
        else:
            rope = (self.rope_cos[pos][:, None].to(x.dtype), self.rope_sin[pos][:, None].to(x.dtype))
        for layer, block in enumerate(self.blocks):
            if self.grad_checkpointing and cache is None and torch.is_grad_enabled():  # recompute in backward
                x = torch.utils.checkpoint.checkpoint(block, x, rope, attn_mask, None, layer, use_reentrant=False)
            else:
                x = block(x, rope, attn_mask, cache, layer)
        if cache is not None:
            cache.length = t0 + T
            cache.n_real += valid.long().sum(-1)
        h = self.ln_f(x)                                                            # (B, T, C)
        logits = self.lm_head(h[:, logits_from:]).float()                          # (B, T', V)
        return (logits, h) if return_hidden else logits


# pre-tokenizer patterns of the byte-level BPE families (split text before merging)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                 r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


def byte_to_unicode():
    """GPT-2's reversible map from the 256 bytes to printable characters, in which byte-level BPE
    vocabularies are written: printable Latin-1 bytes stand for themselves, the others for 256 + n."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


class Tokenizer:
    """A tiktoken.Encoding plus the ids training needs (end of sequence, padding).

    Two kinds: for the from-scratch tasks, one token per character of a fixed alphabet (explicit
    ranks, nothing downloaded: Tokenizer.for_chars); for Hugging Face checkpoints, their byte-level
    BPE rebuilt from vocab.json + merges.txt or tokenizer.json (Tokenizer.from_pretrained)."""

    EOS = "<|endoftext|>"
    PAD = "<|pad|>"

    def __init__(self, encoding, eos_id, pad_id, alphabet=None, chat=None):
        self.enc = encoding
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.alphabet = alphabet  # character-level tokenizers: the characters it knows
        self.chat = chat          # "chatml" for instruct models that use it, else None

    @classmethod
    def for_chars(cls, alphabet):
        chars = sorted(set(alphabet))
        if any(len(c.encode("utf-8")) != 1 for c in chars):
            raise ValueError("the character tokenizer takes single-byte (ASCII) characters only")
        ranks = {c.encode("utf-8"): i for i, c in enumerate(chars)}
        specials = {cls.EOS: len(chars), cls.PAD: len(chars) + 1}
        enc = tiktoken.Encoding(name="chars", pat_str=r"[\s\S]", mergeable_ranks=ranks,
                                special_tokens=specials)
        return cls(enc, specials[cls.EOS], specials[cls.PAD], alphabet="".join(chars))

    @classmethod
    def from_pretrained(cls, path):
        """The byte-level BPE of a GPT-2 or Qwen2 checkpoint directory as a tiktoken.Encoding: ranks from
        vocab.json (+ merges.txt) or tokenizer.json, the family's pre-tokenizer pattern, the special
        (added) tokens; end of sequence from generation_config.json, else tokenizer_config.json."""
        if not os.path.isdir(path):
            raise CheckpointError(f"tokenizer directory {path} does not exist")
        files = {n: os.path.join(path, n) for n in ("vocab.json", "merges.txt", "tokenizer.json",
                                                     "tokenizer_config.json", "generation_config.json", "config.json")}
        have = {n: os.path.exists(f) for n, f in files.items()}
        tj = _read_json(files["tokenizer.json"]) if have["tokenizer.json"] else {}
        if have["vocab.json"]:
            vocab = _read_json(files["vocab.json"])
        elif tj.get("model", {}).get("type") == "BPE":
            vocab = tj["model"]["vocab"]
        else:
            raise CheckpointError(f"no vocab.json or BPE tokenizer.json in {path}")
        specials = {}
        for t in tj.get("added_tokens", []):
            specials[t["content"]] = t["id"]
        tc = _read_json(files["tokenizer_config.json"]) if have["tokenizer_config.json"] else {}
        for i, t in tc.get("added_tokens_decoder", {}).items():
            specials[t["content"]] = int(i)
        decode_byte = {c: b for b, c in byte_to_unicode().items()}
        ranks = {}
        for token, i in vocab.items():
            if token in specials:
                continue
            try:
                ranks[bytes(decode_byte[c] for c in token)] = i
            except KeyError:
                raise CheckpointError(f"{path}: vocabulary entry {token!r} is not byte-level BPE")
        model_type = _read_json(files["config.json"]).get("model_type", "") if have["config.json"] else ""
        family = "qwen2" if "qwen" in (model_type + tc.get("tokenizer_class", "")).lower() else "gpt2"
        pattern = QWEN2_PATTERN if family == "qwen2" else GPT2_PATTERN
        pre = tj.get("pre_tokenizer") or {}
        for step in pre.get("pretokenizers", [pre]):
            if step.get("type") == "Split" and "Regex" in step.get("pattern", {}):
                pattern = step["pattern"]["Regex"]
        enc = tiktoken.Encoding(name=f"hf-{family}", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
        ids = {**{t: i for t, i in specials.items()}}
        eos = None
        if have["generation_config.json"]:
            e = _read_json(files["generation_config.json"]).get("eos_token_id")
            eos = e[0] if isinstance(e, list) else e
        if eos is None:
            name = tc.get("eos_token")
            name = name.get("content") if isinstance(name, dict) else name
            eos = ids.get(name or cls.EOS)
        if eos is None:
            raise CheckpointError(f"{path}: no end-of-sequence token (generation_config.json eos_token_id, "
                                  f"tokenizer_config.json eos_token, or {cls.EOS})")
        pad = tc.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        chat = "chatml" if "<|im_start|>" in specials and "<|im_end|>" in specials else None
        return cls(enc, eos, ids.get(pad, eos), chat=chat)

    @property
    def vocab_size(self):
        return self.enc.n_vocab

    def encode(self, text):
        if self.alphabet is None:          # Hugging Face BPE: special tokens in the text are specials
            return self.enc.encode(text, allowed_special="all")
        for c in text:                     # tiktoken panics (a BaseException) on a character without a rank
            if c not in self.alphabet:
                raise ValueError(f"character {c!r} is not in the tokenizer's alphabet {self.alphabet!r}")
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        """Text of the ids; an id the tokenizer lacks (an embedding table may have more rows than the
        tokenizer has ids) decodes to U+FFFD, so that it can never pass for a real answer."""
        ids, n = list(ids), self.enc.n_vocab
        if all(0 <= i < n for i in ids):
            return self.enc.decode(ids)
        out, run = [], []
        for i in ids + [-1]:
            if 0 <= i < n:
                run.append(i)
                continue
            out.append(self.enc.decode(run))
            run = []
            out.append("\ufffd")
        return "".join(out[:-1])

    def prompt(self, text):
        """A task prompt in the model's format: ChatML for instruct models that use it, else as is."""
        if self.chat == "chatml":
            return (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
        return text


# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoints (local directories only: config.json + safetensors), loaded exactly

class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded: the message names the file, the key, the shape."""


def _read_json(path):
    import json
    if not os.path.exists(path):
        raise CheckpointError(f"missing file {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}")


def hf_config(path):
    """GPTConfig for a Hugging Face config.json (GPT2LMHeadModel, Qwen2ForCausalLM, LlamaForCausalLM)."""
    cfg_path = os.path.join(path, "config.json")
    c = _read_json(cfg_path)
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
                names[f"blocks.{i}.attn.{q}_proj.weight"] = (h + "attn.c_attn.weight", lambda w, j=j: w[:, j * C:(j + 1) * C].t())
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
    arch = _read_json(os.path.join(path, "config.json"))["architectures"][0]
    single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(_read_json(index)["weight_map"].values()))
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
            raise CheckpointError(f"{path}: tensor {key!r} (for {ours}, shape {tuple(params[ours].shape)}) is in no file")
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
