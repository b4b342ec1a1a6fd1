"""check=True on the cpu backend: the kernels validate what they read, as they read it.

The Python checks (reference, CUDA and Triton backends) scan every used row of the inputs. The cpu
kernels fold the checks into their own pass instead (csrc/common/checks.cpp): the structure in
C++ before the kernel, every probability or logit the kernel reads as it reads it. A bad value in
a row the kernel reads raises the same ValueError; one in a row it never reads cannot change the
result, and is neither scanned nor reported. These tests build inputs whose read rows are known
(one-hot rows force each accept / reject), at every vector level of this CPU.
"""

from __future__ import annotations

import pytest
import torch

import specdec_kernels as sk

pytestmark = pytest.mark.skipif("cpu" not in sk.backends("cpu"), reason="needs the compiled cpu backend")
LEVELS = list(range(sk.cpu_simd_level(supported=True) + 1)) if "cpu" in sk.backends("cpu") else []
NAN = float("nan")
# V = 50 / 40: the races run their scalar tail only; V = 300: two vector steps of 128 ids and a tail.
VS = pytest.mark.parametrize("V", [50, 300])
TREE_VS = pytest.mark.parametrize("V", [40, 300])


@pytest.fixture(params=LEVELS, ids=lambda v: sk._backend.CPU_SIMD_LEVELS[v])
def cpu(request):
    with sk.use_backend("cpu"), sk.use_cpu_simd(request.param):
        yield


def chain_case(V=50):
    """K = 3: drafts 0 and 1 accepted for sure (p = q one-hot at them), draft 2 rejected for sure
    (p(x2) = 0): the kernel reads p, q at x0, x1, x2 and the whole rows p[2], q[2]; never p[3]."""
    x = torch.tensor([[4, 9, 13]])
    p = torch.full((1, 4, V), 1.0 / V)
    q = torch.full((1, 3, V), 1.0 / V)
    for i, t in enumerate([4, 9]):
        p[0, i] = 0.0
        p[0, i, t] = 1.0
        q[0, i] = 0.0
        q[0, i, t] = 1.0
    p[0, 2] = 0.0
    p[0, 2, 20] = 1.0
    return x, p, q


def _with(t, idx, value):
    t = t.clone()
    t[idx] = value
    return t


@VS
@pytest.mark.parametrize("where,arg", [
    ((0, 2, 5), "target_probs"), ((0, 0, 4), "target_probs"), ((0, 2, 20), "target_probs"),
    ((0, 2, -1), "target_probs"),
])
def test_chain_bad_value_read_raises(cpu, where, arg, V):
    x, p, q = chain_case(V)
    with pytest.raises(ValueError, match=f"{arg} must be finite and non-negative"):
        sk.verify_chain(x, _with(p, where, NAN), q, seed=1)
    with pytest.raises(ValueError, match=f"{arg} must be finite and non-negative"):
        sk.verify_chain(x, _with(p, where, -0.5), q, seed=1)


@VS
@pytest.mark.parametrize("where", [(0, 2, 7), (0, 1, 9), (0, 2, 13), (0, 2, -1)])
def test_chain_bad_draft_value_read_raises(cpu, where, V):
    x, p, q = chain_case(V)
    with pytest.raises(ValueError, match="draft_probs must be finite and non-negative"):
        sk.verify_chain(x, p, _with(q, where, float("inf")), seed=1)


def test_chain_rows_not_read_are_not_checked(cpu):
    x, p, q = chain_case()
    clean = sk.verify_chain(x, p, q, seed=1)
    assert int(clean.num_accepted) == 2
    # the bonus row p[3], and q / p of accepted positions beyond the drafted tokens
    unread = [(_with(p, (0, 3, 1), NAN), q), (_with(p, (0, 0, 5), NAN), q), (p, _with(q, (0, 0, 7), NAN))]
    for pp, qq in unread:
        out = sk.verify_chain(x, pp, qq, seed=1)
        assert torch.equal(out.tokens, clean.tokens)
        assert torch.equal(out.tokens, sk.verify_chain(x, pp, qq, seed=1, check=False).tokens)


