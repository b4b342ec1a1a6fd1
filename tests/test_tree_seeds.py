"""verify_tree: determinism and the seed/offset contract (same seed and offset give the same result,
any change gives another; per-request seeds follow the request across batch positions; an int
seed gives each row its own stream; seed=None draws from a generator)."""

from __future__ import annotations

import pytest
import torch
from helpers import to_device
from tree_cases import STRIDE, children_lists, rsdc_shape

# The tree ops by module: ``T.verify_tree`` is the public op (backend dispatch). (Kept in one place:
# the public names can replace ``T`` once they are exported.)
from specdec_kernels.ops import tree as T
from specdec_kernels.testing import assert_same

TRITON_FAMILY = "tree"  # conftest: the triton params need specdec_kernels.triton.tree


# ----------------------------------------------------------------------------------------------
# Determinism and the seed/offset contract
# ----------------------------------------------------------------------------------------------


def _varied_case(B=33, V=111):
    """High-entropy outputs (nearly uniform p, q far from p) on 2-2 trees: draws differ."""
    g = torch.Generator().manual_seed(42)
    par = rsdc_shape((2, 2), 9)
    N = len(par)
    p = torch.softmax(0.3 * torch.randn(B, N, V, generator=g), -1)
    q = torch.softmax(torch.randn(B, N, V, generator=g), -1)
    tok = torch.zeros(B, N, dtype=torch.long)
    for n, kids in enumerate(children_lists(par)):
        if kids:
            tok[:, kids] = torch.stack([torch.multinomial(q[b, n], len(kids), generator=g) for b in range(B)])
    return tok, torch.tensor(par).expand(B, N).contiguous(), p, q


def test_same_seed_offset_identical(backend):
    x, par, p, q = to_device(_varied_case(B=4 if backend.interpreted else 33), backend.device)
    assert_same(T.verify_tree(x, par, p, q, seed=5, offset=6), T.verify_tree(x, par, p, q, seed=5, offset=6))
    s = torch.arange(x.shape[0], device=backend.device)
    assert_same(T.verify_tree(x, par, p, q, seed=s, offset=6),
                T.verify_tree(x, par, p, q, seed=s.clone(), offset=6))


@pytest.mark.parametrize("change", ["seed", "offset_stride", "seed_tensor"])
def test_different_randomness_differs(backend, change):
    x, par, p, q = to_device(_varied_case(B=4 if backend.interpreted else 33), backend.device)
    B = x.shape[0]
    base = T.verify_tree(x, par, p, q, seed=5, offset=0)
    if change == "seed":
        other = T.verify_tree(x, par, p, q, seed=6, offset=0)
    elif change == "offset_stride":
        other = T.verify_tree(x, par, p, q, seed=5, offset=STRIDE)
    else:
        other = T.verify_tree(x, par, p, q, seed=torch.full((B,), 5, device=backend.device), offset=0)
    assert not torch.equal(base.tokens, other.tokens)


def test_seed_tensor_result_independent_of_batch_position(backend):
    # A request with its own seed draws the same numbers wherever it sits in the batch.
    B = 4 if backend.interpreted else 8
    x, par, p, q = _varied_case(B=B)
    seeds = torch.arange(B, dtype=torch.long) * 101 + 7
    offs = torch.arange(B, dtype=torch.long) * STRIDE
    d = backend.device
    base = T.verify_tree(*to_device((x, par, p, q), d), seed=seeds.to(d), offset=offs.to(d))
    perm = torch.tensor([3, 2, 0, 1] if backend.interpreted else [5, 2, 7, 0, 1, 6, 3, 4])
    moved = T.verify_tree(*to_device((x[perm], par[perm], p[perm], q[perm]), d), seed=seeds[perm].to(d),
                          offset=offs[perm].to(d))
    assert_same(moved, T.TreeResult(*(t.cpu()[perm] for t in base)))
    alone = T.verify_tree(*to_device((x[3:4], par[3:4], p[3:4], q[3:4]), d), seed=seeds[3:4].to(d),
                          offset=offs[3:4].to(d))
    assert_same(alone, T.TreeResult(*(t.cpu()[3:4] for t in base)))
    # an int seed gives row b stream b: the same request in every row gives different rows, equal
    # seeds in a tensor give every row the same stream
    R = 6 if backend.interpreted else 16
    one = to_device(tuple(t[:1].expand(R, *t.shape[1:]).contiguous() for t in (x, par, p, q)), d)
    rows = T.verify_tree(*one, seed=3).tokens.cpu()
    assert len({tuple(r) for r in rows.tolist()}) > 1
    same = T.verify_tree(*one, seed=torch.full((R,), 3, device=d)).tokens.cpu()
    assert len({tuple(r) for r in same.tolist()}) == 1


def test_seed_none_uses_generator(backend):
    x, par, p, q = to_device(_varied_case(B=3 if backend.interpreted else 8), backend.device)
    a = T.verify_tree(x, par, p, q, generator=torch.Generator().manual_seed(3))
    b = T.verify_tree(x, par, p, q, generator=torch.Generator().manual_seed(3))
    assert_same(a, b)
    torch.manual_seed(0)
    c = T.verify_tree(x, par, p, q)
    torch.manual_seed(0)
    assert_same(c, T.verify_tree(x, par, p, q))
