"""verify_chain: determinism and the seed/offset contract (same seed and offset give the same
result, any change gives another; per-request seeds follow the request across batch positions;
an int seed gives each row its own stream; seed=None draws from a generator)."""

from __future__ import annotations

import pytest
import torch
from chain_cases import _varied_case
from helpers import to_device

import specdec_kernels as sk
from specdec_kernels import VERIFY_CHAIN_OFFSET_STRIDE as STRIDE
from specdec_kernels.testing import assert_same

TRITON_FAMILY = "chain"  # conftest: the triton params need specdec_kernels.triton.chain


# ----------------------------------------------------------------------------------------------
# Determinism and the seed/offset contract
# ----------------------------------------------------------------------------------------------


def test_same_seed_offset_identical(backend):
    x, p, q = to_device(_varied_case(), backend.device)
    a = sk.verify_chain(x, p, q, seed=5, offset=6)
    b = sk.verify_chain(x, p, q, seed=5, offset=6)
    assert_same(a, b)
    s = torch.arange(33, device=backend.device)
    assert_same(sk.verify_chain(x, p, q, seed=s, offset=6),
                sk.verify_chain(x, p, q, seed=s.clone(), offset=6))


@pytest.mark.parametrize("change", ["seed", "offset_stride", "seed_tensor"])
def test_different_randomness_differs(backend, change):
    x, p, q = to_device(_varied_case(), backend.device)
    base = sk.verify_chain(x, p, q, seed=5, offset=0)
    if change == "seed":
        other = sk.verify_chain(x, p, q, seed=6, offset=0)
    elif change == "offset_stride":
        other = sk.verify_chain(x, p, q, seed=5, offset=STRIDE)
    else:
        other = sk.verify_chain(x, p, q, seed=torch.full((33,), 5, device=backend.device), offset=0)
    assert not torch.equal(base.tokens, other.tokens)


def test_seed_tensor_result_independent_of_batch_position(backend):
    # A request with its own seed draws the same numbers wherever it sits in the batch.
    x, p, q = _varied_case(B=8)
    seeds = torch.arange(8, dtype=torch.long) * 101 + 7
    offs = torch.arange(8, dtype=torch.long) * STRIDE
    d = backend.device
    base = sk.verify_chain(*to_device((x, p, q), d), seed=seeds.to(d), offset=offs.to(d))
    perm = torch.tensor([5, 2, 7, 0, 1, 6, 3, 4])  # request 0 moves to row 3, request 5 to row 0
    moved = sk.verify_chain(*to_device((x[perm], p[perm], q[perm]), d), seed=seeds[perm].to(d),
                            offset=offs[perm].to(d))
    assert_same(moved, sk.ChainResult(*(t.cpu()[perm] for t in base)))
    # Alone in a batch of one, it is still the same.
    alone = sk.verify_chain(*to_device((x[5:6], p[5:6], q[5:6]), d), seed=seeds[5:6].to(d),
                            offset=offs[5:6].to(d))
    assert torch.equal(alone.tokens.cpu(), base.tokens.cpu()[5:6])


def test_int_seed_gives_rows_distinct_streams(backend):
    # The same request in every row: an int seed gives row b stream b (rows differ), equal seeds in
    # a tensor give every row the same stream (rows identical).
    x, p, q = _varied_case(B=1)
    B = 16
    x, p, q = (t.expand(B, *t.shape[1:]).contiguous() for t in (x, p, q))
    d = backend.device
    rows = sk.verify_chain(*to_device((x, p, q), d), seed=3).tokens.cpu()
    assert len({tuple(r) for r in rows.tolist()}) > 1
    same = sk.verify_chain(*to_device((x, p, q), d), seed=torch.full((B,), 3, device=d)).tokens.cpu()
    assert len({tuple(r) for r in same.tolist()}) == 1


def test_seed_none_uses_generator(backend):
    x, p, q = to_device(_varied_case(), backend.device)
    a = sk.verify_chain(x, p, q, generator=torch.Generator().manual_seed(3))
    b = sk.verify_chain(x, p, q, generator=torch.Generator().manual_seed(3))
    assert_same(a, b)
    # and seed=None without a generator draws from torch's default generator
    torch.manual_seed(0)
    c = sk.verify_chain(x, p, q)
    torch.manual_seed(0)
    assert_same(c, sk.verify_chain(x, p, q))
