"""
A small decoder-only transformer with a preallocated KV cache (the tokenizer: tokenizer.py; loading
Hugging Face weights: hf.py).

One class, three block styles, chosen by GPTConfig switches:
- the from-scratch default: RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention;
- GPT-2: LayerNorm, learned positions, GELU MLP, biases everywhere, tied LM head;
- Qwen2 / Qwen3 / Llama: RMSNorm, rotary positions (rope_theta), SwiGLU, q/k/v bias (Qwen2), per-head
  q/k RMSNorm and a head width of its own (Qwen3), tied or not.

Sampling keeps keys and values in a preallocated KVCache, written in place; the training forward
computes a group's shared prompt once and keeps its keys and values in a Prefix, in the autograd graph.

Padding. Prompts of different lengths are left-padded; `valid` (B, T) marks the real tokens.
A query attends to the real keys at or before it; positions count real tokens only, so a
left-padded row computes exactly what the same row would compute unpadded.
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.nn.attention import SDPBackend, sdpa_kernel


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
    qk_norm: bool = False     # RMSNorm over each head's queries and keys before the rotation (Qwen3)
    head_size: int = 0        # per-head width; 0 means n_embd // n_head (Qwen3 may differ)
    tie_embeddings: bool = True

    def __post_init__(self):
        problems = []
        if self.n_head % self.n_kv_head:
            problems.append(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")
        if self.n_embd % self.n_head and not self.head_size:
            problems.append(f"n_head={self.n_head} must divide n_embd={self.n_embd} (or set head_size)")
        if self.pos == "rope" and self.head_dim % 2:
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
        return self.head_size or self.n_embd // self.n_head

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
        """A new cache of the same length holding the given rows (LongTensor (B',)): each prompt's row
        repeated G times so that one prefill is shared by the G samples of its group, or a tree search's
        children (enumerate_responses). Only the filled slots are copied, into zeros: the rest of the
        preallocated length would be copies of zeros, a cost at long lengths."""
        out = KVCache.__new__(KVCache)
        t = self.length
        out.k = self.k.new_zeros(self.k.shape[:1] + (len(rows),) + self.k.shape[2:])  # (n_layer, B', nkv, Lmax, hs)
        out.v = torch.zeros_like(out.k)
        out.k[:, :, :, :t], out.v[:, :, :, :t] = self.k[:, rows, :, :t], self.v[:, rows, :, :t]
        out.valid = self.valid.new_zeros(len(rows), self.valid.shape[1])                # (B', Lmax)
        out.valid[:, :t] = self.valid[rows, :t]
        out.n_real, out.length, out.no_padding = self.n_real[rows], t, self.no_padding
        return out

    @staticmethod
    def concat(caches):
        """The rows of several caches of the same length, in order, as one cache."""
        out = KVCache.__new__(KVCache)
        out.k, out.v = torch.cat([c.k for c in caches], 1), torch.cat([c.v for c in caches], 1)
        out.valid, out.n_real = torch.cat([c.valid for c in caches]), torch.cat([c.n_real for c in caches])
        out.length, out.no_padding = caches[0].length, caches[0].no_padding
        return out


class GroupCache:
    """The decode cache of G samples per prompt in which each prompt's keys and values are held once:
    the prompt part is the prefill's KVCache (P rows, its Tp slots), the response part one row per
    sample (B rows, max_new slots). A decode step's attention reads each prompt's keys once for its
    whole group and each row's own response keys, and merges the two softmaxes by their log-sum-exp
    (GroupCache.attend; docs/method.md M9). owner, member: (B,) long, each row's prompt and its place
    in the group; n_real: (B,) real tokens before the next position (the prompt's plus those sampled)."""

    def __init__(self, prompt, group_size, max_new):
        B = prompt.k.shape[1] * group_size                                           # P prompts x G samples
        self.prompt_k = prompt.k[:, :, :, :prompt.length]                            # (n_layer, P, nkv, Tp, hs)
        self.prompt_v = prompt.v[:, :, :, :prompt.length]
        self.prompt_valid = prompt.valid[:, :prompt.length]                          # (P, Tp)
        shape = prompt.k.shape[:1] + (B,) + prompt.k.shape[2:3] + (max_new,) + prompt.k.shape[4:]
        self.k, self.v = prompt.k.new_zeros(shape), prompt.k.new_zeros(shape)        # (n_layer, B, nkv, max_new, hs)
        rows = torch.arange(B, device=prompt.k.device)
        self.owner, self.member, self.group_size = rows // group_size, rows % group_size, group_size
        self.n_real = prompt.n_real.repeat_interleave(group_size)                    # (B,)
        self.length = 0                                                              # response slots filled

    def select(self, rows):
        """The cache of the given rows (LongTensor (B',)): their response keys; the prompt part is shared."""
        out = GroupCache.__new__(GroupCache)
        out.__dict__.update(self.__dict__)
        t = self.length
        out.k = self.k.new_zeros(self.k.shape[:1] + (len(rows),) + self.k.shape[2:])
        out.v = torch.zeros_like(out.k)
        out.k[:, :, :, :t], out.v[:, :, :, :t] = self.k[:, rows, :, :t], self.v[:, rows, :, :t]
        out.owner, out.member, out.n_real = self.owner[rows], self.member[rows], self.n_real[rows]
        return out

    def attend(self, layer, q, k, v):
        """One decode step's attention for every row: q (B, nh, 1, hs); k, v (B, nkv, 1, hs) the new
        token's, written to the next response slot. softmax over [prompt keys, own response keys], as
        two parts: the prompt part with the G rows of a group as G queries of one attention over the
        prompt's keys (read once per group; rows that left the batch are zero queries there), the
        response part per row; out = (o1·e^lse1 + o2·e^lse2) / (e^lse1 + e^lse2). Returns (B, nh, 1, hs)."""
        t = self.length
        self.k[layer, :, :, t], self.v[layer, :, :, t] = k[:, :, 0], v[:, :, 0]
        B, nh, _, hs = q.shape
        nkv = k.shape[1]
        rep, P, G, scale = nh // nkv, self.prompt_k.shape[1], self.group_size, hs ** -0.5
        qr = q[:, :, 0].reshape(B, nkv, rep, hs)            # (B, nkv, rep, hs): head = kv·rep + r
        grid = qr.new_zeros(P, G, nkv, rep, hs)
        grid[self.owner, self.member] = qr
        qp = grid.permute(0, 2, 1, 3, 4).reshape(P, nkv, G * rep, hs)               # (P, nkv, G·rep, hs)
        s1 = (qp @ self.prompt_k[layer].transpose(-1, -2)).float() * scale          # (P, nkv, G·rep, Tp)
        s1 = s1.masked_fill(~self.prompt_valid[:, None, None, :], -math.inf)
        lse1 = torch.logsumexp(s1, -1)                                              # (P, nkv, G·rep)
        o1 = (s1 - lse1[..., None]).exp().to(q.dtype) @ self.prompt_v[layer]        # (P, nkv, G·rep, hs)
        o1 = o1.view(P, nkv, G, rep, hs).permute(0, 2, 1, 3, 4)[self.owner, self.member]   # (B, nkv, rep, hs)
        lse1 = lse1.view(P, nkv, G, rep).permute(0, 2, 1, 3)[self.owner, self.member]      # (B, nkv, rep)
        s2 = (qr @ self.k[layer, :, :, :t + 1].transpose(-1, -2)).float() * scale   # (B, nkv, rep, t+1)
        lse2 = torch.logsumexp(s2, -1)                                              # (B, nkv, rep)
        o2 = (s2 - lse2[..., None]).exp().to(q.dtype) @ self.v[layer, :, :, :t + 1]  # (B, nkv, rep, hs)
        lse = torch.logaddexp(lse1, lse2)
        y = o1 * (lse1 - lse).exp()[..., None].to(q.dtype) + o2 * (lse2 - lse).exp()[..., None].to(q.dtype)
        return y.reshape(B, nh, 1, hs)


class Prefix:
    """Keys and values of prompts that several rows share, for a forward with gradients (training's
    counterpart of KVCache; functional, so gradients flow back into the prompt's positions):
    forward(prompt, prefix=p) records every layer's keys and values; p.select(rows) gives each row its
    prompt's; forward(answers, prefix=p.select(rows)) then attends to them first (docs/method.md M9).
    k, v: layer -> (B, nkv, Tp, hs); valid: (B, Tp) bool, true on real prompt tokens."""

    def __init__(self, valid):
        self.valid, self.k, self.v = valid, {}, {}
        self.recording = True                    # false once selected: then the keys are read, not written

    def select(self, rows):
        """The prefix of the given rows (LongTensor (B',)), e.g. each prompt repeated for its G answers."""
        out = Prefix(self.valid[rows])
        out.k = {layer: k.index_select(0, rows) for layer, k in self.k.items()}   # index_select: its backward
        out.v = {layer: v.index_select(0, rows) for layer, v in self.v.items()}   # (index_add) is the fast one
        out.recording = False
        return out


def attention_kernel(q):
    """The attention kernel for a forward that will be differentiated in bf16 on the CPU: the math kernel, whose
    forward + backward measured 1.7-2x faster there than the flash kernel's at these lengths (45 queries over
    112 keys: 10.2 vs 17.1 ms); the flash kernel stays faster without gradients. Elsewhere torch's choice."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad:
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


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
        if config.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(hs, config.norm_eps), RMSNorm(hs, config.norm_eps)
        self.qk_norm = config.qk_norm

    def forward(self, x, rope, attn_mask, cache, layer, slot=None, prefix=None):
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)                     # (B, T, nh, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim)                  # (B, T, nkv, hs)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)                                    # (B, nh|nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        if isinstance(cache, GroupCache):    # a decode step, each prompt's keys read once for its group
            return self.o_proj(cache.attend(layer, q, k, v).transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        if slot is not None:    # a static-shape decode step: write one slot, attend over all (masked)
            cache.k[layer].index_copy_(2, slot, k)
            cache.v[layer].index_copy_(2, slot, v)
            k, v = cache.k[layer], cache.v[layer]                                      # (B, nkv, Lmax, hs)
        elif cache is not None:
            t0 = cache.length
            cache.k[layer, :, :, t0:t0 + T] = k
            cache.v[layer, :, :, t0:t0 + T] = v
            k = cache.k[layer, :, :, :t0 + T]                                          # (B, nkv, L, hs)
            v = cache.v[layer, :, :, :t0 + T]
        elif prefix is not None and prefix.recording:
            prefix.k[layer], prefix.v[layer] = k, v                                    # (B, nkv, Tp, hs)
        elif prefix is not None:  # the shared prompt's keys first, then these
            k = torch.cat([prefix.k[layer], k], dim=2)                                 # (B, nkv, Tp+T, hs)
            v = torch.cat([prefix.v[layer], v], dim=2)
        gqa = self.n_kv_head != self.n_head
        # attn_mask: (B, 1, T, L) bool, true where a query may look; None: no padding, plain causal attention
        # (T > 1), or one query seeing every key
        with attention_kernel(q):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None and T > 1,
                                               enable_gqa=gqa)
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

    def forward(self, x, rope, attn_mask, cache, layer, slot=None, prefix=None):
        x = x + self.attn(self.ln_1(x), rope, attn_mask, cache, layer, slot, prefix)
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
        """A KV cache in the dtype the forward computes keys and values in: the autocast dtype under
        autocast (bf16 on CUDA), else the weights' dtype."""
        if max_len > self.config.block_size:
            raise ValueError(f"a sequence of {max_len} tokens exceeds block_size={self.config.block_size}")
        p = self.wte.weight
        dtype = torch.get_autocast_dtype(p.device.type) if torch.is_autocast_enabled(p.device.type) else p.dtype
        return KVCache(self.config, batch_size, max_len, p.device, dtype)

    def forward(self, idx, valid=None, cache=None, return_hidden=False, logits_from=0, prefix=None):
        """idx: (B, T) token ids. valid: (B, T) bool, false at padding (None: all real).
        With a cache, idx holds the T tokens that follow the cache's filled slots.
        With a recording prefix (a Prefix, not yet selected), every layer's keys and values are kept in it;
        with a selected one, idx holds the T tokens that follow its prompts (no cache then).
        Returns logits (B, T - logits_from, vocab_size) for the positions from logits_from on (0: all),
        and with return_hidden also the final-layer hidden states after the last norm (B, T, n_embd),
        which the log Z and value heads read."""
        B, T = idx.shape
        if isinstance(cache, GroupCache):
            return self.group_decode(idx, cache)
        if valid is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=idx.device)
        after_prefix = prefix is not None and not prefix.recording
        if cache is not None and prefix is not None:
            raise ValueError("forward takes a KV cache (sampling) or a prefix (training), not both")
        if after_prefix:        # the prompt's keys come first, as slots 0 .. Tp-1 of a cache would
            t0 = prefix.valid.shape[1]
            keys_valid = torch.cat([prefix.valid, valid], dim=1)                    # (B, L), L = Tp+T
            pos = prefix.valid.long().sum(-1, keepdim=True) + valid.long().cumsum(-1) - 1  # (B, T)
        elif cache is None:
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
        if cache is None and t0 + T > self.config.block_size:
            raise ValueError(f"a sequence of {t0 + T} tokens exceeds block_size={self.config.block_size}")

        # attention mask (B, 1, T, L): causal, real keys only; a padding query sees itself (no NaN)
        if cache is None and not after_prefix and bool(valid.all()):
            attn_mask = None
        elif T == 1 and cache is not None:                                          # a decode step
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

        x, rope = self.embed(idx, pos)                                              # (B, T, C)
        for layer, block in enumerate(self.blocks):
            if self.grad_checkpointing and cache is None and torch.is_grad_enabled():  # recompute in backward
                x = torch.utils.checkpoint.checkpoint(block, x, rope, attn_mask, None, layer, None, prefix,
                                                      use_reentrant=False)
            else:
                x = block(x, rope, attn_mask, cache, layer, None, prefix)
        if cache is not None:
            cache.length = t0 + T
            cache.n_real += valid.long().sum(-1)
        h = self.ln_f(x)                                                            # (B, T, C)
        logits = self.lm_head(h[:, logits_from:]).float()                          # (B, T', V)
        return (logits, h) if return_hidden else logits

    def embed(self, idx, pos):
        """Token embeddings at positions pos: plus learned position embeddings (GPT-2), or with the rotary
        tables at pos for the attention (cos, sin: (B, 1, T, hs/2)). idx, pos: (B, T).
        Returns x (B, T, C) and rope or None."""
        x = self.wte(idx)
        if self.config.pos == "learned":
            return x + self.wpe(pos), None
        return x, (self.rope_cos[pos][:, None].to(x.dtype), self.rope_sin[pos][:, None].to(x.dtype))

    def group_decode(self, idx, cache):
        """One decode step on a GroupCache: idx (B, 1), the token each row sampled last. Computes what
        forward(idx, cache=<the same rows' KVCache>) does, up to float rounding. Returns logits (B, 1, V)."""
        if cache.length >= cache.k.shape[3]:
            raise ValueError(f"GroupCache full: {cache.length} response slots used of {cache.k.shape[3]}")
        x, rope = self.embed(idx, cache.n_real[:, None])                            # (B, 1, C)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, None, cache, layer)
        cache.length += 1
        cache.n_real += 1
        return self.lm_head(self.ln_f(x)).float()                                   # (B, 1, V)

    def decode_step(self, token, cache, slot):
        """One decoding step in static shapes, for torch.compile (and CUDA graphs): token (B,) ids, slot a
        (1,) long tensor, the cache slot to fill. Attends over every slot of the preallocated cache with
        a mask (filled slots of real tokens), so that no shape and no Python value depends on the step.
        Computes what forward(token[:, None], cache=cache) does. Returns logits (B, vocab_size)."""
        L = cache.valid.shape[1]
        cache.valid.index_fill_(1, slot, True)
        pos = cache.n_real[:, None]                                                 # (B, 1)
        keys = (torch.arange(L, device=token.device) <= slot) & cache.valid         # (B, L)
        x, rope = self.embed(token[:, None], pos)                                   # (B, 1, C)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, keys[:, None, None, :], cache, layer, slot)
        cache.n_real += 1
        return self.lm_head(self.ln_f(x)[:, -1]).float()                           # (B, V)

    def compiled_decode_step(self):
        """decode_step compiled once per model (fullgraph, static shapes); on CUDA with CUDA graphs."""
        if getattr(self, "_compiled_decode", None) is None:
            mode = "reduce-overhead" if self.wte.weight.device.type == "cuda" else None
            self._compiled_decode = torch.compile(self.decode_step, fullgraph=True, dynamic=False, mode=mode)
        return self._compiled_decode


def autocast(device, bf16):
    """bf16 autocast on CUDA when asked (weights and optimizer state stay fp32); nothing on the CPU, whose
    bf16 path is a bf16 copy of the weights instead (bf16_twin)."""
    if device.type == "cuda" and bf16:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