@VS
def test_chain_zero_mass_row_read_raises(cpu, V):
    x, p, q = chain_case(V)
    p[0, 2] = 0.0
    with pytest.raises(ValueError, match="target_probs has a row with zero total mass"):
        sk.verify_chain(x, p, q, seed=1)
    with pytest.raises(ValueError, match="target_probs has a row with zero total mass"):
        sk.verify_chain(x, p, None, seed=1)


@VS
def test_chain_row_sums_of_rows_read(cpu, V):
    # The rows read whole are p[2] and q[2] (the rejection): their sums are checked in that pass.
    x, p, q = chain_case(V)
    clean = sk.verify_chain(x, p, q, seed=1)
    with pytest.raises(ValueError, match=r"target_probs rows must sum to 1 \(within 1e-03 for float32\); "
                                         r"found a row summing to 1\.5$"):
        sk.verify_chain(x, _with(p, (0, 2, 30), 0.5), q, seed=1)
    with pytest.raises(ValueError, match=r"target_probs rows must sum to 1"):
        sk.verify_chain(x, _with(p, (0, 2, 30), 0.5), None, seed=1)
    with pytest.raises(ValueError, match=r"draft_probs rows must sum to 1 \(within 1e-03 for float32\); "
                                         r"found a row summing to 0\.5$"):
        sk.verify_chain(x, p, _with(q, (0, 2), 0.5 / V), seed=1)
    # Rows read as scalars only (accepted positions) or not at all (the bonus row): not summed.
    unread = [(_with(p, (0, 3), 5.0 / V), q), (_with(p, (0, 0, 5), 0.5), q), (p, _with(q, (0, 0, 7), 0.5)),
              (p, _with(q, (0, 1, 30), 0.5))]
    for pp, qq in unread:
        out = sk.verify_chain(x, pp, qq, seed=1)
        assert torch.equal(out.tokens, clean.tokens)


@VS
def test_negative_zero_is_a_probability(cpu, V):
    # -0.0 passes the checks (it is >= 0) on every path, as in the Python checks: the vector loops
    # see its sign bit and re-check the row value by value.
    x, p, q = chain_case(V)
    q[0, 2] = 0.0
    q[0, 2, :40] = 1.0 / 40
    pz, qz = p.clone(), q.clone()
    pz[pz == 0] = -0.0
    qz[qz == 0] = -0.0
    assert bool(torch.signbit(pz[0, 2]).any()) and bool(torch.signbit(qz[0, 2]).any())
    for qq, qq_clean in ((qz, q), (None, None)):
        out = sk.verify_chain(x, pz, qq, seed=1)
        assert torch.equal(out.tokens, sk.verify_chain(x, p, qq_clean, seed=1).tokens)
    tokens, parents, tp, tq = tree_case(V)
    tpz = tp.clone()
    tpz[tpz == 0] = -0.0
    assert torch.equal(sk.verify_tree(tokens, parents, tpz, tq, seed=3).tokens,
                       sk.verify_tree(tokens, parents, tp, tq, seed=3).tokens)


@VS
def test_chain_row_sum_of_bonus_row(cpu, V):
    # Every draft accepted for sure (p = q one-hot at each): the bonus row p[3] is the row read whole.
    x, p, q = chain_case(V)
    p[0, 2] = 0.0
    p[0, 2, 13] = 1.0
    q[0, 2] = 0.0
    q[0, 2, 13] = 1.0
    assert int(sk.verify_chain(x, p, q, seed=1).num_accepted) == 3
    with pytest.raises(ValueError, match="target_probs rows must sum to 1.*found a row summing to 5$"):
        sk.verify_chain(x, _with(p, (0, 3), 5.0 / V), q, seed=1)
    for scale in (1 + 0.5e-3, 1 - 0.5e-3):  # within the float32 tolerance
        assert int(sk.verify_chain(x, _with(p, (0, 3), scale / V), q, seed=1).num_accepted) == 3
    with pytest.raises(ValueError, match="target_probs rows must sum to 1"):
        sk.verify_chain(x, _with(p, (0, 3), (1 + 2e-3) / V), q, seed=1)
    with pytest.raises(ValueError, match=r"target_probs rows must sum to 1 \(within 1e-02 for bfloat16\)"):
        sk.verify_chain(x, _with(p, (0, 3), 1.03 / V).bfloat16(), q.bfloat16(), seed=1)


