"""verify_tree: equality with the reference on every backend (random trees of many shapes, ragged
rows, dtypes, stochastic and deterministic drafts, with and without replacement, every seed
kind), the paths the random trees exercise, padding never read, root-only trees and the empty
batch; verify_tree on a chain equals verify_chain bit for bit (and the greedy ops likewise);
golden trees drawn by hand."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import to_device, with_generator
from tree_cases import (
    GRID,
    INTERP_ROWS,
    PAPER_PARENTS,
    PAPER_TOKENS,
    PV,
    VARIANTS,
    VARIANTS_BY_NAME,
    _rng_kw,
    _strided,
    brute_mask,
    chain_shape,
    check_structure,
    first_rows,
    head,
    make_tree,
    node_counts,
    stop_nodes,
)

import specdec_kernels as sk

# The tree ops by module: ``T.verify_tree`` is the public op (backend dispatch), ``RT.verify_tree`` the
# reference. (Kept in one place: the public names can replace ``T`` once they are exported.)
from specdec_kernels.ops import tree as T
from specdec_kernels.reference import tree as RT
from specdec_kernels.testing import assert_same

TRITON_FAMILY = "tree"  # conftest: the triton params need specdec_kernels.triton.tree


# ----------------------------------------------------------------------------------------------
# Equality with the reference
# ----------------------------------------------------------------------------------------------


@functools.cache
def _case(V, B, variant=None):
    """(inputs, kwargs, reference result): the reference runs once per case, whatever the backend."""
    opts = dict(VARIANTS_BY_NAME[variant][2]) if variant else {}
    case_seed = V * 1000 + B + 7 * len(variant or "")
    inputs = make_tree(B, V, seed=case_seed, shape=opts.get("shape", "mixed"),
                       drafts=opts.get("drafts", "stochastic"), replacement=opts.get("replacement", False),
                       dtype=opts.get("dtype", torch.float32), ragged=opts.get("ragged", False))
    if "nn_dtype" in opts:
        inputs["num_nodes"] = inputs["num_nodes"].to(opts["nn_dtype"])
    if opts.get("strided"):
        inputs["target_probs"] = _strided(inputs["target_probs"])
        inputs["draft_probs"] = _strided(inputs["draft_probs"])
    kw = _rng_kw(opts, B, case_seed)
    expected = RT.verify_tree(**inputs, **with_generator(kw))
    check_structure(expected, inputs)
    return inputs, kw, expected


def _run_case(backend, V, B, variant=None):
    inputs, kw, expected = _case(V, B, variant)
    if (backend.interpreted or backend.name == "reference") and B > INTERP_ROWS:
        inputs, kw = first_rows(inputs, kw, INTERP_ROWS)
        expected = head(expected, INTERP_ROWS)
    d = backend.device
    res = T.verify_tree(**to_device(inputs, d), **to_device(with_generator(kw), d))
    assert res.tokens.device.type == d.type
    check_structure(res, inputs)
    assert_same(res, expected)


@pytest.mark.parametrize("V,B", GRID, ids=[f"V{V}-B{B}" for V, B in GRID])
def test_verify_tree_matches_reference(backend, V, B):
    _run_case(backend, V, B)


# Variants the Triton interpreter skips: shapes (the mixed grid cases have them all) and scalar
# seed/offset forms (the wrapper turns them into the same tensors as for the other backends).
INTERPRETED_SKIPS = {"shape_chain", "shape_star", "shape_rsdc22", "shape_rsdc222", "shape_rsdc31",
                     "shape_random", "offset_int", "seed_0d_tensor", "offset_0d_tensor"}


@pytest.mark.parametrize("variant", [v[0] for v in VARIANTS])
def test_verify_tree_matches_reference_variants(backend, variant):
    if backend.interpreted and variant in INTERPRETED_SKIPS:
        pytest.skip("Triton interpreter: covered by the grid and the other variants")
    V, B, _ = VARIANTS_BY_NAME[variant]
    _run_case(backend, V, B, variant)


def test_random_trees_exercise_every_path():
    # The equality tests are only meaningful if the interesting paths run: acceptance at depth >= 2,
    # nodes with >= 2 children all rejected (a correction from the residual after several
    # rejections), leaves reached (a bonus token), and the root rejected outright.
    for variant in ("shape_rsdc222", "shape_sbs", "replacement", "deterministic", "ragged", "bf16"):
        V, B, _ = VARIANTS_BY_NAME[variant]
        inputs, _, res = _case(V, B, variant)
        n = res.num_accepted
        stop = stop_nodes(res)
        par, nn = inputs["parents"], node_counts(inputs)
        n_kids = torch.tensor([int(((par[b] == stop[b]) & (torch.arange(par.shape[1]) < nn[b])
                                    & (torch.arange(par.shape[1]) > 0)).sum()) for b in range(B)])
        assert bool((n >= 2).any()), f"{variant}: no acceptance at depth 2"
        assert bool((n_kids >= 2).any()), f"{variant}: no node with >= 2 children all rejected"
        assert bool(((n > 0) & (n_kids == 0)).any()), f"{variant}: no leaf reached (bonus)"
        assert bool(((n == 0) & (n_kids >= 1)).any()), f"{variant}: the root never rejected"


@pytest.mark.parametrize("variant", ["shape_sbs", "ragged", "deterministic", "deterministic_dups",
                                     "fp16"])
def test_correction_never_a_rejected_sibling(variant):
    # Without replacement (and for one-hot drafts, either way) the rejected siblings are excluded
    # from the residual: a correction never repeats one of them.
    V, B, _ = VARIANTS_BY_NAME[variant]
    inputs, _, res = _case(V, B, variant)
    par, tok, nn = inputs["parents"], inputs["tokens"], node_counts(inputs)
    stop, n = stop_nodes(res), res.num_accepted
    seen = 0
    for b in range(B):
        kids = [i for i in range(1, int(nn[b])) if int(par[b, i]) == int(stop[b])]
        if kids:
            seen += 1
            assert int(res.tokens[b, n[b]]) not in {int(tok[b, i]) for i in kids}, b
    assert seen > 0


def test_padding_is_not_read(backend):
    # Nodes at or beyond num_nodes may hold anything (parents 7, tokens -5, NaN probabilities,
    # negative draft probabilities): check=True must accept them and the result equals the clean one.
    V, B = 7, 4 if backend.interpreted else 33
    clean = make_tree(B, V, seed=3, ragged=True)
    nn, N = clean["num_nodes"], clean["parents"].shape[1]
    pad = torch.arange(N)[None, :] >= nn[:, None]
    dirty = dict(clean)
    dirty["parents"] = clean["parents"].masked_fill(pad, 7)
    dirty["tokens"] = clean["tokens"].masked_fill(pad, -5)
    dirty["target_probs"] = clean["target_probs"].masked_fill(pad[..., None], float("nan"))
    dirty["draft_probs"] = clean["draft_probs"].masked_fill(pad[..., None], -1.0)
    expected = RT.verify_tree(**clean, seed=8)
    d = backend.device
    assert_same(T.verify_tree(**to_device(dirty, d), seed=8), expected)
    greedy_clean = dict(tokens=clean["tokens"], parents=clean["parents"],
                        target_logits=clean["target_probs"], num_nodes=nn)
    greedy_dirty = dict(greedy_clean, parents=dirty["parents"], tokens=dirty["tokens"],
                        target_logits=dirty["target_probs"])
    assert_same(T.verify_tree_greedy(**to_device(greedy_dirty, d)), RT.verify_tree_greedy(**greedy_clean))
    mask = T.tree_attention_mask(dirty["parents"].to(d), num_nodes=nn.to(d))
    assert torch.equal(mask.cpu(), brute_mask(clean["parents"], nn))
    # The draft rows of leaves are never read either, and check=True does not validate them.
    par, valid = clean["parents"], ~pad
    has_kids = torch.zeros(B, N, dtype=torch.bool)
    for b in range(B):
        kids_of = par[b, 1:int(nn[b])]
        has_kids[b, kids_of] = True
    leaf = valid & ~has_kids
    assert bool(leaf.any())
    leafy = dict(clean, draft_probs=clean["draft_probs"].masked_fill(leaf[..., None], float("nan")))
    for rep in (False, True):
        assert_same(T.verify_tree(**to_device(dict(leafy, replacement=rep), d), seed=8, check=False),
                    RT.verify_tree(**dict(clean, replacement=rep), seed=8))
        assert_same(T.verify_tree(**to_device(dict(leafy, replacement=rep), d), seed=8),
                    RT.verify_tree(**dict(clean, replacement=rep), seed=8))
    # ... while a NaN in the draft row of a node WITH children is caught.
    inner = dict(clean, draft_probs=clean["draft_probs"].masked_fill((valid & has_kids)[..., None],
                                                                      float("nan")))
    with pytest.raises(ValueError, match=r"draft_probs\[\d+, \d+\] \(node \d+\) must be a probability row"):
        T.verify_tree(**to_device(inner, d), seed=8)


def test_root_only_and_empty_batch(backend):
    d = backend.device
    V = 6
    p = torch.softmax(torch.randn(3, 1, V, generator=torch.Generator().manual_seed(0)), -1)
    parents = torch.full((3, 1), -1)
    tokens = torch.tensor([[4], [-3], [99]])  # the root's token is ignored, even out of range
    for q in (p, None):
        res = T.verify_tree(*to_device((tokens, parents, p, q), d), seed=2)
        assert res.num_accepted.tolist() == [0, 0, 0] and res.accepted_nodes.tolist() == [[-1]] * 3
        assert_same(res, RT.verify_tree(tokens, parents, p, q, seed=2))
    res = T.verify_tree_greedy(*to_device((tokens, parents, p), d))
    assert res.tokens[:, 0].tolist() == p.argmax(-1)[:, 0].tolist()
    # B = 0: empty results of the right shapes.
    empty = torch.empty(0, 4, dtype=torch.long, device=d)
    for res in (T.verify_tree(empty, empty, torch.empty(0, 4, V, device=d), seed=0),
                T.verify_tree_greedy(empty, empty, torch.empty(0, 4, V, device=d))):
        assert res.tokens.shape == (0, 4) and res.num_accepted.shape == (0,)
        assert res.accepted_nodes.shape == (0, 4)
    assert T.tree_attention_mask(empty).shape == (0, 4, 4)
    assert T.tree_position_ids(empty, 3).shape == (0, 4)


# ----------------------------------------------------------------------------------------------
# A chain is a tree: verify_tree on one child per node equals verify_chain bit for bit
# ----------------------------------------------------------------------------------------------


def make_chain_as_tree(B, K, V, *, seed, dtype=torch.float32, stochastic=True, ragged=False):
    """(chain inputs, tree inputs) of the same problem (test_chain's make_chain recipe)."""
    g = torch.Generator().manual_seed(seed)
    z = 3.0 * torch.randn(B, K + 1, V, generator=g)
    zq = z[:, :K] + 0.5 * torch.randn(B, K, V, generator=g)
    p, q = torch.softmax(z, -1).to(dtype), torch.softmax(zq, -1).to(dtype)
    if stochastic and K:
        x = torch.multinomial(q.float().reshape(-1, V), 1, generator=g).reshape(B, K)
    else:
        x = zq.argmax(-1)
    nd = torch.randint(0, K + 1, (B,), generator=g) if ragged else None
    if ragged:
        x = torch.where(torch.arange(K)[None, :] < nd[:, None], x, torch.full_like(x, -1))
    chain = dict(draft_tokens=x, target_probs=p, draft_probs=q if stochastic else None, num_draft=nd)
    root = torch.randint(V, (B, 1), generator=g)
    leaf_q = torch.full((B, 1, V), 1.0 / V, dtype=dtype)  # the leaf's draft row is never read
    tree = dict(tokens=torch.cat([root, x], 1), parents=torch.tensor(chain_shape(K + 1)).expand(B, K + 1),
                target_probs=p, draft_probs=torch.cat([q, leaf_q], 1) if stochastic else None,
                num_nodes=None if nd is None else nd + 1)
    return chain, tree


CHAIN_CASES = [
    # name, V, B, K, options, randomness
    ("stochastic", 111, 33, 5, {}, dict(seed=7)),
    ("deterministic", 111, 33, 5, dict(stochastic=False), dict(seed=7)),
    ("ragged", 111, 33, 5, dict(ragged=True), dict(seed=3, offset=8)),
    ("deterministic_ragged_V7", 7, 33, 4, dict(stochastic=False, ragged=True), dict(seed=1)),
    ("bf16_seed_tensor", 111, 33, 5, dict(dtype=torch.bfloat16), dict(seed="tensor", offset="tensor")),
    ("fp16_offset_tensor", 111, 33, 3, dict(dtype=torch.float16), dict(seed=5, offset="tensor")),
    ("V1", 1, 3, 3, {}, dict(seed=0)),
    ("K0", 7, 3, 0, {}, dict(seed=0)),
    ("V32000", 32000, 2, 4, dict(ragged=True), dict(seed="tensor")),
]


@pytest.mark.parametrize("replacement", [False, True])
@pytest.mark.parametrize("name,V,B,K,opts,rng", CHAIN_CASES, ids=[c[0] for c in CHAIN_CASES])
def test_chain_tree_equals_verify_chain(backend, name, V, B, K, opts, rng, replacement):
    if backend.interpreted:
        if replacement:
            pytest.skip("Triton interpreter: replacement=False only (the same path for one child)")
        B = min(B, INTERP_ROWS)
    if backend.name == "reference":
        B = min(B, 8)
        if V >= 32000 and replacement:
            pytest.skip("the reference: one V = 32000 chain is enough")
    chain, tree = make_chain_as_tree(B, K, V, seed=V + B + K, **opts)
    kw = _rng_kw(rng, B, 0)
    d = backend.device
    kw = to_device(kw, d)
    c = sk.verify_chain(**to_device(chain, d), **kw)
    t = T.verify_tree(**to_device(tree, d), replacement=replacement, **kw)
    check_structure(t, tree)
    assert torch.equal(t.tokens.cpu(), c.tokens.cpu()), (t.tokens, c.tokens)
    assert torch.equal(t.num_accepted.cpu(), c.num_accepted.cpu())
    n = c.num_accepted.cpu()
    nodes = torch.where(torch.arange(K + 1)[None, :] < n[:, None], torch.arange(1, K + 2)[None, :], -1)
    assert torch.equal(t.accepted_nodes.cpu(), nodes)


def test_chain_tree_greedy_equals_verify_chain_greedy(backend):
    B, K, V = (4 if backend.interpreted else 33), 5, 7
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (B, K + 1, V), generator=g).float()  # ties are frequent
    x = torch.where(torch.rand(B, K, generator=g) < 0.7, logits[:, :K].argmax(-1),
                    torch.randint(0, V, (B, K), generator=g))
    nd = torch.randint(0, K + 1, (B,), generator=g)
    d = backend.device
    c = sk.verify_chain_greedy(*to_device((x, logits), d), num_draft=nd.to(d))
    tokens = torch.cat([torch.zeros(B, 1, dtype=torch.long), x], 1)
    parents = torch.tensor(chain_shape(K + 1)).expand(B, K + 1)
    t = T.verify_tree_greedy(*to_device((tokens, parents, logits), d), num_nodes=(nd + 1).to(d))
    assert torch.equal(t.tokens.cpu(), c.tokens.cpu())
    assert torch.equal(t.num_accepted.cpu(), c.num_accepted.cpu())
    assert bool((c.num_accepted > 1).any())


