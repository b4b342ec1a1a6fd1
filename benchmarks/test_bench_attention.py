"""Microbenchmark of tree_attention against what engines do today and against the cost floor.

Rows (conftest.attention_cases; B = batch, K = tree nodes N, V = prefix length L in the results CSV;
Llama-7B heads: 32 query and KV heads of 128 on CUDA, 8 on the CPU):
  tree_attention                     each specdec backend (fused: prefix + packed tree mask)
  tree_attention[sdpa-dense] (torch) PyTorch SDPA over the same keys with the dense [N, L + N] mask
  tree_attention[decode] (torch)     plain decode attention: ONE query token per head over L + 1 keys,
                                     the cost floor of reading the cache once
Goal on a GPU (issue 8): within 1.2x of [decode] at the same L, and 1.5x faster than [sdpa-dense].
Bytes that must move: the valid K/V cache read once, tree K/V, q and the output once.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

import specdec_kernels as sk
import specdec_kernels.testing as skt


def _heads(device: str) -> tuple[int, int, int]:
    return (32, 32, 128) if device == "cuda" else (8, 8, 128)


def _inputs(case):
    Hq, Hkv, D = _heads(case.device)
    B, N, L = case.B, case.K, case.V
    dt = getattr(torch, case.dtype)
    g = torch.Generator().manual_seed(0)
    parents = torch.full((B, N), -1, dtype=torch.long)
    for i in range(1, N):  # a bushy tree: node i hangs under node (i - 1) // 2
        parents[:, i] = (i - 1) // 2

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dt).to(case.device)

    return dict(q=rnd(B, Hq, N, D), k_cache=rnd(B, Hkv, L, D), v_cache=rnd(B, Hkv, L, D),
                cache_seqlens=torch.full((B,), L, dtype=torch.int32, device=case.device),
                k_tree=rnd(B, Hkv, N, D), v_tree=rnd(B, Hkv, N, D),
                tree_mask=sk.tree_attention_mask(parents.to(case.device), packed=True)), parents


@pytest.mark.bench_op("tree_attention")
def test_tree_attention(benchmark, case, bench: types.ModuleType) -> None:
    a, parents = _inputs(case)
    B, N, L = case.B, case.K, case.V
    Hq, Hkv, D = _heads(case.device)
    visible = torch.cat([torch.ones(B, N, L, dtype=torch.bool, device=case.device),
                         sk.tree_attention_mask(parents.to(case.device))], -1)[:, None]
    k = torch.cat([a["k_cache"], a["k_tree"]], 2)
    v = torch.cat([a["v_cache"], a["v_tree"]], 2)
    want = F.scaled_dot_product_attention(a["q"].float(), k.float(), v.float(), attn_mask=visible)
    tol = 2e-5 if case.dtype == "float32" else 2e-2

    if case.variant == "decode":
        q1 = a["q"][:, :, :1]

        def call():
            return F.scaled_dot_product_attention(q1, k[:, :, : L + 1], v[:, :, : L + 1])

        def check(out):
            assert out.shape == (B, Hq, 1, D)

        nbytes = skt.attention_bytes(B, Hq, Hkv, 1, L + 1, D, case.dtype)
    else:
        if case.variant == "sdpa-dense":
            def call():
                return F.scaled_dot_product_attention(a["q"], k, v, attn_mask=visible)
        else:
            def call():
                return sk.tree_attention(**a, check=False)

        def check(out):
            torch.testing.assert_close(out.float(), want, rtol=tol, atol=tol)

        nbytes = skt.attention_bytes(B, Hq, Hkv, N, L + N, D, case.dtype)

    bench.run_benchmark(benchmark, case, call, check=check, bytes_of=lambda o: nbytes,
                        extra={"heads": f"{Hq}x{Hkv}x{D}", "nodes": N, "prefix": L})
