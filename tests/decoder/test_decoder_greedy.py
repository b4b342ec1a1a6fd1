"""Greedy decoding (temperature 0): every method must reproduce the target's own greedy decoding
(``target.generate(do_sample=False)``) token for token, on a Llama target and on a LLaVA target
(with pixel_values), with and without an EOS stop, with drafters whose vocabulary is smaller or
larger than the target's, and with eager as well as SDPA attention.

The tiny models have sharp logits: the smallest top-1/top-2 logit gap along every reference output
is asserted to be > 1e-3, orders of magnitude above float32 rounding (~1e-6), so a mismatch is a
decoder bug, not a near-tie (the failure message prints the target's gap at the first mismatch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import tiny_models as tm
import torch

specdec = pytest.importorskip("specdec")

N_NEW = 40


@dataclass(frozen=True)
class M:
    """A method configuration and its draft depth (the bound of block efficiency is depth + 1)."""

    id: str
    kw: dict = field(hash=False)
    depth: int = 0


METHODS = [
    M("ar", {"method": "ar"}, 0),
    M("sd-g3", {"method": "sd", "gamma": 3}, 3),
    M("sd-g5", {"method": "sd", "gamma": 5}, 5),
    M("sd-g5-adaedl", {"method": "sd", "gamma": 5, "policy": "adaedl"}, 5),
    M("sd-g5-confidence", {"method": "sd", "gamma": 5, "policy": "confidence"}, 5),
    M("sd-g5-adaedl-lam0.2", {"method": "sd", "gamma": 5, "policy": "adaedl", "lam": 0.2}, 5),
    M("specinfer-2x2", {"method": "specinfer", "branching": (2, 2)}, 2),
    M("rsd_c-2x2x2", {"method": "rsd_c", "branching": (2, 2, 2)}, 3),
    M("rsd_s-w3l2", {"method": "rsd_s", "width": 3, "depth": 2}, 2),
    M("rsd_s-w4l3", {"method": "rsd_s", "width": 4, "depth": 3}, 3),
]
BY_ID = {m.id: m for m in METHODS}
TREES_AND_CHAIN = [BY_ID[i] for i in ("sd-g5", "specinfer-2x2", "rsd_c-2x2x2", "rsd_s-w4l3")]


@dataclass
class Ref:
    """One target, its prompt, and its HF greedy output."""

    target: object
    drafter: object
    ids: torch.Tensor
    pixel_values: torch.Tensor | None
    out: torch.Tensor          # HF greedy, [1, P + N_NEW]
    eos: int                   # a token whose first occurrence is mid-way in the output
    eos_out: torch.Tensor      # HF greedy with eos_token_id=eos

    @property
    def P(self) -> int:
        return self.ids.shape[1]


def _pick_eos(new: list[int]) -> int:
    """A token whose FIRST occurrence in the greedy output is as close to the middle as possible
    (and not in the first or last sixth), so that the EOS stop cuts a round mid-way."""
    first = {}
    for i, t in enumerate(new):
        first.setdefault(t, i)
    cands = [(abs(i - len(new) // 2), t) for t, i in first.items() if len(new) // 6 <= i <= 5 * len(new) // 6]
    assert cands, f"no token first occurs in the middle of {new}"
    return min(cands)[1]


def _make_ref(target, drafter, ids, pv) -> Ref:
    out = tm.hf_greedy(target, ids, N_NEW, pixel_values=pv)
    assert out.shape == (1, ids.shape[1] + N_NEW)
    new = out[0, ids.shape[1]:].tolist()
    eos = _pick_eos(new)
    eos_out = tm.hf_greedy(target, ids, N_NEW, pixel_values=pv, eos_token_id=eos)
    # HF stops right after the first eos: the decoder must do the same
    cut = ids.shape[1] + new.index(eos) + 1
    assert torch.equal(eos_out, out[:, :cut]), (eos_out, out[:, :cut])
    margins = tm.greedy_margins(target, out, ids.shape[1], pv)
    assert margins.min_gap > 1e-3, f"the reference output has a near-tie: {margins}"
    return Ref(target, drafter, ids, pv, out, eos, eos_out)


@pytest.fixture(scope="module")
def llama_ref() -> Ref:
    return _make_ref(tm.greedy_target(), tm.greedy_drafter(), torch.tensor([tm.GREEDY_PROMPT]), None)


@pytest.fixture(scope="module")
def llava_ref() -> Ref:
    ids, pv = tm.greedy_llava_inputs()
    ref = _make_ref(tm.greedy_llava(), tm.greedy_llava_drafter(), ids, pv)
    img = tm.greedy_llava().config.image_token_index
    # the greedy output itself holds the image token id: generated image ids must work
    assert img in ref.out[0, ref.P:].tolist()
    return ref


@pytest.fixture(params=["llama", "llava"])
def ref(request) -> Ref:
    return request.getfixturevalue(f"{request.param}_ref")


def explain_mismatch(got: torch.Tensor, want: torch.Tensor, ref: Ref, label: str, stats) -> str:
    g, w = got[0].tolist(), want[0].tolist()
    i = next((k for k in range(min(len(g), len(w))) if g[k] != w[k]), min(len(g), len(w)))
    msg = [f"{label}: decoder output != HF greedy (lengths {len(g)} vs {len(w)}, prompt {ref.P})",
           f"  first difference at position {i} (new token #{i - ref.P}): got {g[i:i + 6]} want {w[i:i + 6]}",
           f"  common prefix of new tokens: {w[ref.P:i]}"]
    if ref.P <= i < len(w):
        logits = tm.full_logits(ref.target, want[:, :i], ref.pixel_values, ref.P)[0, -1].double()
        top = logits.topk(3)
        gap = float(top.values[0] - top.values[1])
        msg.append(f"  target logits there: top-3 ids {top.indices.tolist()} values "
                   f"{[round(v, 4) for v in top.values.tolist()]} (gap {gap:.4f})")
        if i < len(g):
            msg.append(f"  logit of the decoder's token {g[i]}: {float(logits[g[i]]):.4f}")
    if stats is not None:
        msg.append(f"  stats: {stats.as_dict()}")
    return "\n".join(msg)


def assert_same(res, want: torch.Tensor, ref: Ref, label: str) -> None:
    same = torch.equal(res.sequences, want)
    assert same, explain_mismatch(res.sequences, want, ref, label, res.stats)


def check_stats(st, new_tokens: int, m: M) -> None:
    d = st.as_dict()
    for key in ("rounds", "target_calls", "drafted", "accepted", "new_tokens", "block_efficiency",
                "acceptance_rate", "mbsu", "param_ratio", "tokens_per_s", "wall_s", "draft_s", "target_s",
                "verify_s", "cache_s"):
        assert key in d, f"stats has no {key}: {d}"
    assert st.rounds > 0, d
    assert st.new_tokens == new_tokens, d
    assert st.target_calls >= 1, d
    assert 0 <= st.accepted <= st.drafted, d
    # every round emits its accepted drafts + 1 token; only the last round can be cut
    assert st.rounds <= st.new_tokens <= st.rounds + st.accepted, d
    assert 0.0 <= st.acceptance_rate <= 1.0, d
    assert st.wall_s >= 0 and st.tokens_per_s >= 0, d
    if m.kw["method"] == "ar":
        assert st.block_efficiency == 1.0, d
        assert st.drafted == 0 and st.accepted == 0, d
    else:
        assert 1.0 <= st.block_efficiency <= m.depth + 1, d
        assert st.param_ratio > 0, d


def _decoder(ref: Ref, m: M, drafter=None):
    dr = None if m.kw["method"] == "ar" else (drafter if drafter is not None else ref.drafter)
    return specdec.SpeculativeDecoder(ref.target, dr, **m.kw)


@pytest.mark.parametrize("m", METHODS, ids=lambda m: m.id)
def test_greedy_equals_hf(ref, m):
    res = _decoder(ref, m).generate(ref.ids, pixel_values=ref.pixel_values, max_new_tokens=N_NEW,
                                    temperature=0.0)
    assert res.sequences.dtype == torch.int64
    assert_same(res, ref.out, ref, m.id)
    check_stats(res.stats, N_NEW, m)
    if m.kw["method"] != "ar":
        # the drafter is good but not perfect: both the accept and the reject paths ran
        assert 0 < res.stats.accepted < res.stats.drafted, res.stats.as_dict()


@pytest.mark.parametrize("m", METHODS, ids=lambda m: m.id)
def test_greedy_eos_stops_right_after_it(ref, m):
    res = _decoder(ref, m).generate(ref.ids, pixel_values=ref.pixel_values, max_new_tokens=N_NEW,
                                    temperature=0.0, eos_token_id=ref.eos)
    want = ref.eos_out
    assert_same(res, want, ref, f"{m.id} eos={ref.eos}")
    assert res.sequences[0, -1].item() == ref.eos
    check_stats(res.stats, want.shape[1] - ref.P, m)


@pytest.mark.parametrize("n", [1, 2, 7])
@pytest.mark.parametrize("m", [BY_ID["sd-g5"], BY_ID["rsd_c-2x2x2"], BY_ID["rsd_s-w4l3"]], ids=lambda m: m.id)
def test_greedy_short_budgets(llama_ref, m, n):
    """max_new_tokens smaller than the draft depth: exactly n tokens, the prefix of the reference."""
    ref = llama_ref
    res = _decoder(ref, m).generate(ref.ids, max_new_tokens=n, temperature=0.0)
    want = ref.out[:, :ref.P + n]
    assert_same(res, want, ref, f"{m.id} n={n}")
    check_stats(res.stats, n, m)


@pytest.mark.parametrize("kind", ["small", "large"])
@pytest.mark.parametrize("m", TREES_AND_CHAIN, ids=lambda m: m.id)
def test_greedy_drafter_vocab_differs(llama_ref, m, kind):
    """Drafter vocabulary 48 (the target emits ids 48..51, which the drafter lacks) or 56 (the extra
    ids carry a large draft probability): the output is still the target's greedy decoding."""
    ref = llama_ref
    new = ref.out[0, ref.P:].tolist()
    assert any(t >= tm.SMALL_DRAFT_VOCAB for t in new)  # the small-vocab case is exercised
    drafter = tm.greedy_drafter(kind)
    res = _decoder(ref, m, drafter).generate(ref.ids, max_new_tokens=N_NEW, temperature=0.0)
    assert_same(res, ref.out, ref, f"{m.id} drafter vocab {kind}")
    check_stats(res.stats, N_NEW, m)


