"""verify_tree: the emitted sequence has exactly the target's law in a simulated decoding loop on
the Markov "language model" of tests/tree_cases.py (chi-square; slow variants at larger sizes),
the paths the law cases exercise, positive controls (an exact plain-torch verifier) and negative
controls the harness must reject (the i.i.d. rule on without-replacement siblings, a wrong
target law); block efficiency: sampling without replacement accepts more."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import to_device
from tree_cases import (
    LAW_BY_NAME,
    LAW_CASES,
    M_DRAFTS,
    M_LOGITS,
    M_TARGET,
    MV,
    N_DEFAULT,
    N_SLOW,
    P_MIN,
    _size,
    _trials,
    chi2_pvalue,
    children_lists,
    draft_tree,
    markov_law,
    rsdc_shape,
    simulate_tree,
)

# The tree ops by module: ``T.verify_tree`` is the public op (backend dispatch). (Kept in one place:
# the public names can replace ``T`` once they are exported.)
from specdec_kernels.ops import tree as T

TRITON_FAMILY = "tree"  # conftest: the triton params need specdec_kernels.triton.tree


# ----------------------------------------------------------------------------------------------
# Distribution: the emitted sequence has exactly the target's law
# ----------------------------------------------------------------------------------------------
#
# The toy model (M_TARGET, M_DRAFTS), the tree shapes (LAW_SHAPES), the simulated decoding loop
# (simulate_tree), the law cases and the chi-square harness live in tests/tree_cases.py
# (tests/test_tree_block.py uses them too).


def library_verify(tokens, parents, p, q, nn, replacement, seed, offset):
    return T.verify_tree(tokens, parents, p, q, num_nodes=nn, replacement=replacement, seed=seed,
                         offset=offset)


def torch_rsd(tokens, parents, p, q, nn, replacement, seed, offset):
    """Recursive rejection sampling in plain float64 torch with its own RNG, straight from
    docs/algorithms.md §4 (normalised residuals, d_k = q conditioned on the earlier siblings): a
    positive control of the harness, independent of the library's arithmetic."""
    g = torch.Generator().manual_seed(int(seed if isinstance(seed, int) else seed[0]) * 31 +
                                      int(offset if isinstance(offset, int) else offset[0]))
    M, N = tokens.shape
    V = p.shape[-1]
    nn = torch.full((M,), N) if nn is None else nn
    kids = children_lists(parents.max(0).values.tolist())  # one shape, -1 padding in ragged rows
    P = p.double()
    Qd = None if q is None else q.double()
    cur = torch.zeros(M, dtype=torch.long)
    out = torch.full((M, N), -1, dtype=torch.long)
    nodes = torch.full((M, N), -1, dtype=torch.long)
    nacc = torch.zeros(M, dtype=torch.long)
    for n in range(N):
        idx = (cur == n).nonzero().squeeze(1)
        if not idx.numel():
            continue
        m = idx.numel()
        r = P[idx, n].clone()
        qn = None if Qd is None else Qd[idx, n]
        removed = torch.zeros(m, V, dtype=torch.bool)
        q_sum = torch.zeros(m, dtype=torch.float64)
        chosen = torch.full((m,), -1, dtype=torch.long)
        for c in kids[n]:
            live = (c < nn[idx]) & (chosen < 0)
            x = tokens[idx, c].clamp(min=0)
            if qn is None:
                dist = torch.nn.functional.one_hot(x, V).double()
            elif replacement:
                dist = qn
            else:
                dist = torch.where(removed, 0.0, qn) / (1 - q_sum)[:, None]
            dx = dist.gather(1, x[:, None]).squeeze(1)
            rx = r.gather(1, x[:, None]).squeeze(1)
            u = torch.rand(m, generator=g, dtype=torch.float64)
            ok = live & (u * dx < rx)
            chosen = torch.where(ok, c, chosen)
            rej = live & ~ok
            new_r = (r - dist).clamp(min=0)
            new_r = new_r / new_r.sum(-1, keepdim=True).clamp(min=1e-300)
            r = torch.where(rej[:, None], new_r, r)
            if qn is not None and not replacement:
                q_sum = torch.where(rej, q_sum + qn.gather(1, x[:, None]).squeeze(1), q_sum)
                removed = removed | (rej[:, None] & torch.nn.functional.one_hot(x, V).bool())
        acc = chosen >= 0
        a_idx = idx[acc]
        out[a_idx, nacc[a_idx]] = tokens[a_idx, chosen[acc]]
        nodes[a_idx, nacc[a_idx]] = chosen[acc]
        nacc[a_idx] += 1
        cur[a_idx] = chosen[acc]
        stop = idx[~acc]
        y = torch.multinomial(r[~acc].float(), 1, generator=g).squeeze(1) if stop.numel() else stop
        out[stop, nacc[stop]] = y
        cur[stop] = -1
    return T.TreeResult(out, nacc, nodes)


