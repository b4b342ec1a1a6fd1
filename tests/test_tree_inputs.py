"""Tree ops: argument checks and their messages (bad trees, tokens, probabilities, flags and
randomness on the public ops and the reference; row sums by dtype; duplicated siblings;
the mask / position / bias helpers), device mismatches, check=False with invalid trees
(well-formed results, equal to the reference, never a crash or a hang)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from helpers import ROW_SUM_TOL, assert_row_sum_tolerance, to_device
from tree_cases import unpack_bits

import specdec_kernels as sk

# The tree ops by module: ``T.verify_tree`` is the public op (backend dispatch), ``RT.verify_tree`` the
# reference. (Kept in one place: the public names can replace ``T`` once they are exported.)
from specdec_kernels.ops import tree as T
from specdec_kernels.reference import tree as RT
from specdec_kernels.testing import assert_same

TRITON_FAMILY = "tree"  # conftest: the triton params need specdec_kernels.triton.tree


# ----------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------


def _good(B=2, V=5):
    """A valid 2-row problem: parents [-1, 0, 0, 1, 1] (root, 2 children, 2 grandchildren)."""
    g = torch.Generator().manual_seed(0)
    parents = torch.tensor([[-1, 0, 0, 1, 1]] * B)
    tokens = torch.tensor([[0, 1, 3, 2, 4]] * B)
    p = torch.softmax(torch.randn(B, 5, V, generator=g), -1)
    q = torch.softmax(torch.randn(B, 5, V, generator=g), -1)
    return dict(tokens=tokens, parents=parents, target_probs=p, draft_probs=q)


def _with(t, index, value):
    t = t.clone()
    t[index] = value
    return t


def _bad_cases():
    cases = []

    def case(name, match, **changes):
        cases.append(pytest.param(changes, match, id=name))

    def row_case(name, match, **changes):
        # A bad value in one node's row: the Python check (reference, CUDA, Triton) scans every
        # row, while the cpu kernel checks the rows its walk reads (test_cpu_checks_rows_read).
        cases.append(pytest.param(changes, match, id=name, marks=pytest.mark.row_values))

    g = _good()
    x, par, p, q = g["tokens"], g["parents"], g["target_probs"], g["draft_probs"]
    nan = float("nan")
    # the tree
    case("root_not_minus1", r"parents\[1, 0\] = 0: the root", parents=_with(par, (1, 0), 0))
    case("parent_equals_child", r"parents\[0, 3\] = 3 is not a valid parent of node 3",
         parents=_with(par, (0, 3), 3))
    case("parent_after_child", r"parents\[1, 2\] = 4 is not a valid parent of node 2",
         parents=_with(par, (1, 2), 4))
    case("parent_negative", r"parents\[1, 4\] = -1 is not a valid parent of node 4",
         parents=_with(par, (1, 4), -1))
    case("parents_rank", "parents must be", parents=par[0])
    case("parents_dtype", "parents must be int64", parents=par.int())
    case("parents_not_tensor", "parents", parents=par.tolist())
    case("parents_N0", "parents", parents=par[:, :0], tokens=x[:, :0], target_probs=p[:, :0],
         draft_probs=q[:, :0])
    case("num_nodes_zero", r"num_nodes\[0\] = 0 must be in \[1, N\]", num_nodes=torch.tensor([0, 5]))
    case("num_nodes_too_large", r"num_nodes\[1\] = 6 must be in \[1, N\]", num_nodes=torch.tensor([5, 6]))
    case("num_nodes_negative", r"num_nodes\[0\] = -1", num_nodes=torch.tensor([-1, 5]))
    case("num_nodes_shape", "num_nodes", num_nodes=torch.tensor([1, 2, 3]))
    case("num_nodes_dtype", "num_nodes", num_nodes=torch.tensor([1.0, 2.0]))
    # tokens
    case("token_too_large", r"tokens\[0, 2\] = 5 at node 2", tokens=_with(x, (0, 2), 5))
    case("token_negative", r"tokens\[1, 4\] = -1 at node 4", tokens=_with(x, (1, 4), -1))
    case("duplicate_siblings", r"nodes 1 and 2 are siblings", tokens=_with(x, (1, 2), 1))
    case("duplicate_grandchildren", r"tokens\[0, 4\] = tokens\[0, 3\] = 2: nodes 3 and 4",
         tokens=_with(x, (0, 4), 2))
    case("tokens_shape", r"tokens must be \[B, N\]", tokens=x[:, :4])
    case("tokens_dtype", "tokens must be int64", tokens=x.int())
    case("tokens_not_tensor", "tokens", tokens=x.tolist())
    # probabilities
    case("target_shape_N", r"target_probs must be \[B, N, V\]", target_probs=p[:, :4])
    case("target_shape_B", r"target_probs must be \[B, N, V\]", target_probs=p[:1])
    case("target_rank", r"target_probs must be \[B, N, V\]", target_probs=p[0])
    case("target_dtype", "target_probs", target_probs=p.double())
    case("target_V0", "target_probs", target_probs=p[..., :0], draft_probs=q[..., :0])
    case("target_not_tensor", "target_probs", target_probs=p.tolist())
    case("draft_shape", "draft_probs", draft_probs=q[:, :3])
    case("draft_V", "draft_probs", draft_probs=q[..., :4])
    case("draft_dtype_mismatch", "draft_probs must have the dtype", draft_probs=q.half())
    case("draft_dtype_int", "draft_probs", draft_probs=(q * 10).long())
    row_case("target_nan", r"target_probs\[1, 3\] \(node 3\) must be a probability row",
         target_probs=_with(p, (1, 3, 2), nan))
    row_case("target_negative", r"target_probs\[0, 1\] \(node 1\)", target_probs=_with(p, (0, 1, 0), -0.1))
    row_case("target_above_one", r"target_probs\[0, 2\] \(node 2\)", target_probs=_with(p, (0, 2, 0), 1.5))
    row_case("target_inf", r"target_probs\[0, 0\] \(node 0\)", target_probs=_with(p, (0, 0, 4), float("inf")))
    row_case("target_zero_mass", r"target_probs\[1, 2\] \(node 2\) has zero total mass",
         target_probs=_with(p, (1, 2), 0.0))
    row_case("draft_nan", r"draft_probs\[0, 1\] \(node 1\)", draft_probs=_with(q, (0, 1, 3), nan))
    row_case("draft_negative", r"draft_probs\[1, 0\] \(node 0\)", draft_probs=_with(q, (1, 0, 3), -1.0))
    row_case("draft_above_one", r"draft_probs\[1, 0\] \(node 0\)", draft_probs=_with(q, (1, 0, 3), 2.0))
    row_case("target_sum", r"target_probs\[1, 2\] \(node 2\) must sum to 1 \(within 1e-03 for float32\); "
             r"it sums to 1\.5", target_probs=_with(p, (1, 2), p[1, 2] * 1.5))
    row_case("draft_sum", r"draft_probs\[0, 1\] \(node 1\) must sum to 1 \(within 1e-03 for float32\)",
             draft_probs=_with(q, (0, 1), q[0, 1] * 0.9))
    # flags and randomness
    case("replacement_int", "replacement must be a bool", replacement=1)
    case("replacement_none", "replacement must be a bool", replacement=None)
    case("seed_negative", "seed", seed=-1)
    case("seed_float", "seed", seed=1.5)
    case("seed_tensor_dtype", "seed", seed=torch.tensor([1, 2], dtype=torch.int32))
    case("seed_tensor_shape", "seed", seed=torch.tensor([1, 2, 3]))
    case("offset_negative", "offset", offset=-2)
    case("offset_tensor_dtype", "offset", offset=torch.tensor([0.0, 2.0]))
    case("seed_and_generator", "generator", seed=1, generator=torch.Generator())
    return cases


@pytest.mark.parametrize("fn", [T.verify_tree, RT.verify_tree], ids=["public", "reference"])
@pytest.mark.parametrize("changes,match", _bad_cases())
def test_verify_tree_bad_inputs(fn, changes, match, request):
    kw = {**_good(), "seed": 0, **changes}
    rows = request.node.get_closest_marker("row_values") is not None
    with sk.use_backend("reference") if rows else contextlib.nullcontext(), \
            pytest.raises(ValueError, match=match):
        fn(**kw)


# check=True: probability rows must sum to 1, within a tolerance by dtype (contract/limits.py).
def _sum_tree(dtype=torch.float32, V=300):
    """Root with children 1, 2 (tokens 5, 9) and grandchildren 3-6; rows that sum to 1 exactly in
    every dtype (2^-8 on ids [0, 256), 0 on the last 44: the vector loops' tail). The root's
    target gives both children probability 0: they are rejected for sure, so every backend reads
    the root's rows whole (the cpu kernel: its mass pass and final race, no other row; the Python
    checks: every row used)."""
    parents = torch.tensor([[-1, 0, 0, 1, 1, 2, 2]])
    tokens = torch.tensor([[0, 5, 9, 1, 2, 3, 4]])
    p = torch.zeros(1, 7, V)
    p[..., :256] = 1.0 / 256
    q = p.clone()
    for t in (5, 9):
        p[0, 0, t] = 0.0
        p[0, 0, t + 1] = 2.0 / 256
    return dict(tokens=tokens, parents=parents, target_probs=p.to(dtype), draft_probs=q.to(dtype))


def _sum_msg(arg, dtype):
    return (rf"{arg}\[0, 0\] \(node 0\) must sum to 1 \(within {ROW_SUM_TOL[dtype]:.0e} for "
            rf"{str(dtype)[6:]}\)")


@pytest.mark.parametrize("arg", ["target_probs", "draft_probs"])
def test_verify_tree_unnormalised_rows_raise(backend, arg):
    kw = _sum_tree()
    bad = dict(kw, **{arg: kw[arg] * 5})
    for replacement in (False, True):
        with pytest.raises(ValueError, match=_sum_msg(arg, torch.float32) + "; it sums to 5$"):
            T.verify_tree(**to_device(bad, backend.device), replacement=replacement, seed=1)
    if arg == "target_probs":  # one-hot drafts: the final race reads the root's target row whole
        with pytest.raises(ValueError, match=_sum_msg(arg, torch.float32)):
            T.verify_tree(**to_device(dict(bad, draft_probs=None), backend.device), seed=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("arg", ["target_probs", "draft_probs"])
def test_verify_tree_sum_tolerance(backend, arg, dtype):
    kw = _sum_tree(dtype)
    assert_row_sum_tolerance(
        lambda k, check: T.verify_tree(**to_device(k, backend.device), seed=1, check=check),
        lambda res, k: assert_same(res, RT.verify_tree(**k, seed=1, check=False)),
        kw, arg, dtype, _sum_msg(arg, dtype),
    )


def test_verify_tree_bf16_softmax_rows_pass(backend):
    # bf16-rounded softmax rows over 32000 ids are off 1 by more than float32's 1e-3 (the largest
    # probabilities round with a spacing of 2^-8): the bfloat16 tolerance lets them through.
    g = torch.Generator().manual_seed(5)
    V = 32000
    parents = torch.tensor([[-1, 0, 0, 1]])
    p = torch.softmax(6 * torch.randn(1, 4, V, generator=g), -1).bfloat16()
    q = torch.softmax(6 * torch.randn(1, 4, V, generator=g), -1).bfloat16()
    for t in (p, q):
        assert float((t.float().sum(-1) - 1).abs().max()) > 1e-3
    top = q[0, 0].float().topk(2).indices.tolist()  # distinct siblings, as drawn without replacement
    tokens = torch.tensor([[0, top[0], top[1], int(q[0, 1].float().argmax())]])
    for qq in (q, None):
        res = T.verify_tree(*to_device((tokens, parents, p, qq), backend.device), seed=3)
        assert_same(res, RT.verify_tree(tokens, parents, p, qq, seed=3, check=False))


def test_duplicate_siblings_allowed_with_replacement(backend):
    g = _good()
    g["tokens"] = _with(g["tokens"], (1, 2), 1)  # nodes 1 and 2: the same token
    d = backend.device
    res = T.verify_tree(**to_device(g, d), replacement=True, seed=0)
    assert_same(res, RT.verify_tree(**g, replacement=True, seed=0))
    # deterministic drafts: duplicates are accepted by the check with replacement=True, rejected
    # (they are one-hot drafts either way) with False
    res = T.verify_tree(**to_device(dict(g, draft_probs=None), d), replacement=True, seed=0)
    assert_same(res, RT.verify_tree(**dict(g, draft_probs=None), replacement=True, seed=0))
    with pytest.raises(ValueError, match="siblings"):
        T.verify_tree(**to_device(dict(g, draft_probs=None), d), seed=0)


def _good_greedy():
    g = _good()
    return dict(tokens=g["tokens"], parents=g["parents"], target_logits=torch.randn(2, 5, 5))


@pytest.mark.parametrize("fn", [T.verify_tree_greedy, RT.verify_tree_greedy], ids=["public", "reference"])
@pytest.mark.parametrize("changes,match", [
    pytest.param(dict(target_logits=_with(torch.zeros(2, 5, 5), (1, 2, 3), float("nan"))),
                 r"target_logits\[1, 2\] \(node 2\) must not contain NaN", id="nan",
                 marks=pytest.mark.row_values),
    pytest.param(dict(target_logits=torch.zeros(2, 4, 5)), r"target_logits must be \[B, N, V\]", id="shape"),
    pytest.param(dict(target_logits=torch.zeros(2, 5, 5, dtype=torch.long)), "target_logits", id="dtype"),
    pytest.param(dict(tokens=torch.full((2, 5), 5)), r"tokens\[0, 1\] = 5 at node 1", id="token_range"),
    pytest.param(dict(tokens=torch.zeros(2, 5, dtype=torch.int32)), "tokens", id="tokens_dtype"),
    pytest.param(dict(parents=torch.tensor([[-1, 0, 0, 1, 1], [-1, 0, 2, 1, 1]])),
                 r"parents\[1, 2\] = 2", id="bad_parent"),
    pytest.param(dict(parents=torch.tensor([[-1, 0, 0, 1, 1], [0, 0, 0, 1, 1]])),
                 r"parents\[1, 0\] = 0: the root", id="bad_root"),
    pytest.param(dict(num_nodes=torch.tensor([0, 5])), "num_nodes", id="num_nodes_range"),
])
def test_verify_tree_greedy_bad_inputs(fn, changes, match, request):
    kw = {**_good_greedy(), **changes}
    rows = request.node.get_closest_marker("row_values") is not None
    with sk.use_backend("reference") if rows else contextlib.nullcontext(), \
            pytest.raises(ValueError, match=match):
        fn(**kw)


def test_greedy_duplicate_siblings_and_padding_are_fine():
    kw = _good_greedy()
    kw["tokens"] = _with(kw["tokens"], (1, 2), 1)  # greedy trees may repeat tokens among siblings
    kw["target_logits"][1, 4] = float("nan")  # padding node: not read, not checked
    kw["parents"] = _with(kw["parents"], (1, 4), 7)
    with sk.use_backend("reference"):
        T.verify_tree_greedy(**kw, num_nodes=torch.tensor([5, 4]))
        kw["target_logits"][1, 4] = 0.0
        kw["parents"][1, 4] = 1
        T.verify_tree_greedy(**kw)


@pytest.mark.parametrize("fn", ["mask", "packed", "positions", "bias"])
@pytest.mark.parametrize("changes,match", [
    pytest.param(dict(parents=torch.tensor([[0, 0, 0]])), r"parents\[0, 0\] = 0: the root", id="root"),
    pytest.param(dict(parents=torch.tensor([[-1, 0, 5]])), r"parents\[0, 2\] = 5", id="parent"),
    pytest.param(dict(parents=torch.tensor([[-1, 0, 0]], dtype=torch.int32)), "parents", id="dtype"),
    pytest.param(dict(parents=torch.tensor([-1, 0, 0])), "parents", id="rank"),
    pytest.param(dict(num_nodes=torch.tensor([4])), r"num_nodes\[0\] = 4", id="num_nodes"),
    pytest.param(dict(num_nodes=torch.tensor([1, 2])), "num_nodes", id="num_nodes_shape"),
])
def test_tree_mask_helpers_bad_trees(fn, changes, match):
    kw = {"parents": torch.tensor([[-1, 0, 0]]), **changes}
    with pytest.raises(ValueError, match=match):
        _call_helper(fn, **kw)


def _call_helper(fn, parents, **kw):
    if fn in ("mask", "packed"):
        return T.tree_attention_mask(parents, packed=kw.pop("packed", fn == "packed"), **kw)
    if fn == "positions":
        return T.tree_position_ids(parents, kw.pop("prefix_len", 3), **kw)
    return T.tree_attention_bias(parents, kw.pop("prefix_len", 3), **kw)


@pytest.mark.parametrize("fn,kw,match", [
    pytest.param("mask", dict(packed=1), "packed must be a bool", id="packed_int"),
    pytest.param("positions", dict(prefix_len=-1), "prefix_len", id="positions_negative"),
    pytest.param("positions", dict(prefix_len=2.0), "prefix_len", id="positions_float"),
    pytest.param("positions", dict(prefix_len=True), "prefix_len", id="positions_bool"),
    pytest.param("positions", dict(prefix_len=torch.tensor([1.0])), "prefix_len",
                 id="positions_tensor_dtype"),
    pytest.param("positions", dict(prefix_len=torch.tensor([1, 2])), "prefix_len",
                 id="positions_tensor_shape"),
    pytest.param("bias", dict(prefix_len=-1), "prefix_len", id="bias_negative"),
    pytest.param("bias", dict(prefix_len=torch.tensor(3)), "prefix_len", id="bias_tensor"),
    pytest.param("bias", dict(prefix_len=True), "prefix_len", id="bias_bool"),
    pytest.param("bias", dict(dtype=torch.int32), "dtype", id="bias_dtype_int"),
    pytest.param("bias", dict(dtype="float32"), "dtype", id="bias_dtype_str"),
    pytest.param("bias", dict(prefix_mask=torch.ones(1, 2)), "prefix_mask", id="prefix_mask_shape"),
    pytest.param("bias", dict(prefix_mask=torch.ones(1, 3)), "prefix_mask must be bool or integer",
                 id="prefix_mask_float"),
    pytest.param("bias", dict(prefix_mask=[[1, 1, 1]]), "prefix_mask", id="prefix_mask_list"),
])
def test_tree_mask_helpers_bad_arguments(fn, kw, match):
    with sk.use_backend("reference"), pytest.raises(ValueError, match=match):
        _call_helper(fn, torch.tensor([[-1, 0, 0]]), **kw)


@pytest.mark.cuda
def test_device_mismatch_cuda():
    g = _good()
    x, par, p, q = g["tokens"], g["parents"], g["target_probs"].cuda(), g["draft_probs"].cuda()
    with pytest.raises(ValueError, match="target_probs"):
        T.verify_tree(x, par, p, q, seed=0)
    with pytest.raises(ValueError, match="tokens"):
        T.verify_tree(x, par.cuda(), p, q, seed=0)
    with pytest.raises(ValueError, match="draft_probs"):
        T.verify_tree(x.cuda(), par.cuda(), p, q.cpu(), seed=0)
    with pytest.raises(ValueError, match="num_nodes"):
        T.verify_tree(x.cuda(), par.cuda(), p, q, num_nodes=torch.tensor([5, 5]), seed=0)
    with pytest.raises(ValueError, match="seed"):
        T.verify_tree(x.cuda(), par.cuda(), p, q, seed=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="offset"):
        T.verify_tree(x.cuda(), par.cuda(), p, q, seed=0, offset=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="target_logits"):
        T.verify_tree_greedy(x.cuda(), par.cuda(), p.cpu())
    with pytest.raises(ValueError, match="prefix_len"):
        T.tree_position_ids(par.cuda(), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="prefix_mask"):
        T.tree_attention_bias(par.cuda(), 2, prefix_mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_nodes"):
        T.tree_attention_mask(par.cuda(), num_nodes=torch.tensor([5, 5]))


# ----------------------------------------------------------------------------------------------
# check=False with invalid trees: well-formed results, never a crash or a hang
# ----------------------------------------------------------------------------------------------


def _invalid_trees():
    """Rows of invalid trees (N = 6, V = 5): forward and self links, cycles, out-of-range parents
    and tokens, duplicated siblings, a root with a parent."""
    parents = torch.tensor([
        [-1, 0, 3, 2, 1, 4],  # 2 -> 3 -> 2: a cycle (forward links)
        [-1, 1, 2, 3, 4, 5],  # every node its own parent
        [-1, 0, 100, -7, 0, 2],  # out of range
        [5, 0, 0, 1, 1, 2],  # a root with a parent
        [-1, 0, 0, 0, 1, 1],  # valid tree: bad tokens (out of range, duplicates)
        [-1, 0, 1, 2, 3, 4],  # valid chain: num_nodes out of range
    ])
    tokens = torch.tensor([
        [0, 1, 2, 3, 4, 0],
        [0, 1, 2, 3, 4, 0],
        [0, 1, 2, 3, 4, 0],
        [0, 1, 2, 3, 4, 0],
        [0, 9, 1, 1, -3, 4],
        [0, 1, 2, 3, 4, 0],
    ])
    nn = torch.tensor([6, 6, 6, 6, 6, 99])
    return tokens, parents, nn


@pytest.mark.parametrize("num_nodes", ["given", "none", "negative"])
def test_check_false_invalid_trees_are_well_formed(backend, num_nodes):
    if backend.interpreted and num_nodes != "given":
        pytest.skip("Triton interpreter: one of the three")
    tokens, parents, nn = _invalid_trees()
    if num_nodes == "none":
        nn = None
    elif num_nodes == "negative":
        nn = torch.tensor([-4, 0, 6, 3, 2, 1])
    B, N = parents.shape
    V = 5
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(B, N, V, generator=g), -1)
    q = torch.softmax(torch.randn(B, N, V, generator=g), -1)
    d = backend.device
    args = to_device((tokens, parents), d)
    kw = dict(num_nodes=None if nn is None else nn.to(d), check=False)
    results = [T.verify_tree(*args, p.to(d), qq, replacement=rep, seed=1, **kw)
               for qq in (q.to(d), None) for rep in (False, True)]
    results.append(T.verify_tree_greedy(*args, p.to(d), **kw))
    for res in results:
        t, n, nodes = (x.cpu() for x in res)
        assert t.shape == (B, N) and n.shape == (B,) and nodes.shape == (B, N)
        assert bool(((n >= 0) & (n < N)).all())
        emitted = t.gather(1, n[:, None]).squeeze(1)
        assert bool(((emitted >= 0) & (emitted < V)).all())
        assert bool(((nodes == -1) | ((nodes > 0) & (nodes < N))).all())
        # the accepted nodes are a path of parent links to later, valid indices
        for b in range(B):
            hi = N if nn is None else min(max(int(nn[b]), 1), N)
            prev = 0
            for i in nodes[b, :int(n[b])].tolist():
                assert prev < i < hi and int(parents[b, i]) == prev, (b, nodes[b])
                prev = i
    mask = T.tree_attention_mask(args[1], num_nodes=kw["num_nodes"], check=False)
    assert mask.shape == (B, N, N) and bool(mask.cpu().diagonal(dim1=1, dim2=2).all())
    packed = T.tree_attention_mask(args[1], num_nodes=kw["num_nodes"], packed=True, check=False)
    assert torch.equal(unpack_bits(packed, N), mask.cpu())
    pos = T.tree_position_ids(args[1], 2, num_nodes=kw["num_nodes"], check=False).cpu()
    assert bool(((pos >= 2) & (pos < 2 + N)).all())


def test_check_false_invalid_trees_match_reference(backend):
    # The reference's docstring specifies check=False on invalid trees (children searched among later
    # indices only, out-of-range and repeated tokens rejected unread, invalid links end the ancestor
    # walk, num_nodes clamped to [1, N]): every backend does the same.
    tokens, parents, nn = _invalid_trees()
    B, N = parents.shape
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(B, N, 5, generator=g), -1)
    q = torch.softmax(torch.randn(B, N, 5, generator=g), -1)
    d = backend.device
    for qq in (q, None):
        for rep in (False, True):
            kw = dict(num_nodes=nn, replacement=rep, seed=1, check=False)
            assert_same(T.verify_tree(*to_device((tokens, parents, p, qq), d), **to_device(kw, d)),
                        RT.verify_tree(tokens, parents, p, qq, **kw))
    assert_same(T.verify_tree_greedy(*to_device((tokens, parents, p), d), num_nodes=nn.to(d), check=False),
                RT.verify_tree_greedy(tokens, parents, p, num_nodes=nn, check=False))
    for packed in (False, True):
        assert torch.equal(
            T.tree_attention_mask(parents.to(d), num_nodes=nn.to(d), packed=packed, check=False).cpu(),
            RT.tree_attention_mask(parents, num_nodes=nn, packed=packed, check=False))
    assert torch.equal(T.tree_position_ids(parents.to(d), 4, num_nodes=nn.to(d), check=False).cpu(),
                       RT.tree_position_ids(parents, 4, num_nodes=nn, check=False))


def test_negative_prefix_len_tensor_raises():
    with pytest.raises(ValueError, match="prefix_len must be >= 0"):
        T.tree_position_ids(torch.tensor([[-1, 0, 1]]), torch.tensor([-5]))
    with pytest.raises(ValueError, match="prefix_len must be >= 0"):
        T.tree_position_ids(torch.tensor([[-1, 0, 1]]), -5)


def test_token_range_message_is_half_open():
    with pytest.raises(ValueError, match=r"must be in \[0, V\) = \[0, 5\) "):
        T.verify_tree(torch.tensor([[0, 9]]), torch.tensor([[-1, 0]]), torch.full((1, 2, 5), 0.2))