@pytest.mark.parametrize("m", [BY_ID["sd-g3"], BY_ID["rsd_c-2x2x2"], BY_ID["rsd_s-w3l2"]], ids=lambda m: m.id)
def test_greedy_llava_drafter_without_image_id(llava_ref, m):
    """LLaVA target with a text drafter of vocabulary 51 that has no image token id (like llava-hf
    32064 vs Llama 32000), while the target's greedy output contains the image token id."""
    ref = llava_ref
    drafter = tm.greedy_llava_drafter("small")
    res = _decoder(ref, m, drafter).generate(ref.ids, pixel_values=ref.pixel_values, max_new_tokens=N_NEW,
                                             temperature=0.0)
    assert_same(res, ref.out, ref, f"{m.id} drafter vocab 51")
    check_stats(res.stats, N_NEW, m)


@pytest.mark.parametrize("m", [BY_ID["sd-g5"], BY_ID["rsd_c-2x2x2"], BY_ID["rsd_s-w4l3"]], ids=lambda m: m.id)
def test_greedy_eager_attention(m):
    """The same with attn_implementation="eager" (tree attention masks go through another path)."""
    target = tm.greedy_target(attn="eager")
    drafter = tm.greedy_drafter(attn="eager")
    ids = torch.tensor([tm.GREEDY_PROMPT])
    want = tm.hf_greedy(target, ids, N_NEW)
    ref = Ref(target, drafter, ids, None, want, -1, want)
    res = _decoder(ref, m).generate(ids, max_new_tokens=N_NEW, temperature=0.0)
    assert_same(res, want, ref, f"{m.id} eager")
