"""verify_chain / verify_chain_greedy: equality with the reference on every backend (grids of
V, B, K and variants: ragged rows, dtypes, seed and offset forms, strided inputs), ignored
positions, large batches and the CUDA grid limit against the cpu backend, golden cases by hand."""

from __future__ import annotations

import functools

import pytest
import torch
from chain_cases import (
    VARIANTS,
    VARIANTS_BY_NAME,
    _build_case,
    check_structure,
    make_chain,
    make_greedy,
)
from helpers import to_device, with_generator

import specdec_kernels as sk
import specdec_kernels.reference as ref
from specdec_kernels.testing import assert_same

TRITON_FAMILY = "chain"  # conftest: the triton params need specdec_kernels.triton.chain


# ----------------------------------------------------------------------------------------------
# Equality with the reference
# ----------------------------------------------------------------------------------------------

# V = 32000 only with small B: the reference is a Python loop.
GRID = [(V, B, K) for V in (1, 7, 111, 32000) for B in (1, 3, 33) for K in (0, 1, 5)
        if not (V == 32000 and B == 33)]


@functools.cache
def _case(V, B, K, variant):
    """(inputs, kwargs, reference result): the reference runs once per case, whatever the backend."""
    opts = dict(VARIANTS_BY_NAME[variant][3]) if variant else {}
    inputs, kw = _build_case(V, B, K, opts, case_seed=V * 10_000 + B * 100 + K)
    expected = ref.verify_chain(**inputs, **with_generator(kw))
    return inputs, kw, expected


def _run_case(backend, V, B, K, variant=None):
    inputs, kw, expected = _case(V, B, K, variant)
    check_structure(expected, inputs)
    d = backend.device
    res = sk.verify_chain(**to_device(inputs, d), **to_device(with_generator(kw), d))
    assert res.tokens.device.type == backend.device.type
    check_structure(res, inputs)
    assert_same(res, expected)


@pytest.mark.parametrize("V,B,K", GRID, ids=[f"V{V}-B{B}-K{K}" for V, B, K in GRID])
def test_verify_chain_matches_reference(backend, V, B, K):
    _run_case(backend, V, B, K)


@pytest.mark.parametrize("variant", [v[0] for v in VARIANTS])
def test_verify_chain_matches_reference_variants(backend, variant):
    V, B, K, _ = VARIANTS_BY_NAME[variant]
    _run_case(backend, V, B, K, variant)


def test_random_inputs_exercise_accept_and_reject():
    # The equality tests are only meaningful if both paths run: partial acceptance must occur.
    for variant in ("ragged", "no_q", "bf16"):
        V, B, K, _ = VARIANTS_BY_NAME[variant]
        inputs, _, expected = _case(V, B, K, variant)
        n = expected.num_accepted
        nd = inputs["num_draft"] if inputs["num_draft"] is not None else torch.full_like(n, K)
        assert bool((n < nd).any()), f"{variant}: no rejection"
        assert bool((n > 0).any()), f"{variant}: no acceptance"


@pytest.mark.parametrize("rule", ["token", "block"])
def test_ignored_positions_are_not_read(backend, rule):
    # Entries beyond num_draft are ignored: poison them (NaN probabilities, garbage tokens) and the
    # result must equal the clean one, with check=True (the checks must skip them too), whatever
    # the rule.
    V, B, K = 111, 33, 5
    clean = make_chain(B, K, V, seed=3, ragged=True)
    nd = clean["num_draft"]
    dirty = {k: (v.clone() if v is not None else None) for k, v in clean.items()}
    pos = torch.arange(K + 1)[None, :]
    dirty["target_probs"][pos > nd[:, None]] = float("nan")
    dirty["draft_probs"][pos[:, :K] >= nd[:, None]] = -1.0
    dirty["draft_tokens"][pos[:, :K] >= nd[:, None]] = 10**9
    expected = ref.verify_chain(**clean, seed=8, rule=rule)
    res = sk.verify_chain(**to_device(dirty, backend.device), seed=8, rule=rule)
    assert_same(res, expected)


