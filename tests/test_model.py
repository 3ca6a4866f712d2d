import pytest
import torch

from model import GPT, GPTConfig
from tokenizer import Tokenizer

STYLES = {
    "default": dict(),
    "gqa": dict(n_head=4, n_kv_head=2),
    "gpt2": dict(norm="layernorm", pos="learned", mlp="gelu", bias=True),
    "qwen2": dict(n_head=4, n_kv_head=1, qkv_bias=True, rope_theta=1e6, tie_embeddings=False, norm_eps=1e-6),
}


def tiny(style="default", **kw):
    cfg = dict(vocab_size=19, n_layer=2, n_head=4, n_kv_head=4, n_embd=32, block_size=32)
    cfg.update(STYLES[style])
    cfg.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**cfg))


@pytest.mark.parametrize("style", list(STYLES))
def test_cached_decoding_matches_full_forward(style):
    model = tiny(style).eval()
    idx = torch.randint(0, 19, (3, 12))
    full = model(idx)                                                   # (3, 12, V)
    cache = model.make_cache(3, 12)
    parts = [model(idx[:, :5], cache=cache)]
    for t in range(5, 12):
        parts.append(model(idx[:, t:t + 1], cache=cache))
    assert full.shape == (3, 12, 19) and full.dtype == torch.float32
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-4


@pytest.mark.parametrize("style", list(STYLES))
def test_left_padding_changes_nothing(style):
    model = tiny(style).eval()
    short = torch.randint(0, 19, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)
    valid = torch.tensor([[False] * 3 + [True] * 5])
    a = model(short)
    b = model(padded, valid=valid)[:, 3:]
    assert (a - b).abs().max() <= 1e-5


def test_hidden_states_and_tied_head():
    model = tiny()
    logits, h = model(torch.randint(0, 19, (2, 6)), return_hidden=True)
    assert h.shape == (2, 6, 32)
    assert torch.allclose(logits, h @ model.wte.weight.T, atol=1e-5)
    assert model.lm_head.weight is model.wte.weight
    assert tiny("qwen2").lm_head.weight is not tiny("qwen2").wte.weight


def test_bad_config_and_overflow():
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="norm"):
        GPTConfig(norm="batchnorm")
    model = tiny()
    with pytest.raises(ValueError, match="block_size"):
        model.make_cache(1, 33)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_tokenizer_round_trip_and_errors():
    tok = Tokenizer.for_chars("0123456789+-*/()=:N, ")
    text = "N=12: 3+4*(5-1)/2, 0"
    ids = tok.encode(text)
    assert len(ids) == len(text)                       # one token per character
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(set("0123456789+-*/()=:N, ")) + 2
    assert tok.decode([tok.eos_id]) == "<|endoftext|>"
    assert tok.stop_ids == (tok.eos_id,) and max(ids) < tok.eos_id
    with pytest.raises(ValueError, match="'x'"):
        tok.encode("12x")
    with pytest.raises(ValueError, match="'٣'"):
        tok.encode("1٣")
    with pytest.raises(ValueError):
        tok.encode("<|endoftext|>")                    # special tokens are not text


def test_activation_checkpointing_gives_the_same_gradients():
    idx = torch.randint(0, 19, (2, 10))
    grads = []
    for ckpt in (False, True):
        model = tiny("qwen2")
        model.grad_checkpointing = ckpt
        model(idx).logsumexp(-1).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    assert any(g.abs().max() > 0 for g in grads[1])


def test_prefix_and_cache_are_exclusive_and_length_is_checked():
    from model import Prefix
    model = tiny()
    prompt = torch.randint(0, 19, (2, 20))
    prefix = Prefix(torch.ones(2, 20, dtype=torch.bool))
    model(prompt, prefix=prefix)
    assert set(prefix.k) == {0, 1} and prefix.k[0].shape == (2, 4, 20, 8)      # (B, nkv, Tp, hs) per layer
    with pytest.raises(ValueError, match="not both"):
        model(prompt[:, :1], cache=model.make_cache(2, 21), prefix=prefix.select(torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="exceeds block_size"):                  # 20 + 13 > 32 positions
        model(torch.randint(0, 19, (2, 13)), prefix=prefix.select(torch.tensor([0, 1])))