# ----------------------------------------------------------------------------------------------
# verify_tree golden cases
# ----------------------------------------------------------------------------------------------


def onehot_rows(idx, V=PV):
    return torch.nn.functional.one_hot(torch.tensor(idx), V).float()


@pytest.mark.parametrize("mode", ["without_replacement", "with_replacement", "deterministic"])
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_golden_onehot_target_follows_the_path(backend, mode, seed):
    if backend.interpreted and seed:
        pytest.skip("Triton interpreter: one seed")
    # p one-hot at the token of the child drawn on paper, at every node: that child is accepted
    # with probability 1 (also when it is the SECOND child: the first one has p = 0), down to a
    # leaf, whose one-hot p gives the bonus. q: uniform (every drafted token has q > 0).
    d = backend.device
    parents = torch.tensor([PAPER_PARENTS] * 3)
    tokens = torch.tensor([PAPER_TOKENS] * 3)
    p = torch.stack([
        onehot_rows([5, 0, 1, 0, 0, 0, 6]),  # node 2 (second child) -> 4 -> 6 (leaf), bonus 6
        onehot_rows([3, 2, 1, 7, 0, 0, 0]),  # node 1 -> 3 (leaf), bonus 7
        onehot_rows([5, 0, 4, 0, 0, 3, 0]),  # node 2 -> 5 (its second child, a leaf), bonus 3
    ])
    q = None if mode == "deterministic" else torch.full((3, 7, PV), 1.0 / PV)
    res = T.verify_tree(*to_device((tokens, parents, p, q), d), replacement=mode == "with_replacement",
                        seed=seed)
    assert res.tokens.tolist() == [[5, 1, 0, 6, -1, -1, -1], [3, 2, 7, -1, -1, -1, -1],
                                   [5, 4, 3, -1, -1, -1, -1]]
    assert res.num_accepted.tolist() == [3, 2, 2]
    assert res.accepted_nodes.tolist() == [[2, 4, 6, -1, -1, -1, -1], [1, 3, -1, -1, -1, -1, -1],
                                           [2, 5, -1, -1, -1, -1, -1]]