def test_large_batch_matches_cpu(backend):
    # Launch configuration at a large batch just above a power of two (grid limits, rows packed per
    # program, tails). The reference loop is too slow for 8193 rows, so the cpu backend is the
    # oracle here; it is itself checked bitwise against the reference on the first rows.
    if backend.name == "reference":
        pytest.skip("the reference is the oracle's oracle: checked on the first rows below, not 8193")
    if "cpu" not in sk.backends("cpu"):
        pytest.skip("needs the compiled cpu backend as the oracle")
    B, K, V = 8193, 3, 5
    inputs = make_chain(B, K, V, seed=21, ragged=True)
    greedy_inputs = dict(draft_tokens=inputs["draft_tokens"], target_logits=inputs["target_probs"],
                         num_draft=inputs["num_draft"])
    with sk.use_backend("cpu"):
        expected = sk.verify_chain(**inputs, seed=4)
        expected_greedy = sk.verify_chain_greedy(**greedy_inputs)
    # An int seed gives row b stream b, so the first rows alone draw what they draw in the batch.
    head = {k: (v[:40] if v is not None else None) for k, v in inputs.items()}
    assert_same(ref.verify_chain(**head, seed=4),
                sk.ChainResult(expected.tokens[:40], expected.num_accepted[:40]))
    assert_same(sk.verify_chain(**to_device(inputs, backend.device), seed=4), expected)
    assert_same(sk.verify_chain_greedy(**to_device(greedy_inputs, backend.device)), expected_greedy)


GREEDY_GRID = GRID
GREEDY_VARIANTS = [
    ("ragged", 111, 33, 5, dict(ragged=True)),
    ("ties", 7, 33, 5, dict(ties=True)),
    ("ties_ragged_V111", 111, 33, 5, dict(ties=True, ragged=True)),
    ("fp16", 111, 33, 5, dict(dtype=torch.float16)),
    ("bf16_ragged", 111, 33, 5, dict(dtype=torch.bfloat16, ragged=True)),
    ("bf16_V32000", 32000, 3, 5, dict(dtype=torch.bfloat16)),  # bf16 over 32000 entries: many ties
]


@functools.cache
def _greedy_case(V, B, K, variant):
    opts = dict(next(v[4] for v in GREEDY_VARIANTS if v[0] == variant)) if variant else {}
    inputs = make_greedy(B, K, V, seed=V * 10_000 + B * 100 + K, **opts)
    return inputs, ref.verify_chain_greedy(**inputs)


@pytest.mark.parametrize("V,B,K", GREEDY_GRID, ids=[f"V{V}-B{B}-K{K}" for V, B, K in GREEDY_GRID])
def test_verify_chain_greedy_matches_reference(backend, V, B, K):
    inputs, expected = _greedy_case(V, B, K, None)
    res = sk.verify_chain_greedy(**to_device(inputs, backend.device))
    check_structure(res, inputs | {"target_probs": inputs["target_logits"]})
    assert_same(res, expected)


@pytest.mark.parametrize("variant", [v[0] for v in GREEDY_VARIANTS])
def test_verify_chain_greedy_matches_reference_variants(backend, variant):
    V, B, K = next(v[1:4] for v in GREEDY_VARIANTS if v[0] == variant)
    inputs, expected = _greedy_case(V, B, K, variant)
    res = sk.verify_chain_greedy(**to_device(inputs, backend.device))
    check_structure(res, inputs | {"target_probs": inputs["target_logits"]})
    assert_same(res, expected)
    if variant.startswith("ties"):
        # the tie-breaking is actually exercised: some draft is a tied max that is not the first
        x, lg = inputs["draft_tokens"], inputs["target_logits"].float()
        K_ = x.shape[1]
        mx = lg[:, :K_].amax(-1)
        xv = lg[:, :K_].gather(-1, x.clamp(min=0)[..., None]).squeeze(-1)
        assert bool(((xv == mx) & (x != lg[:, :K_].argmax(-1)) & (x >= 0)).any())


