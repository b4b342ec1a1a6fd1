"""tree_attention_mask / tree_position_ids / tree_attention_bias: masks (dense and packed) and
positions against an independent brute force, golden trees, equality with the reference, the
bias by dtype and with SDPA."""

from __future__ import annotations

import pytest
import torch
from tree_cases import brute_mask, unpack_bits

# The tree ops by module: ``T.verify_tree`` is the public op (backend dispatch), ``RT.verify_tree`` the
# reference. (Kept in one place: the public names can replace ``T`` once they are exported.)
from specdec_kernels.ops import tree as T
from specdec_kernels.reference import tree as RT

TRITON_FAMILY = "tree"  # conftest: the triton params need specdec_kernels.triton.tree


# ----------------------------------------------------------------------------------------------
# Masks and positions against an independent brute force
# ----------------------------------------------------------------------------------------------


MASK_SIZES = [1, 2, 31, 32, 33, 64, 65, 100]


def random_valid_tree(B, N, *, seed, ragged=True):
    """Random recursive trees (some rows chains, some stars), ragged counts, -1 padding."""
    g = torch.Generator().manual_seed(seed)
    parents = torch.full((B, N), -1, dtype=torch.long)
    for b in range(B):
        kind = b % 3
        for i in range(1, N):
            parents[b, i] = i - 1 if kind == 0 else 0 if kind == 1 else \
                int(torch.randint(max(0, i - 4), i, (1,), generator=g))
    nn = None
    if ragged:
        nn = torch.randint(1, N + 1, (B,), generator=g)
        nn[0] = N
        parents = parents.masked_fill(torch.arange(N)[None, :] >= nn[:, None], -1)
    return parents, nn


@pytest.mark.parametrize("N", MASK_SIZES)
@pytest.mark.parametrize("ragged", [False, True])
def test_tree_attention_mask_brute_force(backend, N, ragged):
    if backend.interpreted and (N not in (1, 32, 65) or not ragged):
        pytest.skip("Triton interpreter: a few word boundaries, ragged rows")
    B = 3 if backend.interpreted else 7
    parents, nn = random_valid_tree(B, N, seed=N, ragged=ragged)
    expected = brute_mask(parents, nn)
    d = backend.device
    kw = dict(num_nodes=None if nn is None else nn.to(d))
    mask = T.tree_attention_mask(parents.to(d), **kw)
    assert mask.dtype == torch.bool and mask.shape == (B, N, N) and mask.device.type == d.type
    assert torch.equal(mask.cpu(), expected)
    packed = T.tree_attention_mask(parents.to(d), packed=True, **kw)
    assert packed.dtype == torch.int32 and packed.shape == (B, N, (N + 31) // 32)
    assert torch.equal(unpack_bits(packed, N), expected)
    if N >= 32:  # the chain row sees node 31: bit 31 set, a negative word
        assert bool((packed.cpu()[0, 31:, 0] < 0).all())
    pos = T.tree_position_ids(parents.to(d), 5, **kw)
    depth = expected.sum(-1) - 1
    assert pos.dtype == torch.long and torch.equal(pos.cpu(), depth + 5)
    prefix = torch.arange(B) * 3 + 1
    for pl in (prefix,) if backend.interpreted else (prefix, prefix.int(), torch.tensor(9)):
        pos = T.tree_position_ids(parents.to(d), pl.to(d), **kw)
        assert torch.equal(pos.cpu(), depth + pl.long().reshape(-1, 1).expand(B, 1))


def test_tree_mask_golden(backend):
    d = backend.device
    parents = torch.tensor([[-1, 0, 0, 1]], device=d)
    assert T.tree_attention_mask(parents).int().tolist() == [[[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0],
                                                              [1, 1, 0, 1]]]
    assert T.tree_position_ids(parents, 10).tolist() == [[10, 11, 11, 12]]
    assert T.tree_attention_mask(parents, packed=True).tolist() == [[[1], [3], [5], [11]]]
    # ragged: padding rows see only themselves, at depth 0
    parents = torch.tensor([[-1, 0, 1, 2], [-1, 0, -1, -1]], device=d)
    nn = torch.tensor([4, 2], device=d)
    mask = T.tree_attention_mask(parents, num_nodes=nn).int().tolist()
    assert mask[1] == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert T.tree_position_ids(parents, 0, num_nodes=nn).tolist() == [[0, 1, 2, 3], [0, 1, 0, 0]]


def test_tree_mask_matches_reference(backend):
    parents, nn = random_valid_tree(5, 40, seed=1)
    d = backend.device
    for packed in (False, True):
        assert torch.equal(T.tree_attention_mask(parents.to(d), num_nodes=nn.to(d), packed=packed).cpu(),
                           RT.tree_attention_mask(parents, num_nodes=nn, packed=packed))
    assert torch.equal(T.tree_position_ids(parents.to(d), 7, num_nodes=nn.to(d)).cpu(),
                       RT.tree_position_ids(parents, 7, num_nodes=nn))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tree_attention_bias(backend, dtype):
    d = backend.device
    B, N, P = 3, 9, 4
    parents, nn = random_valid_tree(B, N, seed=2)
    prefix_mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]])
    tree = brute_mask(parents, nn)
    lo = torch.finfo(dtype).min
    for pm in (None, prefix_mask, prefix_mask.bool()):
        bias = T.tree_attention_bias(parents.to(d), P, num_nodes=nn.to(d),
                                     prefix_mask=None if pm is None else pm.to(d), dtype=dtype)
        assert bias.shape == (B, 1, N, P + N) and bias.dtype == dtype and bias.device.type == d.type
        vis_prefix = torch.ones(B, P, dtype=torch.bool) if pm is None else pm.bool()
        visible = torch.cat([vis_prefix[:, None, :].expand(B, N, P), tree], -1)[:, None]
        assert set(bias.cpu().float().unique().tolist()) <= {0.0, float(lo)}
        assert torch.equal(bias.cpu() == 0, visible)
    # docstring example
    m = T.tree_attention_bias(torch.tensor([[-1, 0, 0]], device=d), 2)
    assert (m[0, 0] == 0).int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 1]]
    assert T.tree_attention_bias(torch.tensor([[-1]], device=d), 0).shape == (1, 1, 1, 1)


def test_tree_attention_bias_with_sdpa(backend):
    # The bias is what a Hugging Face model needs: SDPA over (prefix + tree) with it gives, for each
    # node, the attention of that node over the visible prefix and its ancestor path alone.
    d = backend.device
    B, N, P, H, D = 3, 12, 5, 2, 8
    parents, nn = random_valid_tree(B, N, seed=3)
    prefix_mask = torch.tensor([[1] * P, [0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, N, D, generator=g)
    k = torch.randn(B, H, P + N, D, generator=g)
    v = torch.randn(B, H, P + N, D, generator=g)
    bias = T.tree_attention_bias(parents.to(d), P, num_nodes=nn.to(d), prefix_mask=prefix_mask.to(d))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias.cpu())
    par = parents.tolist()
    for b in range(B):
        for i in range(N):
            path = [i]
            while i < int(nn[b]) and path[-1] > 0:
                path.append(par[b][path[-1]])
            cols = [j for j in range(P) if prefix_mask[b, j]] + [P + j for j in sorted(path)]
            ref_out = torch.nn.functional.scaled_dot_product_attention(
                q[b, :, i:i + 1], k[b, :, cols], v[b, :, cols])
            torch.testing.assert_close(out[b, :, i:i + 1], ref_out, rtol=1e-5, atol=1e-5)