@pytest.mark.parametrize("mode", ["without_replacement", "with_replacement", "deterministic"])
def test_golden_zero_target_at_children_rejects_at_root(backend, mode):
    # p = 0 at every child token of the root: all are rejected, and the correction lies in p's
    # support (never one of the rejected siblings).
    d = backend.device
    B, V = (8 if backend.interpreted else 64), 6
    parents = torch.tensor([[-1, 0, 0, 0, 1]] * B)
    tokens = torch.tensor([[0, 1, 3, 4, 2]] * B)
    p = torch.full((B, 5, V), 1.0 / V)
    p[:, 0] = torch.tensor([0.3, 0.0, 0.3, 0.0, 0.0, 0.4])
    q = torch.softmax(torch.randn(B, 5, V, generator=torch.Generator().manual_seed(0)), -1)
    q = None if mode == "deterministic" else q
    res = T.verify_tree(*to_device((tokens, parents, p, q), d), replacement=mode == "with_replacement",
                        seed=3)
    assert res.num_accepted.tolist() == [0] * B
    assert set(res.tokens[:, 0].tolist()) <= {0, 2, 5}
    assert len(set(res.tokens[:, 0].tolist())) > 1
    assert bool((res.tokens[:, 1:] == -1).all()) and bool((res.accepted_nodes == -1).all())