@pytest.mark.cuda
def test_batch_beyond_grid_limit_cuda():
    # gridDim.y/z are capped at 65535; the CUDA kernels put rows there and launch per slice.
    if "cpu" not in sk.backends("cpu") or "cuda" not in sk.backends("cuda"):
        pytest.skip("needs the compiled cpu and cuda backends")
    inputs = make_chain(65535 + 70, 2, 5, seed=3, ragged=True)
    greedy_inputs = dict(draft_tokens=inputs["draft_tokens"], target_logits=inputs["target_probs"],
                         num_draft=inputs["num_draft"])
    with sk.use_backend("cpu"):
        expected = sk.verify_chain(**inputs, seed=9)
        expected_greedy = sk.verify_chain_greedy(**greedy_inputs)
    with sk.use_backend("cuda"):
        assert_same(sk.verify_chain(**to_device(inputs, "cuda"), seed=9), expected)
        assert_same(sk.verify_chain_greedy(**to_device(greedy_inputs, "cuda")), expected_greedy)


# ----------------------------------------------------------------------------------------------
# Golden cases by hand
# ----------------------------------------------------------------------------------------------


def onehot(idx, V):
    return torch.nn.functional.one_hot(torch.tensor(idx), V).float()


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_golden_onehot_equal_always_accepts(backend, seed):
    # p one-hot = q one-hot at every draft: accepted with probability 1; the bonus comes from p.
    V = 5
    x = torch.tensor([[1, 2, 3], [4, 4, 0]])
    p = torch.stack([onehot([1, 2, 3, 4], V), onehot([4, 4, 0, 2], V)])
    q = p[:, :3].clone()
    d = backend.device
    for qq in (q, None):  # stochastic and deterministic drafts
        res = sk.verify_chain(x.to(d), p.to(d), None if qq is None else qq.to(d), seed=seed)
        assert res.tokens.tolist() == [[1, 2, 3, 4], [4, 4, 0, 2]]
        assert res.num_accepted.tolist() == [3, 3]


@pytest.mark.parametrize("seed", [0, 7])
def test_golden_onehot_reject_emits_argmax(backend, seed):
    V = 6
    d = backend.device
    # Row 0: p one-hot at 3, draft 1 -> rejected at position 0, correction 3.
    # Row 1: first two drafts match one-hot p, third does not -> two accepted, correction 5.
    x = torch.tensor([[1, 2, 2], [0, 4, 2]])
    p = torch.stack([onehot([3, 0, 0, 1], V), onehot([0, 4, 5, 1], V)])
    q_uniform = torch.full((2, 3, V), 1.0 / V)
    q_onehot = torch.stack([onehot([1, 2, 2], V), onehot([0, 4, 2], V)])
    for q in (q_uniform, q_onehot, None):
        res = sk.verify_chain(x.to(d), p.to(d), None if q is None else q.to(d), seed=seed)
        assert res.tokens.tolist() == [[3, -1, -1, -1], [0, 4, 5, -1]], q
        assert res.num_accepted.tolist() == [0, 2]


def test_golden_p_equals_q_always_accepts(backend):
    # p == q (not one-hot): u * q < p holds for every u < 1, so every draft is accepted.
    g = torch.Generator().manual_seed(0)
    B, K, V = 16, 4, 9
    p = torch.softmax(torch.randn(B, K + 1, V, generator=g), -1)
    q = p[:, :K].clone()
    x = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, K)
    d = backend.device
    res = sk.verify_chain(x.to(d), p.to(d), q.to(d), seed=3)
    assert res.num_accepted.tolist() == [K] * B
    assert torch.equal(res.tokens[:, :K].cpu(), x)