def test_chain_structure_always_checked(cpu):
    x, p, q = chain_case()
    with pytest.raises(ValueError, match="draft_tokens must be in"):
        sk.verify_chain(_with(x, (0, 2), 50), p, q, seed=1)
    with pytest.raises(ValueError, match="num_draft must be in"):
        sk.verify_chain(x, p, q, num_draft=torch.tensor([4]), seed=1)


def test_chain_greedy_nan_in_rows_read(cpu):
    z = torch.zeros(1, 4, 8)
    z[0, :, 3] = 1.0  # argmax 3 everywhere; drafts [3, 5, 3]: the walk reads rows 0 and 1
    x = torch.tensor([[3, 5, 3]])
    with pytest.raises(ValueError, match="target_logits must not contain NaN"):
        sk.verify_chain_greedy(x, _with(z, (0, 1, 6), NAN))
    out = sk.verify_chain_greedy(x, _with(z, (0, 2, 6), NAN))  # row 2 is never read
    assert out.tokens.tolist() == [[3, 3, -1, -1]]


def tree_case(V=40):
    """Root with children 1, 2 (tokens 1, 2), grandchildren 3-6. The root's target is one-hot at
    token 3: both children are rejected for sure, the residual's mass pass and the final race read
    the root's rows; no other row is read."""
    parents = torch.tensor([[-1, 0, 0, 1, 1, 2, 2]])
    tokens = torch.tensor([[0, 1, 2, 5, 6, 7, 8]])
    q = torch.full((1, 7, V), 1.0 / V)
    p = torch.full((1, 7, V), 1.0 / V)
    p[0, 0] = 0.0
    p[0, 0, 3] = 1.0
    return tokens, parents, p, q


@TREE_VS
@pytest.mark.parametrize("replacement", [False, True])
def test_tree_rows_read_and_not_read(cpu, replacement, V):
    tokens, parents, p, q = tree_case(V)
    clean = sk.verify_tree(tokens, parents, p, q, replacement=replacement, seed=3)
    assert clean.tokens[0].tolist()[:2] == [3, -1]
    for node in range(1, 7):  # rows off the walk: not scanned, the result unchanged
        out = sk.verify_tree(tokens, parents, _with(p, (0, node, 0), NAN), _with(q, (0, node, 0), 2.0),
                             replacement=replacement, seed=3)
        assert torch.equal(out.tokens, clean.tokens)
    with pytest.raises(ValueError, match=r"target_probs\[0, 0\] \(node 0\) must be a probability row"):
        sk.verify_tree(tokens, parents, _with(p, (0, 0, 30), NAN), q, replacement=replacement, seed=3)
    with pytest.raises(ValueError, match=r"target_probs\[0, 0\] \(node 0\) must be a probability row"):
        sk.verify_tree(tokens, parents, _with(p, (0, 0, 3), 1.5), q, replacement=replacement, seed=3)
    with pytest.raises(ValueError, match=r"target_probs\[0, 0\] \(node 0\) must be a probability row"):
        sk.verify_tree(tokens, parents, _with(p, (0, 0, 17), 1.0005), q, replacement=replacement, seed=3)
    with pytest.raises(ValueError, match=r"draft_probs\[0, 0\] \(node 0\) must be a probability row"):
        sk.verify_tree(tokens, parents, p, _with(q, (0, 0, -1), NAN), replacement=replacement, seed=3)
    with pytest.raises(ValueError, match=r"draft_probs\[0, 0\] \(node 0\) must be a probability row"):
        sk.verify_tree(tokens, parents, p, _with(q, (0, 0, 39), -1.0), replacement=replacement, seed=3)
    with pytest.raises(ValueError, match=r"target_probs\[0, 0\] \(node 0\) has zero total mass"):
        sk.verify_tree(tokens, parents, _with(p, (0, 0), 0.0), q, replacement=replacement, seed=3)