def test_golden_p_equals_q_single_child_always_accepts(backend):
    # q == p at every node of a chain (tokens drawn from q): u * q(x) < p(x) for every u < 1.
    g = torch.Generator().manual_seed(0)
    B, N, V = (4 if backend.interpreted else 16), 5, 9
    p = torch.softmax(torch.randn(B, N, V, generator=g), -1)
    x = torch.multinomial(p.reshape(-1, V), 1, generator=g).reshape(B, N)
    parents = torch.tensor(chain_shape(N)).expand(B, N)
    d = backend.device
    for replacement in (False, True):
        res = T.verify_tree(*to_device((x, parents, p, p), d), replacement=replacement, seed=3)
        assert res.num_accepted.tolist() == [N - 1] * B
        assert torch.equal(res.tokens[:, :N - 1].cpu(), x[:, 1:])


def test_golden_deterministic_second_child(backend):
    # Deterministic drafts (top-2 of a drafter): p one-hot at the SECOND child's token.
    d = backend.device
    V = 5
    parents = torch.tensor([[-1, 0, 0], [-1, 0, 0]])
    tokens = torch.tensor([[0, 1, 3], [0, 4, 2]])
    p = torch.stack([onehot_rows([3, 0, 2], V), onehot_rows([2, 1, 4], V)])
    for seed in range(4):
        res = T.verify_tree(*to_device((tokens, parents, p), d), seed=seed)
        assert res.tokens.tolist() == [[3, 2, -1], [2, 4, -1]]
        assert res.accepted_nodes.tolist() == [[2, -1, -1], [2, -1, -1]]


def test_docstring_example(backend):
    d = backend.device
    parents = torch.tensor([[-1, 0, 0, 1, 1]])
    tokens = torch.tensor([[0, 3, 5, 1, 2]])
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(1, 5, 8, generator=g), -1)
    q = torch.softmax(torch.randn(1, 5, 8, generator=g), -1)
    out = T.verify_tree(*to_device((tokens, parents, p, q), d), seed=0)
    assert out.tokens.shape == (1, 5) and int(out.num_accepted[0]) <= 2
    assert_same(out, RT.verify_tree(tokens, parents, p, q, seed=0))