def test_golden_zero_target_prob_always_rejects(backend):
    # p(x) = 0 -> always rejected, and the correction never emits x.
    V = 4
    x = torch.tensor([[2, 2]] * 8)
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25] * 4, [0.25] * 4]).expand(8, 3, V).contiguous()
    q = torch.tensor([[0.2, 0.2, 0.6, 0.0], [0.25] * 4]).expand(8, 2, V).contiguous()
    d = backend.device
    for qq in (q, None):
        res = sk.verify_chain(x.to(d), p.to(d), None if qq is None else qq.to(d), seed=11)
        assert res.num_accepted.tolist() == [0] * 8
        assert set(res.tokens[:, 0].tolist()) <= {0, 1}
        assert bool((res.tokens[:, 1:] == -1).all())


def test_golden_num_draft_zero_and_K0(backend):
    V = 5
    d = backend.device
    # num_draft = 0: the bonus comes from position 0, even when the draft would have matched.
    x = torch.tensor([[2, 3], [2, 3]])
    p = torch.stack([onehot([2, 3, 1], V), onehot([4, 3, 1], V)])
    q = torch.stack([onehot([2, 3], V), onehot([2, 3], V)])
    res = sk.verify_chain(x.to(d), p.to(d), q.to(d), num_draft=torch.tensor([0, 0], device=d), seed=0)
    assert res.tokens.tolist() == [[2, -1, -1], [4, -1, -1]]
    assert res.num_accepted.tolist() == [0, 0]
    # K = 0: only the bonus.
    p0 = onehot([[1], [4]], V)
    res = sk.verify_chain(torch.empty(2, 0, dtype=torch.long, device=d), p0.to(d),
                          torch.empty(2, 0, V, device=d), seed=0)
    assert res.tokens.tolist() == [[1], [4]]
    assert res.num_accepted.tolist() == [0, 0]
    # B = 0: empty results of the right shapes.
    res = sk.verify_chain(torch.empty(0, 3, dtype=torch.long, device=d), torch.empty(0, 4, V, device=d),
                          seed=0)
    assert res.tokens.shape == (0, 4) and res.num_accepted.shape == (0,)


def test_golden_greedy(backend):
    d = backend.device
    # ties go to the smallest index: row [1, 3, 3, 0] has argmax 1
    lg = torch.tensor([[[1.0, 3.0, 3.0, 0.0], [0.0, 0.0, 5.0, 5.0], [2.0, 2.0, 2.0, 2.0]]])
    cases = [
        (torch.tensor([[1, 2]]), None, [[1, 2, 0]], [2]),  # all accepted, bonus = first max
        (torch.tensor([[2, 2]]), None, [[1, -1, -1]], [0]),  # tied but not first -> rejected
        (torch.tensor([[1, 3]]), None, [[1, 2, -1]], [1]),  # second draft: tied, not first
        (torch.tensor([[1, 2]]), torch.tensor([0]), [[1, -1, -1]], [0]),  # num_draft = 0
        (torch.tensor([[1, -1]]), torch.tensor([1]), [[1, 2, -1]], [1]),  # ragged, -1 padding
    ]
    for x, nd, tokens, nacc in cases:
        res = sk.verify_chain_greedy(x.to(d), lg.to(d), num_draft=None if nd is None else nd.to(d))
        assert res.tokens.tolist() == tokens and res.num_accepted.tolist() == nacc, (x, nd)
    # docstring example
    logits = torch.tensor([[[0.0, 5.0, 1.0], [9.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])
    res = sk.verify_chain_greedy(torch.tensor([[1, 2]], device=d), logits.to(d))
    assert res.tokens.tolist() == [[1, 0, -1]] and res.num_accepted.tolist() == [1]
    # K = 0 and -inf masked entries
    lg0 = torch.tensor([[[float("-inf"), -3.0, -1.0, -1.0]]])
    res = sk.verify_chain_greedy(torch.empty(1, 0, dtype=torch.long, device=d), lg0.to(d))
    assert res.tokens.tolist() == [[2]] and res.num_accepted.tolist() == [0]
