"""verify_tree_greedy: equality with the reference on every backend (random trees with frequent
argmax matches, ties, duplicated siblings, ragged rows, dtypes), the matches the random trees
exercise, golden trees drawn by hand (the lowest-index sibling wins)."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import to_device
from tree_cases import (
    GRID,
    INTERP_ROWS,
    PAPER_PARENTS,
    PAPER_TOKENS,
    PV,
    check_structure,
    children_lists,
    first_rows,
    head,
    make_tree,
    node_counts,
)

# The tree ops by module: ``T.verify_tree`` is the public op (backend dispatch), ``RT.verify_tree`` the
# reference. (Kept in one place: the public names can replace ``T`` once they are exported.)
from specdec_kernels.ops import tree as T
from specdec_kernels.reference import tree as RT
from specdec_kernels.testing import assert_same

TRITON_FAMILY = "tree"  # conftest: the triton params need specdec_kernels.triton.tree


# ----------------------------------------------------------------------------------------------
# Greedy verification
# ----------------------------------------------------------------------------------------------


def make_greedy(B, V, *, seed, shape="mixed", dtype=torch.float32, ties=False, ragged=False):
    """Random verify_tree_greedy inputs: i.i.d. random children (duplicated siblings are frequent at
    small V); at every node with children, with probability 1/2 the argmax is put on a random
    child's token, so matches happen at every depth. ``ties``: small integer logits (many tied
    maxima; the token a child is matched by is then a tied max, not always the first)."""
    base = make_tree(B, V, seed=seed, shape=shape, replacement=True, ragged=ragged)
    g = torch.Generator().manual_seed(seed + 1)
    tokens, parents = base["tokens"], base["parents"]
    N = tokens.shape[1]
    logits = torch.randint(0, 3, (B, N, V), generator=g).float() if ties else \
        2.0 * torch.randn(B, N, V, generator=g)
    nn = node_counts(base)
    for b in range(B):
        kids = children_lists(parents[b, :int(nn[b])].tolist())
        for n, ks in enumerate(kids):
            if ks and float(torch.rand(1, generator=g)) < 0.5:
                c = ks[int(torch.randint(len(ks), (1,), generator=g))]
                logits[b, n, tokens[b, c]] = logits[b, n].max() + (0.0 if ties else 1.0)
    if V > 2:
        logits[0, 0, 1] = float("-inf")  # masked entries are ordinary values for argmax
    return dict(tokens=tokens, parents=parents, target_logits=logits.to(dtype), num_nodes=base["num_nodes"])


GREEDY_CASES = [(f"V{V}-B{B}", V, B, {}) for V, B in GRID] + [
    ("ragged", 111, 33, dict(ragged=True)),
    ("ties_V7", 7, 33, dict(ties=True)),
    ("ties_ragged_V111", 111, 33, dict(ties=True, ragged=True)),
    ("sbs", 7, 33, dict(shape="sbs")),
    ("rsdc222", 7, 33, dict(shape="rsdc222")),
    ("fp16", 111, 33, dict(dtype=torch.float16)),
    ("bf16_ragged", 111, 33, dict(dtype=torch.bfloat16, ragged=True)),
    ("bf16_V32000", 32000, 3, dict(dtype=torch.bfloat16)),  # bf16 over 32000 entries: many ties
]
GREEDY_BY_NAME = {c[0]: c[1:] for c in GREEDY_CASES}


@functools.cache
def _greedy_case(name):
    V, B, opts = GREEDY_BY_NAME[name]
    inputs = make_greedy(B, V, seed=V * 100 + B + len(name), **opts)
    expected = RT.verify_tree_greedy(**inputs)
    check_structure(expected, inputs)
    return inputs, expected


@pytest.mark.parametrize("name", list(GREEDY_BY_NAME))
def test_verify_tree_greedy_matches_reference(backend, name):
    inputs, expected = _greedy_case(name)
    if backend.interpreted and inputs["tokens"].shape[0] > INTERP_ROWS:
        inputs, _ = first_rows(inputs, {}, INTERP_ROWS)
        expected = head(expected, INTERP_ROWS)
    res = T.verify_tree_greedy(**to_device(inputs, backend.device))
    check_structure(res, inputs)
    assert_same(res, expected)


def test_random_greedy_trees_exercise_matches():
    for name in ("ragged", "ties_V7", "sbs", "rsdc222"):
        inputs, res = _greedy_case(name)
        assert bool((res.num_accepted >= 2).any()), name
        assert bool((res.num_accepted == 0).any()), name
    # duplicated siblings where the lowest index wins: some accepted node has an equal later sibling
    inputs, res = _greedy_case("rsdc222")
    par, tok = inputs["parents"], inputs["tokens"]
    dup = False
    for b in range(par.shape[0]):
        for j in range(int(res.num_accepted[b])):
            i = int(res.accepted_nodes[b, j])
            dup |= bool(((par[b, i + 1:] == par[b, i]) & (tok[b, i + 1:] == tok[b, i])).any())
    assert dup


def _logits_with_argmax(argmax_per_node, V=PV):
    """Logits [N, V] whose row n has its unique maximum at argmax_per_node[n]."""
    g = torch.Generator().manual_seed(len(argmax_per_node))
    lg = torch.rand(len(argmax_per_node), V, generator=g)
    for n, a in enumerate(argmax_per_node):
        lg[n, a] = 2.0
    return lg


def test_greedy_golden_paper_tree(backend):
    d = backend.device
    parents = torch.tensor([PAPER_PARENTS] * 5)
    tokens = torch.tensor([PAPER_TOKENS] * 5)
    ties_root = torch.zeros(PV)
    ties_root[[3, 5]] = 1.0  # tie between the two children's tokens: the smallest id (3) wins
    cases = [
        # argmax per node (0..6) -> expected tokens, num_accepted, accepted nodes
        # depth 2 via the second child: 5 (node 2) -> 1 (node 4) -> 0 (node 6, a leaf) -> bonus 6
        (_logits_with_argmax([5, 0, 1, 0, 0, 0, 6]), [5, 1, 0, 6], 3, [2, 4, 6]),
        (_logits_with_argmax([6, 0, 1, 0, 0, 0, 6]), [6], 0, []),  # no match at the root
        (_logits_with_argmax([3, 4, 1, 0, 0, 0, 6]), [3, 4], 1, [1]),  # match, then no match
        (_logits_with_argmax([3, 2, 1, 5, 0, 0, 6]), [3, 2, 5], 2, [1, 3]),  # leaf 3: bonus 5
        (torch.cat([ties_root[None], torch.zeros(PV)[None], _logits_with_argmax([0] * 5)]),
         [3, 0], 1, [1]),  # all-equal row at node 1: argmax 0, the child's token 2 does not match
    ]
    logits = torch.stack([c[0] for c in cases])
    res = T.verify_tree_greedy(*to_device((tokens, parents, logits), d))
    for b, (_, toks, n, nodes) in enumerate(cases):
        assert res.tokens[b].tolist() == toks + [-1] * (7 - len(toks)), b
        assert int(res.num_accepted[b]) == n
        assert res.accepted_nodes[b].tolist() == nodes + [-1] * (7 - len(nodes)), b
    # ragged: without node 6, node 4 is a leaf and its own argmax is the bonus
    res = T.verify_tree_greedy(*to_device((tokens[:1], parents[:1], logits[:1]), d),
                               num_nodes=torch.tensor([6], device=d))
    assert res.tokens[0].tolist() == [5, 1, 0, -1, -1, -1, -1]
    assert res.accepted_nodes[0].tolist() == [2, 4, -1, -1, -1, -1, -1]


def test_greedy_golden_duplicate_siblings(backend):
    # Siblings 1 and 3 both carry the argmax token 2: the lowest index (1) is accepted, so the bonus
    # is node 1's argmax (5), not node 3's (6).
    d = backend.device
    parents = torch.tensor([[-1, 0, 0, 0]])
    tokens = torch.tensor([[0, 2, 4, 2]])
    logits = _logits_with_argmax([2, 5, 0, 6])[None]
    res = T.verify_tree_greedy(*to_device((tokens, parents, logits), d))
    assert res.tokens.tolist() == [[2, 5, -1, -1]] and res.accepted_nodes.tolist() == [[1, -1, -1, -1]]
    # docstring example
    logits = torch.eye(4)[[1, 3, 0, 2]][None]
    res = T.verify_tree_greedy(*to_device((torch.tensor([[0, 2, 1, 3]]), torch.tensor([[-1, 0, 0, 2]]),
                                           logits), d))
    assert res.tokens.tolist() == [[1, 0, -1, -1]] and res.num_accepted.tolist() == [1]
    assert res.accepted_nodes.tolist() == [[2, -1, -1, -1]]