@TREE_VS
@pytest.mark.parametrize("replacement", [False, True])
def test_tree_row_sums_of_rows_read(cpu, replacement, V):
    # The root's rows are read whole (mass pass, final race): their sums are checked there; the
    # rows of nodes off the walk are not.
    tokens, parents, p, q = tree_case(V)
    clean = sk.verify_tree(tokens, parents, p, q, replacement=replacement, seed=3)
    with pytest.raises(ValueError, match=r"target_probs\[0, 0\] \(node 0\) must sum to 1 \(within 1e-03 "
                                         r"for float32\); it sums to 1\.5$"):
        sk.verify_tree(tokens, parents, _with(p, (0, 0, 30), 0.5), q, replacement=replacement, seed=3)
    with pytest.raises(ValueError, match=r"target_probs\[0, 0\] \(node 0\) must sum to 1"):
        sk.verify_tree(tokens, parents, _with(p, (0, 0, 30), 0.5), None, seed=3)
    with pytest.raises(ValueError, match=r"draft_probs\[0, 0\] \(node 0\) must sum to 1 \(within 1e-03 "
                                         r"for float32\); it sums to 1\.5$"):
        sk.verify_tree(tokens, parents, p, _with(q, (0, 0), 1.5 / V), replacement=replacement, seed=3)
    for node in range(1, 7):
        out = sk.verify_tree(tokens, parents, _with(p, (0, node), 5.0 / V), _with(q, (0, node), 5.0 / V),
                             replacement=replacement, seed=3)
        assert torch.equal(out.tokens, clean.tokens)


@TREE_VS
def test_tree_row_sum_of_bonus_leaf(cpu, V):
    # p = q one-hot along root -> 1 -> 3: both accepted for sure (rows read as scalars only, not
    # summed), then the bonus is drawn from leaf 3's target row, read whole.
    tokens, parents, p, q = tree_case(V)
    for node, tok in ((0, 1), (1, 5)):
        for t in (p, q):
            t[0, node] = 0.0
            t[0, node, tok] = 1.0
    clean = sk.verify_tree(tokens, parents, p, q, seed=3)
    assert clean.accepted_nodes[0, :2].tolist() == [1, 3]
    with pytest.raises(ValueError, match=r"target_probs\[0, 3\] \(node 3\) must sum to 1 .*it sums to 2$"):
        sk.verify_tree(tokens, parents, _with(p, (0, 3), 2.0 / V), q, seed=3)
    unread = [(_with(p, (0, 0, 30), 0.5), q), (p, _with(q, (0, 1, 30), 0.5)), (p, _with(q, (0, 3), 2.0 / V))]
    for pp, qq in unread:
        assert torch.equal(sk.verify_tree(tokens, parents, pp, qq, seed=3).tokens, clean.tokens)


def test_tree_one_hot_drafts_and_structure(cpu):
    tokens, parents, p, q = tree_case()
    with pytest.raises(ValueError, match=r"target_probs\[0, 0\] \(node 0\)"):
        sk.verify_tree(tokens, parents, _with(p, (0, 0, 11), float("inf")), None, seed=3)
    with pytest.raises(ValueError, match=r"parents\[0, 3\] = 5 is not a valid parent of node 3"):
        sk.verify_tree(tokens, _with(parents, (0, 3), 5), p, q, seed=3)
    with pytest.raises(ValueError, match="nodes 1 and 2 are siblings"):
        sk.verify_tree(_with(tokens, (0, 2), 1), parents, p, q, seed=3)
    with pytest.raises(ValueError, match=r"num_nodes\[0\] = 8 must be in \[1, N\]"):
        sk.verify_tree(tokens, parents, p, q, num_nodes=torch.tensor([8]), seed=3)