REFERENCE_LAW_CASES = ("det_sbs_ragged",)  # and wor 3-2 sharp in test_law_negative_control_wrong_target
REFERENCE_SLOW_LAW_CASES = ("wor_3-2_sharp", "iid_3-2_sharp", "det_3-2", "wor_sbs_ragged_sharp", "wor_chain3")
INTERPRETED_SLOW_LAW_CASES = ("wor_3-2_sharp", "det_sbs_ragged")


def _skip_interpreted(backend):
    # Every backend is bitwise equal to the reference (test_tree_verify.py), so the statistical tests on the
    # interpreter (~0.1 s per tree) add little: two small cases in the slow tests; compiled Triton (on
    # CUDA tensors) runs them all at full size.
    if backend.interpreted:
        pytest.skip("Triton interpreter: statistical tests only in test_emitted_law_is_exact_slow")


@pytest.mark.parametrize("name", list(LAW_BY_NAME))
def test_emitted_law_is_exact(backend, name):
    _skip_interpreted(backend)
    if backend.name == "reference" and name not in REFERENCE_LAW_CASES:
        pytest.skip("reference: one case here (five in test_emitted_law_is_exact_slow)")
    trials = _trials(backend, N_DEFAULT)
    samples, info = simulate_tree(library_verify, trials=trials, gen_seed=1, device=backend.device,
                                  **LAW_BY_NAME[name])
    pv = chi2_pvalue(samples, markov_law(M_TARGET))
    assert pv > P_MIN, f"{name}: emitted law differs from the target: p = {pv:.3g} ({info})"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAW_BY_NAME))
def test_emitted_law_is_exact_slow(backend, name):
    if backend.name == "reference" and name not in REFERENCE_SLOW_LAW_CASES:
        pytest.skip("reference: five cases (~20 s each); the compiled backends run all")
    if backend.interpreted and name not in INTERPRETED_SLOW_LAW_CASES:
        pytest.skip("Triton interpreter: two cases (~1 min each); the compiled backends run all")
    trials = _trials(backend, N_SLOW)
    samples, info = simulate_tree(library_verify, trials=trials, gen_seed=2, device=backend.device,
                                  **LAW_BY_NAME[name])
    pv = chi2_pvalue(samples, markov_law(M_TARGET))
    assert pv > P_MIN, f"{name}: emitted law differs from the target: p = {pv:.3g} ({info})"


def test_law_cases_exercise_every_path():
    # The law tests see every path of the verifier many times: acceptance at depth >= 2, nodes with
    # >= 2 children all rejected, leaves (bonus tokens). Checked with the plain-torch verifier,
    # which walks the same trees.
    for name, opts in LAW_CASES:
        _, info = simulate_tree(torch_rsd, trials=2000, gen_seed=1, **opts)
        assert info["leaves"] > 50, (name, info)
        if opts["shape"] != "star3":
            assert info["deep"] > 50, (name, info)
        if opts["shape"] != "chain3":
            assert info["all_rejected"] > 50, (name, info)


@pytest.mark.parametrize("name", list(LAW_BY_NAME))
def test_harness_positive_control(name):
    # The plain-torch exact algorithm (fast: vectorised over trials) passes the same check at the
    # compiled backends' size: the harness, the tree drafting and markov_law are right.
    samples, _ = simulate_tree(torch_rsd, trials=N_DEFAULT["compiled"], gen_seed=3, **LAW_BY_NAME[name])
    assert chi2_pvalue(samples, markov_law(M_TARGET)) > P_MIN


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAW_BY_NAME))
def test_harness_positive_control_slow(name):
    samples, _ = simulate_tree(torch_rsd, trials=N_SLOW["compiled"], gen_seed=3, **LAW_BY_NAME[name])
    assert chi2_pvalue(samples, markov_law(M_TARGET)) > P_MIN


