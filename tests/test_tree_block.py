"""verify_tree(rule="block"), Traversal Verification (docs/algorithms.md §9, "Trees"): the rule's
exactness by exact enumeration on tiny trees (tests/tree_exact.py), the emitted law of every backend
on the law tests of tests/test_tree_law.py (with a negative control the test must reject), tokens per
round against the enumeration, equality with the reference on every backend, input checks, the
registration (opcheck, torch.compile)."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from helpers import to_device, with_generator
from tree_cases import (
    LAW_BY_NAME,
    M_DRAFTS,
    M_START,
    M_TARGET,
    MV,
    N_DEFAULT,
    N_SLOW,
    P_MIN,
    VARIANTS_BY_NAME,
    _rng_kw,
    _trials,
    check_structure,
    chi2_pvalue,
    draft_tree,
    first_rows,
    head,
    make_tree,
    markov_law,
    rsdc_shape,
    simulate_tree,
)
from tree_exact import Instance, evaluate

import specdec_kernels as sk
import specdec_kernels.reference as RT
from specdec_kernels.testing import assert_same

TRITON_FAMILY = "tree"  # conftest: the triton params need specdec_kernels.triton.tree


# ----------------------------------------------------------------------------------------------
# The rule itself, by exact enumeration (float64)
# ----------------------------------------------------------------------------------------------

SHAPES = [(2, 2, 1), (2, 1, 1)]
SEEDS = range(3)


@functools.cache
def _evaluate(branching, law, rule, seed):
    return evaluate(Instance(3, branching, seed), law, rule)


@pytest.mark.parametrize("law", ["iid", "wo", "det"])
def test_enumeration_traversal_is_exact(law):
    # One round's emitted law (padded with the target's continuation) equals the target's, to float64
    # rounding, for i.i.d., without-replacement and deterministic trees; so does RRS (a check of
    # the harness itself).
    for br in SHAPES:
        for seed in SEEDS:
            for rule in ("rrs", "tv"):
                tvd, _ = _evaluate(br, law, rule, seed)
                assert tvd < 1e-13, (br, law, rule, seed, tvd)


def test_enumeration_traversal_never_worse_than_rrs():
    # Expected tokens per round: Traversal Verification >= RRS on every instance here, strictly more
    # on stochastic drafts, equal on deterministic ones (both accept a path with probability p(path)).
    gains = []
    for br in SHAPES:
        for seed in SEEDS:
            for law in ("iid", "wo", "det"):
                e_rrs, e_tv = _evaluate(br, law, "rrs", seed)[1], _evaluate(br, law, "tv", seed)[1]
                if law == "det":
                    assert e_tv == pytest.approx(e_rrs, abs=1e-12)
                else:
                    assert e_tv >= e_rrs - 1e-12
                    gains.append(e_tv - e_rrs)
    assert min(gains) > 0.01


def test_enumeration_negative_controls_are_biased():
    # The harness sees the two mistakes a tree version can make: the unweighted residual
    # max(0, P - Q) after a deletion, and later siblings of a without-replacement draw tested
    # against q instead of q conditioned on the earlier siblings.
    assert max(_evaluate((2, 1, 1), "wo", "tv_unweighted", s)[0] for s in range(4)) > 1e-3
    assert max(_evaluate((2, 2, 1), "wo", "tv_iid_on_wo", s)[0] for s in SEEDS) > 1e-2


# ----------------------------------------------------------------------------------------------
# The emitted law of every backend (the Markov toy model of tests/tree_cases.py)
# ----------------------------------------------------------------------------------------------


def block_verify(tokens, parents, p, q, nn, replacement, seed, offset):
    return sk.verify_tree(tokens, parents, p, q, num_nodes=nn, replacement=replacement, seed=seed,
                          offset=offset, rule="block")


LAW_CASES = ["wor_3-2_sharp", "iid_3-2_sharp", "wor_2-2", "det_3-2", "wor_chain3", "wor_sbs_ragged_sharp",
             "iid_sbs_ragged", "det_sbs_ragged", "wor_star3_sharp_seed_tensor",
             "det_2-2-2_sharp_replacement_flag"]
REFERENCE_LAW_CASES = ("wor_3-2_sharp",)
REFERENCE_SLOW_LAW_CASES = ("iid_3-2_sharp", "det_3-2", "wor_sbs_ragged_sharp", "wor_chain3")
INTERPRETED_SLOW_LAW_CASES = ("wor_3-2_sharp",)


@pytest.mark.parametrize("name", LAW_CASES)
def test_block_tree_emitted_law_is_exact(backend, name):
    if backend.interpreted:
        pytest.skip("Triton interpreter: statistical tests only in the slow test (bitwise equal anyway)")
    if backend.name == "reference" and name not in REFERENCE_LAW_CASES:
        pytest.skip("reference: one case here (more in the slow test)")
    samples, info = simulate_tree(block_verify, trials=_trials(backend, N_DEFAULT), gen_seed=11,
                                  device=backend.device, **LAW_BY_NAME[name])
    pv = chi2_pvalue(samples, markov_law(M_TARGET))
    assert pv > P_MIN, f"{name}: emitted law differs from the target: p = {pv:.3g} ({info})"


@pytest.mark.slow
@pytest.mark.parametrize("name", LAW_CASES)
def test_block_tree_emitted_law_is_exact_slow(backend, name):
    if backend.name == "reference" and name not in REFERENCE_SLOW_LAW_CASES:
        pytest.skip("reference: four cases; the compiled backends run all")
    if backend.interpreted and name not in INTERPRETED_SLOW_LAW_CASES:
        pytest.skip("Triton interpreter: one case")
    samples, info = simulate_tree(block_verify, trials=_trials(backend, N_SLOW), gen_seed=12,
                                  device=backend.device, **LAW_BY_NAME[name])
    pv = chi2_pvalue(samples, markov_law(M_TARGET))
    assert pv > P_MIN, f"{name}: emitted law differs from the target: p = {pv:.3g} ({info})"


def test_block_tree_law_negative_control(backend):
    # The i.i.d. form of the rule (replacement=True) on siblings drawn WITHOUT replacement is
    # biased: the law test must reject it at the size this backend runs.
    if backend.interpreted:
        pytest.skip("Triton interpreter: too slow for a statistical test")
    samples, _ = simulate_tree(block_verify, trials=_trials(backend, N_DEFAULT), gen_seed=13,
                               device=backend.device, shape="3-2", draft="sharp", replacement=True)
    pv = chi2_pvalue(samples, markov_law(M_TARGET))
    assert pv < P_MIN, f"i.i.d. rule on without-replacement siblings not detected: p = {pv:.3g}"


class _MarkovInstance(Instance):
    """The toy model of the law tests as enumeration tables: p and q depend on the last token."""

    def __init__(self, branching, draft):
        self.V, self.branching, self.D = MV, tuple(branching), len(branching)
        P, Q = M_TARGET.double(), M_DRAFTS[draft].double()
        self.p, self.q = {}, {}
        for n in range(self.D + 1):
            for pre in itertools.product(range(MV), repeat=n):
                last = pre[-1] if pre else M_START
                self.p[pre] = (P[last] / P[last].sum()).tolist()
                if n < self.D:
                    self.q[pre] = (Q[last] / Q[last].sum()).tolist()


@pytest.mark.parametrize("rule", ["token", "block"])
def test_block_tree_tokens_per_round_match_enumeration(backend, rule):
    # One round of a 2-2 tree drawn without replacement from the sharp draft: the mean of
    # num_accepted + 1 agrees with the enumeration within 5 standard errors, and the enumeration
    # puts "block" ahead.
    if backend.interpreted:
        pytest.skip("Triton interpreter: too slow for a statistical test")
    exact = {r: evaluate(_MarkovInstance((2, 2), "sharp"), "wo", name)[1]
             for r, name in (("token", "rrs"), ("block", "tv"))}
    assert exact["block"] > exact["token"] + 0.005
    N = _trials(backend, N_DEFAULT) * 2
    par = rsdc_shape((2, 2), 9)
    g = torch.Generator().manual_seed(14)
    tok = draft_tree(torch.full((N,), M_START), par, M_DRAFTS["sharp"], "wor", g)
    parents = torch.tensor(par).expand(N, len(par)).contiguous()
    inputs = dict(tokens=tok, parents=parents, target_probs=M_TARGET[tok],
                  draft_probs=M_DRAFTS["sharp"][tok])
    res = sk.verify_tree(**to_device(inputs, backend.device), seed=15, rule=rule)
    t = res.num_accepted.cpu().double() + 1
    se = float(t.std()) / N**0.5
    assert abs(float(t.mean()) - exact[rule]) < 5 * se, (float(t.mean()), exact[rule], se)


# ----------------------------------------------------------------------------------------------
# Equality with the reference on every backend (the random trees of tests/tree_cases.py)
# ----------------------------------------------------------------------------------------------

GRID = [(V, B) for V in (1, 7, 111, 5000) for B in (1, 3, 33) if not (V == 5000 and B == 33)]
VARIANTS = ["shape_chain", "shape_star", "shape_rsdc22", "shape_sbs", "shape_rsdc31", "replacement",
            "replacement_V7", "replacement_ragged_star", "deterministic", "deterministic_V7_ragged",
            "deterministic_dups", "ragged", "ragged_int32", "fp16", "bf16", "fp16_replacement",
            "bf16_deterministic_ragged", "seed_tensor", "offset_tensor", "big_seed_offset", "generator",
            "strided", "replacement_V32000", "deterministic_V32000"]
INTERP_ROWS = 2


@functools.cache
def _case(V, B, variant=None):
    opts = dict(VARIANTS_BY_NAME[variant][2]) if variant else {}
    case_seed = V * 1000 + B + 7 * len(variant or "") + 1
    inputs = make_tree(B, V, seed=case_seed, shape=opts.get("shape", "mixed"),
                       drafts=opts.get("drafts", "stochastic"), replacement=opts.get("replacement", False),
                       dtype=opts.get("dtype", torch.float32), ragged=opts.get("ragged", False))
    if "nn_dtype" in opts:
        inputs["num_nodes"] = inputs["num_nodes"].to(opts["nn_dtype"])
    if opts.get("strided"):
        from tree_cases import _strided

        inputs["target_probs"] = _strided(inputs["target_probs"])
        inputs["draft_probs"] = _strided(inputs["draft_probs"])
    kw = _rng_kw(opts, B, case_seed)
    expected = RT.verify_tree(**inputs, **with_generator(kw), rule="block", check=False)
    check_structure(expected, inputs)
    return inputs, kw, expected


def _run_case(backend, V, B, variant=None):
    inputs, kw, expected = _case(V, B, variant)
    if (backend.interpreted or backend.name == "reference") and B > INTERP_ROWS:
        inputs, kw = first_rows(inputs, kw, INTERP_ROWS)
        expected = head(expected, INTERP_ROWS)
    d = backend.device
    res = sk.verify_tree(**to_device(inputs, d), **to_device(with_generator(kw), d), rule="block")
    assert res.tokens.device.type == d.type
    check_structure(res, inputs)
    assert_same(res, expected)


@pytest.mark.parametrize("V,B", GRID, ids=[f"V{V}-B{B}" for V, B in GRID])
def test_block_tree_matches_reference(backend, V, B):
    _run_case(backend, V, B)


@pytest.mark.parametrize("variant", VARIANTS)
def test_block_tree_matches_reference_variants(backend, variant):
    V, B, _ = VARIANTS_BY_NAME[variant]
    _run_case(backend, V, B, variant)


def test_block_tree_cases_reach_every_path():
    # Acceptance below depth 1, and rounds whose emitted token comes from a deleted node's residual.
    for variant in ("ragged", "replacement", "deterministic", "shape_sbs"):
        V, B, _ = VARIANTS_BY_NAME[variant]
        res = _case(V, B, variant)[2]
        assert int((res.num_accepted >= 2).sum()) > 0 and int((res.num_accepted == 0).sum()) > 0, variant


def test_block_tree_differs_from_token_rule():
    inputs, kw, expected = _case(111, 33, "shape_rsdc31")
    token = RT.verify_tree(**inputs, **with_generator(kw), check=False)
    assert not torch.equal(token.tokens, expected.tokens)


def test_block_tree_k1_star_equals_token_rule(backend):
    # A star (the root's children are leaves) has no subtree to weigh: the two rules coincide,
    # draw for draw.
    inputs = make_tree(9, 111, seed=3, shape="star")
    d = backend.device
    a = sk.verify_tree(**to_device(inputs, d), seed=4, rule="block")
    b = sk.verify_tree(**to_device(inputs, d), seed=4, rule="token")
    assert_same(a, b)


def test_block_tree_siblings_q_past_one(backend):
    # Without-replacement siblings whose q values sum past 1 in float64 (0.6 + 0.4 in float32), then
    # a sibling with q(x) = 0: the weight's numerator is negative and its denominator 0. Every
    # backend deletes that child untested, as the reference does, and nothing divides by zero.
    V = 5
    row_p = torch.tensor([0.1, 0.1, 0.8, 0.0, 0.0])
    row_q = torch.tensor([0.6, 0.4, 0.0, 0.0, 0.0])
    assert float(row_q.double().sum()) > 1.0
    inputs = dict(tokens=torch.tensor([[0, 0, 1, 2]]), parents=torch.tensor([[-1, 0, 0, 0]]),
                  target_probs=row_p.expand(1, 4, V).contiguous(),
                  draft_probs=row_q.expand(1, 4, V).contiguous())
    for seed in range(6):
        expected = RT.verify_tree(**inputs, seed=seed, rule="block")
        assert_same(sk.verify_tree(**to_device(inputs, backend.device), seed=seed, rule="block"), expected)


# ----------------------------------------------------------------------------------------------
# Arguments and registration
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [sk.verify_tree, RT.verify_tree], ids=["public", "reference"])
def test_block_tree_bad_rule(fn):
    inputs = make_tree(1, 7, seed=0, shape="star")
    with pytest.raises(ValueError, match=r"rule must be one of 'token', 'block'"):
        fn(**inputs, seed=0, rule="traversal")


def test_block_tree_checks(backend):
    # The checks of rule "token" hold for rule "block" (the cpu kernel runs its own, in C++).
    inputs = make_tree(3, 7, seed=1, shape="rsdc22")
    bad = dict(inputs, target_probs=inputs["target_probs"] * 5)
    with pytest.raises(ValueError, match="target_probs"):
        sk.verify_tree(**to_device(bad, backend.device), seed=0, rule="block")
    par = inputs["parents"].clone()
    par[:, 2] = 5
    with pytest.raises(ValueError, match="parents"):
        sk.verify_tree(**to_device(dict(inputs, parents=par), backend.device), seed=0, rule="block")


def test_opcheck_verify_tree_block():
    if "cpu" not in sk.backends("cpu"):
        pytest.skip("needs the compiled cpu backend")
    inputs = make_tree(3, 7, seed=2, shape="rsdc22", ragged=True)
    s, o = torch.arange(3), torch.zeros(3, dtype=torch.long)
    args = (inputs["tokens"], inputs["parents"], inputs["target_probs"], inputs["draft_probs"],
            inputs["num_nodes"], False, s, o, True)
    torch.library.opcheck(torch.ops.specdec.verify_tree_block.default, args)
    cf = torch.compile(lambda *a: torch.ops.specdec.verify_tree_block(*a), fullgraph=True,
                       backend="aot_eager")
    assert_same(cf(*args), torch.ops.specdec.verify_tree_block(*args))
