"""The tiny models behave as the decoder tests assume (so that those tests keep their meaning if
someone changes a seed or a scale in tiny_models.py, or transformers changes under them)."""

from __future__ import annotations

import law
import numpy as np
import tiny_models as tm
import torch


def test_loaded_from_disk_float32_eval_sdpa():
    models = (tm.greedy_target(), tm.greedy_drafter(), tm.greedy_llava(), tm.law_target(), tm.law_llava())
    for model in models:
        assert not model.training
        assert next(model.parameters()).dtype == torch.float32
        assert model.config._attn_implementation == "sdpa"
        assert model.config.name_or_path  # loaded back by path
    assert tm.greedy_target(attn="eager").config._attn_implementation == "eager"
    # drafters are smaller, different models
    n = sum(p.numel() for p in tm.greedy_target().parameters())
    d = sum(p.numel() for p in tm.greedy_drafter().parameters())
    assert d < 0.6 * n
    assert tm.greedy_drafter().config.num_hidden_layers < tm.greedy_target().config.num_hidden_layers


@torch.no_grad()
def test_greedy_models():
    target, drafter = tm.greedy_target(), tm.greedy_drafter()
    ids = torch.tensor([tm.GREEDY_PROMPT])
    P = ids.shape[1]
    out = tm.hf_greedy(target, ids, 40)
    new = out[0, P:].tolist()
    assert len(set(new)) >= 12, new                        # not a short cycle
    assert any(t >= tm.SMALL_DRAFT_VOCAB for t in new)      # ids the small-vocab drafter lacks
    assert tm.greedy_margins(target, out, P).min_gap > 0.05  # far from float32 ties
    assert tm.context_sensitivity(target, out, P) > 0.3     # the whole context matters (KV cache bugs show)
    lt = target(out).logits[0, P - 1:-1]
    ld = drafter(out).logits[0, P - 1:-1]
    agree = (lt.argmax(-1) == ld.argmax(-1)).float().mean().item()
    assert 0.3 < agree < 0.9, agree                          # drafts are often, not always, accepted
    large = tm.greedy_drafter("large")
    q = large(out).logits[0, P - 1:-1].softmax(-1)
    assert q[:, tm.GREEDY_VOCAB:].sum(-1).mean() > 0.1      # the extra ids would be proposed if not masked
    small = tm.greedy_drafter("small")
    assert small.config.vocab_size == tm.SMALL_DRAFT_VOCAB


@torch.no_grad()
def test_llava_greedy_model_generates_the_image_token():
    target = tm.greedy_llava()
    ids, pv = tm.greedy_llava_inputs()
    img = target.config.image_token_index
    assert img == tm.GREEDY_VOCAB - 1
    assert int((ids == img).sum()) == tm.NUM_IMAGE_TOKENS == 4
    assert pv.shape == (1, 3, tm.IMAGE_SIZE, tm.IMAGE_SIZE)
    out = tm.hf_greedy(target, ids, 40, pixel_values=pv)
    assert img in out[0, ids.shape[1]:].tolist()
    # full_logits (image features into the prompt's image tokens only) is what HF generate computes
    lg = tm.full_logits(target, out[:, :-1], pv, ids.shape[1])[0, ids.shape[1] - 1:]
    assert torch.equal(lg.argmax(-1), out[0, ids.shape[1]:])
    # the image matters
    other = tm.hf_greedy(target, ids, 40, pixel_values=torch.zeros_like(pv))
    assert not torch.equal(out, other)


def test_law_models():
    prompt = torch.tensor([tm.LAW_PROMPT])
    p1, p2 = law.two_token_laws(tm.law_target(), prompt, temperature=1.0)
    q1, q2 = law.two_token_laws(tm.law_drafter(), prompt, temperature=1.0)
    assert 1.2 < -(p1 * np.log(p1)).sum() < 2.3            # neither one-hot nor uniform
    beta = np.minimum(p1, q1).sum()
    assert 0.3 < beta < 0.85, beta
    assert p1[tm.LAW_VOCAB - 2:].sum() > 0.1                 # ids the small law drafter lacks
    ids, pv = tm.law_llava_inputs()
    joint = law.joint_law(tm.law_llava(), ids, pixel_values=pv, temperature=1.0)
    img = tm.law_llava().config.image_token_index
    assert joint[img].sum() > 0.15                           # the image token id is a likely first token
    assert np.isclose(joint.sum(), 1.0)
