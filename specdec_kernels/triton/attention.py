"""Triton tree attention: flash-decoding over the cached prefix plus one masked tile for the tree.

One program owns BLOCK_M query rows of one KV head (the G query heads that share it, times the N
tree nodes, flattened: GQA reads each KV tile once for all its query heads) and one split of the
prefix. The prefix needs no mask (every node sees all of it), so its tiles are plain online
softmax; the LAST split also folds in the tree tile, whose visibility comes straight from the
packed int32 mask words (no dense [N, L + N] mask exists anywhere). Splits write (m, l, acc)
partials that a log-sum-exp combine merges, so long prefixes spread over the whole GPU even at
batch 1.

Arithmetic: scores and the softmax in float32; 16-bit inputs go through tl.dot in their own dtype
with float32 accumulation (their products are exact in float32), float32 inputs through IEEE
float32 dots (not TF32). Under the interpreter everything is upcast to float32 first (its bf16
arithmetic is wrong).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import triton_interpret


@triton.jit
def _attend_tile(q, k, v, visible, scale, m_i, l_i, acc, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """One online-softmax step of q [M, D] over a key/value tile [T, D]; ``visible`` [M, T] or [1, T]."""
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = tl.where(visible, s * scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _tree_attention_kernel(
    q_ptr, kc_ptr, vc_ptr, kt_ptr, vt_ptr, mask_ptr, seqlens_ptr,
    acc_ptr, m_ptr, l_ptr,
    Hq, Hkv, G, N, W, split_len, num_m_tiles, scale,
    sq_b, sq_h, sq_n,
    skc_b, skc_h, skc_l, svc_b, svc_h, svc_l,
    skt_b, skt_h, skt_n, svt_b, svt_h, svt_n,
    D: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    mt = pid % num_m_tiles
    bh = pid // num_m_tiles
    kvh = bh % Hkv
    b = bh // Hkv

    r = mt * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = r < G * N
    head = kvh * G + r // N
    node = r % N
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D

    q = tl.load(q_ptr + b * sq_b + head[:, None] * sq_h + node[:, None] * sq_n + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    seqlen = tl.load(seqlens_ptr + b).to(tl.int32)
    start = split * split_len
    end = tl.minimum(start + split_len, seqlen)
    kc_base = kc_ptr + b * skc_b + kvh * skc_h
    vc_base = vc_ptr + b * svc_b + kvh * svc_h
    for l0 in range(start, end, BLOCK_L):
        cols = l0 + tl.arange(0, BLOCK_L)
        col_ok = cols < end
        kv_ok = col_ok[:, None] & d_ok[None, :]
        k = tl.load(kc_base + cols[:, None] * skc_l + d[None, :], mask=kv_ok, other=0.0)
        v = tl.load(vc_base + cols[:, None] * svc_l + d[None, :], mask=kv_ok, other=0.0)
        m_i, l_i, acc = _attend_tile(q, k, v, col_ok[None, :], scale, m_i, l_i, acc, UPCAST, IEEE)

    if split == NUM_SPLITS - 1:
        j = tl.arange(0, BLOCK_T)
        j_ok = j < N
        kt = tl.load(kt_ptr + b * skt_b + kvh * skt_h + j[:, None] * skt_n + d[None, :],
                     mask=j_ok[:, None] & d_ok[None, :], other=0.0)
        vt = tl.load(vt_ptr + b * svt_b + kvh * svt_h + j[:, None] * svt_n + d[None, :],
                     mask=j_ok[:, None] & d_ok[None, :], other=0.0)
        # bit j % 32 of word j // 32 of the node's mask row: only the bits, never a dense mask
        words = tl.load(mask_ptr + (b * N + node[:, None]) * W + j[None, :] // 32,
                        mask=row_ok[:, None] & j_ok[None, :], other=0)
        visible = ((words >> (j[None, :] % 32)) & 1) != 0
        m_i, l_i, acc = _attend_tile(q, kt, vt, visible, scale, m_i, l_i, acc, UPCAST, IEEE)

    # partial results of this split, rows (b, head, node)
    prow = ((b * Hq + head) * N + node) * NUM_SPLITS + split
    tl.store(m_ptr + prow, m_i, mask=row_ok)
    tl.store(l_ptr + prow, l_i, mask=row_ok)
    tl.store(acc_ptr + prow[:, None] * D + d[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(max(int(x), 1)))


def _num_splits(L: int, programs: int, block_l: int, device: torch.device) -> int:
    if L <= block_l:
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    # enough programs to fill the GPU twice, but no split shorter than 4 tiles
    return max(1, min(triton.cdiv(L, 4 * block_l), triton.cdiv(2 * sms, programs), 64))


def tree_attention(q, k_cache, v_cache, cache_seqlens, k_tree, v_tree, tree_mask,
                   scale: float) -> torch.Tensor:
    """The tree_attention op on its canonical arguments (``contract.attention.TreeAttentionArgs``):
    the output [B, Hq, N, D] in q's dtype. Values are not checked here (``_dispatch.call`` runs
    ``check_tree_attention_values`` first when asked)."""
    B, Hq, N, D = q.shape
    Hkv, L = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    interp = triton_interpret()
    BLOCK_D = _pow2(D)
    BLOCK_T = _pow2(N)
    BLOCK_M = min(_pow2(G * N), 64)
    BLOCK_L = 64 if interp else (64 if BLOCK_D <= 64 else 32)
    num_m_tiles = triton.cdiv(G * N, BLOCK_M)
    programs = B * Hkv * num_m_tiles
    splits = _num_splits(L, programs, BLOCK_L, q.device)
    split_len = triton.cdiv(triton.cdiv(max(L, 1), splits), BLOCK_L) * BLOCK_L
    # a kernel needs its innermost dimension contiguous; a sliced cache ([:, :, :L]) already is
    q, k_cache, v_cache, k_tree, v_tree = (t if t.stride(-1) == 1 else t.contiguous()
                                           for t in (q, k_cache, v_cache, k_tree, v_tree))
    mask = tree_mask.contiguous()
    seqlens = cache_seqlens.contiguous()
    rows = B * Hq * N
    acc = torch.empty(rows, splits, D, dtype=torch.float32, device=q.device)
    m = torch.empty(rows, splits, dtype=torch.float32, device=q.device)
    lse = torch.empty(rows, splits, dtype=torch.float32, device=q.device)
    if rows:
        _tree_attention_kernel[(programs, splits)](
            q, k_cache, v_cache, k_tree, v_tree, mask, seqlens, acc, m, lse,
            Hq, Hkv, G, N, mask.shape[-1], split_len, num_m_tiles, float(scale),
            q.stride(0), q.stride(1), q.stride(2),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            k_tree.stride(0), k_tree.stride(1), k_tree.stride(2),
            v_tree.stride(0), v_tree.stride(1), v_tree.stride(2),
            D=D, NUM_SPLITS=splits, BLOCK_M=BLOCK_M, BLOCK_L=BLOCK_L, BLOCK_D=BLOCK_D, BLOCK_T=BLOCK_T,
            UPCAST=interp, IEEE=q.dtype == torch.float32,
        )
    return combine_splits(acc, m, lse).reshape(B, Hq, N, D).to(q.dtype)


def combine_splits(acc: torch.Tensor, m: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741
    """Merge per-split (acc [R, S, D], m [R, S], l [R, S]) by log-sum-exp; rows that saw nothing -> 0."""
    if acc.shape[1] == 1:
        return acc[:, 0] / torch.where(l > 0, l, torch.ones_like(l))
    mx = m.amax(1, keepdim=True)
    w = torch.exp(m - mx)
    den = (l * w).sum(1)
    return (acc * w[..., None]).sum(1) / torch.where(den > 0, den, torch.ones_like(den))[:, None]


def _compile_signature(dtype: str) -> dict[str, str]:
    sig = {f"{n}_ptr": f"*{dtype}" for n in ("q", "kc", "vc", "kt", "vt")}
    sig.update({"mask_ptr": "*i32", "seqlens_ptr": "*i64"})
    sig.update({"acc_ptr": "*fp32", "m_ptr": "*fp32", "l_ptr": "*fp32"})
    sig.update({n: "i32" for n in ("Hq", "Hkv", "G", "N", "W", "split_len", "num_m_tiles")})
    sig["scale"] = "fp32"
    sig.update({n: "i64" for n in ("sq_b", "sq_h", "sq_n", "skc_b", "skc_h", "skc_l", "svc_b", "svc_h",
                                   "svc_l", "skt_b", "skt_h", "skt_n", "svt_b", "svt_h", "svt_n")})
    return sig


# one specialisation per arithmetic path: 16-bit tensor-core dots, IEEE float32 dots; Llama-7B heads
COMPILE_CHECKS = [
    (_tree_attention_kernel, _compile_signature(dt),
     {"D": 128, "NUM_SPLITS": 4, "BLOCK_M": 64, "BLOCK_L": 32, "BLOCK_D": 128, "BLOCK_T": 64,
      "UPCAST": False, "IEEE": ieee})
    for dt, ieee in (("fp16", False), ("bf16", False), ("fp32", True))
]