# Negative controls: the harness must reject (p < P_MIN) biased laws at the size each backend
# runs. Observed p-values over 5 drafting seeds (plain-torch verifier): the i.i.d. rule on
# without-replacement siblings of a sharp draft, 3-2 trees: <= 1e-36 at 500 trials, 0 at 2000;
# of the close draft: <= 4e-26 at 20 000 trials (0.003-0.9 at 500: too subtle for small sizes).
# The wrong target law P^(1/T): T = 1.7 <= 2e-10 at 500; T = 1.5 <= 1e-16 at 2000; T = 1.2
# <= 3e-63 at 20 000 (T = 1.3 at 500: up to 0.02, not reliable).
WRONG_TEMPERATURE = {"reference": 1.7, "compiled": 1.2}


@pytest.mark.parametrize("draft,trials", [("sharp", min(N_DEFAULT.values())),
                                          ("close", N_DEFAULT["compiled"])])
def test_harness_negative_control_iid_rule_torch(draft, trials):
    # The i.i.d. (replacement=True) rule on siblings drawn WITHOUT replacement is biased; the
    # harness rejects it (with the sharp draft at the smallest size any backend uses).
    samples, _ = simulate_tree(torch_rsd, trials=trials, gen_seed=4, shape="3-2", draft=draft,
                               replacement=True)
    assert chi2_pvalue(samples, markov_law(M_TARGET)) < P_MIN


def test_law_negative_control_iid_rule(backend):
    # The library's i.i.d. rule (replacement=True) on without-replacement trees: rejected. At the
    # compiled size also with the close draft, where the bias is small.
    _skip_interpreted(backend)
    trials = _trials(backend, N_DEFAULT)
    drafts = ["sharp"] + (["close"] if trials >= N_DEFAULT["compiled"] else [])
    for draft in drafts:
        samples, _ = simulate_tree(library_verify, trials=trials, gen_seed=4, device=backend.device,
                                   shape="3-2", draft=draft, replacement=True)
        pv = chi2_pvalue(samples, markov_law(M_TARGET))
        assert pv < P_MIN, f"i.i.d. rule on without-replacement siblings ({draft}): p = {pv:.3g}"


def test_law_negative_control_wrong_target(backend):
    # The correct verifier's samples (case wor_3-2_sharp) pass against the target's law and are
    # rejected against a wrong law (the target at another temperature).
    _skip_interpreted(backend)
    trials = _trials(backend, N_DEFAULT)
    temperature = WRONG_TEMPERATURE[_size(backend)]
    samples, _ = simulate_tree(library_verify, trials=trials, gen_seed=5, device=backend.device,
                               **LAW_BY_NAME["wor_3-2_sharp"])
    assert chi2_pvalue(samples, markov_law(M_TARGET)) > P_MIN
    pv = chi2_pvalue(samples, markov_law(torch.softmax(M_LOGITS / temperature, -1)))
    assert pv < P_MIN, f"a wrong target law (T = {temperature}) not detected: p = {pv:.3g}"


# ----------------------------------------------------------------------------------------------
# Block efficiency: sampling without replacement accepts more
# ----------------------------------------------------------------------------------------------


def test_without_replacement_accepts_more(backend):
    # One round from random roots, a 3-3 tree under the sharp draft: the mean number of accepted
    # tokens of without-replacement trees (replacement=False) beats i.i.d. trees (replacement=True)
    # by many standard errors. (The i.i.d. siblings are often duplicates of a rejected token.)
    _skip_interpreted(backend)
    M = 300 if backend.name == "reference" else 5000
    g = torch.Generator().manual_seed(6)
    roots = torch.randint(0, MV, (M,), generator=g)
    par_list = rsdc_shape((3, 3), 9)
    parents = torch.tensor(par_list).expand(M, len(par_list)).contiguous()
    Q = M_DRAFTS["sharp"]
    means = {}
    for drafting in ("wor", "iid"):
        tok = draft_tree(roots, par_list, Q, drafting, g)
        p, q = M_TARGET[tok], Q[tok]
        res = T.verify_tree(*to_device((tok, parents, p, q), backend.device),
                            replacement=drafting == "iid", seed=11)
        n = res.num_accepted.cpu().double()
        means[drafting] = (float(n.mean()), float(n.std() / math.sqrt(M)))
    (m_wor, se_wor), (m_iid, se_iid) = means["wor"], means["iid"]
    assert m_wor - m_iid > 5 * math.hypot(se_wor, se_iid), means
