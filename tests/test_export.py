"""Export: a trained policy written as a Hugging Face directory (hf.save_pretrained) loads in
transformers.AutoModelForCausalLM with the same logits, for every family we load and for our
from-scratch GPT (exported as a Llama)."""
import json
import os

import pytest
import torch

from hf import from_pretrained, save_pretrained
from model import GPT, GPTConfig
from test_hf import CONFIGS, V, make

transformers = pytest.importorskip("transformers")

FAMILY = {"gpt2": "GPT2LMHeadModel", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
          "llama": "LlamaForCausalLM"}


def perturb(model):
    """Stand-in for training: move every parameter, so that an export of the start would not pass."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def reload_and_compare(ours, path):
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    idx = torch.randint(0, ours.config.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours.eval()(idx) - theirs(idx).logits).abs().max().item()


@pytest.mark.parametrize("arch,shard,kw", [c for c in CONFIGS if not c[1]] +
                         [("qwen3", False, {"tie_word_embeddings": True})])
def test_export_of_each_family_loads_in_transformers_with_equal_logits(tmp_path, arch, shard, kw):
    src, _ = make(tmp_path, arch, shard, **kw)
    ours = from_pretrained(src)
    perturb(ours)
    out = save_pretrained(ours, str(tmp_path / "export"), FAMILY[arch], stop_ids=(5,))
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors"]
    diff = reload_and_compare(ours, out)
    print(f"\n{arch} {kw}: largest |logit difference| after export = {diff:.2e}")
    assert diff < 1e-4, diff
    assert json.load(open(os.path.join(out, "generation_config.json")))["eos_token_id"] == 5


@pytest.mark.parametrize("tie", [True, False])
def test_from_scratch_gpt_exports_as_llama(tmp_path, tie):
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=V, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=64,
                         tie_embeddings=tie))
    perturb(ours)
    out = save_pretrained(ours, str(tmp_path / "hf"), stop_ids=(7, 9))
    assert json.load(open(os.path.join(out, "config.json")))["architectures"] == ["LlamaForCausalLM"]
    assert json.load(open(os.path.join(out, "generation_config.json")))["eos_token_id"] == [7, 9]
    diff = reload_and_compare(ours, out)
    assert diff < 1e-4, diff
    back = from_pretrained(out)                                     # and our own loader reads it back exactly
    for (n, p), (m, q) in zip(ours.named_parameters(), back.named_parameters()):
        assert n == m and torch.equal(p, q), n


def test_export_refuses_an_architecture_that_cannot_hold_the_model(tmp_path):
    ours = GPT(GPTConfig(vocab_size=V, n_layer=1, n_head=2, n_kv_head=2, n_embd=16, block_size=32))
    with pytest.raises(ValueError, match="GPT2LMHeadModel needs"):
        save_pretrained(ours, str(tmp_path / "x"), "GPT2LMHeadModel")
    assert not os.path.exists(tmp_path / "x")
