"""specdec_kernels.tree_attention inside Hugging Face models (python/specdec/hf_attention.py): the
"specdec_tree" attention implementation equals the dense-mask forward it replaces, falls back to
exact causal SDPA elsewhere, is switched on only for the duration of generate, and is what the
decoder verifies trees with by default (no dense mask reaches the target)."""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch

import specdec_kernels as sk

transformers = pytest.importorskip("transformers")
specdec = pytest.importorskip("specdec")
from specdec.hf_attention import MASK_KWARG, NAME, language_model, use_tree_attention  # noqa: E402
from specdec.models import cache_kwarg  # noqa: E402  (past_key_values warns from transformers 5.2x on)

PARENTS = [-1, 0, 0, 1, 1, 2, 3, 3, 6]


def tiny_llama(impl: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = tm.llama_config(40)  # 2 layers, hidden 32, 4 heads / 2 KV heads, MLP 64
    cfg._attn_implementation = impl
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_fused_tree_forward_equals_dense_mask_forward(impl):
    model = tiny_llama(impl)
    g = torch.Generator().manual_seed(1)
    P = 6
    prefix = torch.randint(0, 40, (1, P), generator=g)
    tokens = torch.randint(0, 40, (1, len(PARENTS)), generator=g)
    parents = torch.tensor([PARENTS])
    pos = sk.tree_position_ids(parents, P)
    with torch.no_grad():
        c1 = transformers.DynamicCache()
        model(prefix, **{cache_kwarg(model): c1})
        want = model(tokens, **{cache_kwarg(model): c1}, attention_mask=sk.tree_attention_bias(parents, P),
                     position_ids=pos).logits
        with use_tree_attention(model):
            assert model.config._attn_implementation == NAME
            c2 = transformers.DynamicCache()
            model(prefix, **{cache_kwarg(model): c2})
            got = model(tokens, **{cache_kwarg(model): c2}, position_ids=pos,
                        **{MASK_KWARG: sk.tree_attention_mask(parents, packed=True)}).logits
        assert model.config._attn_implementation == impl
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fallback_is_exact_causal_attention():
    """Without a tree mask (prefill, chain verification, decode) the implementation is causal SDPA
    aligned to the end of the cache, equal to the model's own "sdpa"."""
    model = tiny_llama("sdpa")
    g = torch.Generator().manual_seed(2)
    seq = torch.randint(0, 40, (1, 12), generator=g)
    with torch.no_grad():
        def run():
            cache = transformers.DynamicCache()
            kv = {cache_kwarg(model): cache}
            return [model(seq[:, a:b], **kv).logits for a, b in ((0, 7), (7, 11), (11, 12))]

        want = run()
        with use_tree_attention(model):
            got = run()
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_switch_is_restored_after_an_error():
    model = tiny_llama("eager")
    with pytest.raises(RuntimeError, match="boom"), use_tree_attention(model):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "eager"


def test_llava_switches_only_its_language_model():
    target = tm.greedy_llava()
    lm = language_model(target)
    assert lm is target.model.language_model
    vision_before = target.model.vision_tower.config._attn_implementation
    with use_tree_attention(target):
        assert lm.config._attn_implementation == NAME
        assert target.model.vision_tower.config._attn_implementation == vision_before


KWS = [{"method": "specinfer", "branching": (2, 2)}, {"method": "rsd_c", "branching": (2, 2, 2)},
       {"method": "rsd_s", "width": 4, "depth": 3}]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("kw", KWS, ids=[k["method"] for k in KWS])
def test_decoder_fused_equals_bias_and_passes_no_dense_mask(monkeypatch, kw, temperature):
    target, drafter = tm.greedy_target(), tm.greedy_drafter()
    ids = torch.tensor([tm.GREEDY_PROMPT])
    calls = []
    orig = target.forward

    def forward(*args, **kwargs):
        calls.append({"tree": MASK_KWARG in kwargs, "dense": kwargs.get("attention_mask") is not None,
                      "n": kwargs["input_ids"].shape[1], "impl": target.config._attn_implementation})
        return orig(*args, **kwargs)

    monkeypatch.setattr(target, "forward", forward)
    fused = specdec.SpeculativeDecoder(target, drafter, tree_attention="fused", **kw).generate(
        ids, max_new_tokens=20, temperature=temperature, seed=1)
    assert target.config._attn_implementation == "sdpa"
    tree_calls = [c for c in calls if c["tree"]]
    # every round after the first verifies the whole tree (root pending) in one fused forward
    assert len(tree_calls) >= fused.stats.rounds - 2 > 0
    assert not any(c["dense"] for c in tree_calls) and all(c["impl"] == NAME for c in tree_calls)
    calls.clear()
    bias = specdec.SpeculativeDecoder(target, drafter, tree_attention="bias", **kw).generate(
        ids, max_new_tokens=20, temperature=temperature, seed=1)
    assert not any(c["tree"] for c in calls)
    if temperature == 0.0:
        assert torch.equal(fused.sequences, bias.sequences)
    else:  # the float rounding of the two attention paths differs; lengths and validity agree
        assert fused.sequences.shape == bias.sequences.shape


def test_tree_attention_argument_is_checked():
    target, drafter = tm.greedy_target(), tm.greedy_drafter()
    with pytest.raises(ValueError, match="tree_attention"):
        specdec.SpeculativeDecoder(target, drafter, method="rsd_c", branching=(2,), tree_attention="dense")

    class Plain(torch.nn.Module):
        config = target.config

    with pytest.raises(ValueError, match="fused"):
        specdec.SpeculativeDecoder(Plain(), drafter, method="rsd_c", branching=(2,), tree_attention="fused")