def test_tree_greedy_nan_on_the_walk(cpu):
    tokens, parents, _, _ = tree_case()
    z = torch.zeros(1, 7, 40)
    z[0, 0, 2] = 1.0  # the root's argmax is 2: node 2 is accepted, then its row is read
    with pytest.raises(ValueError, match=r"target_logits\[0, 2\] \(node 2\) must not contain NaN"):
        sk.verify_tree_greedy(tokens, parents, _with(z, (0, 2, 9), NAN))
    out = sk.verify_tree_greedy(tokens, parents, _with(z, (0, 1, 9), NAN))  # node 1: off the walk
    assert out.accepted_nodes[0, 0] == 2


# The row ops read every logit anyway: the cpu kernels check them in their first pass over a row.
ROW_OPS = {
    "sampling_probs": (lambda z: sk.sampling_probs(z, temperature=0.7, top_k=3),
                       "logits must not contain NaN or \\+inf", "every entry is -inf"),
    "sampling_probs_top_p": (lambda z: sk.sampling_probs(z, top_p=0.9),
                             "logits must not contain NaN or \\+inf", "every entry is -inf"),
    "draft_entropy": (lambda z: sk.draft_entropy(z, temperature=0.7),
                      "logits must not contain NaN or \\+inf", "every entry is -inf"),
    "gumbel_topk": (lambda z: sk.gumbel_topk(z, 2, temperature=0.7, seed=1),
                    "logits must not contain NaN or \\+inf", None),
    "stochastic_beam_step": (lambda z: sk.stochastic_beam_step(
        z[:, None].expand(-1, 2, -1), torch.zeros(z.shape[0], 2), torch.zeros(z.shape[0], 2), 2,
        temperature=0.7, seed=1),
                             "logits must not contain NaN or \\+inf", None),
}


@pytest.mark.parametrize("V", [5, 300])
@pytest.mark.parametrize("op", list(ROW_OPS))
def test_row_ops_check_logits(cpu, op, V):
    fn, nan_msg, masked_msg = ROW_OPS[op]
    z = torch.randn(3, V)
    fn(z)  # fine
    for bad in (NAN, float("inf")):
        with pytest.raises(ValueError, match=nan_msg):
            fn(_with(z, (2, V - 1), bad))
    masked = _with(z, 1, float("-inf"))
    if masked_msg is None:  # the Gumbel ops take a row with no finite logit (it gets no candidate)
        fn(masked)
    else:
        with pytest.raises(ValueError, match=masked_msg):
            fn(masked)


@pytest.mark.parametrize("op", ["gumbel_topk", "stochastic_beam_step"])
def test_gumbel_ops_check_scaled_overflow(cpu, op):
    z = torch.randn(2, 40)
    z[1, 7] = 3e38  # finite, but 3e38 / 0.7 overflows float32
    fn = ROW_OPS[op][0]
    with pytest.raises(ValueError, match="must not overflow float32"):
        fn(z)


def test_sampling_and_entropy_params_checked(cpu):
    z = torch.randn(2, 9)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sk.sampling_probs(z, temperature=torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        sk.sampling_probs(z, top_k=torch.tensor([1, -1]))
    with pytest.raises(ValueError, match="top_p must be in"):
        sk.sampling_probs(z, top_p=torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sk.draft_entropy(z, temperature=torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="beam_scores must be finite"):
        sk.stochastic_beam_step(z[:, None], torch.zeros(2, 1), torch.full((2, 1), NAN), 1, seed=0)
