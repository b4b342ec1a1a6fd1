"""sampling_probs in Triton: temperature, top-k, top-p per row, in that order.

Semantics of ``specdec_kernels.reference.sampling``: x = logits / T (correctly rounded float32
division), softmax; top-k keeps x >= the k-th largest x (0 or >= V = off); top-p keeps the
probabilities p >= tau, where tau is the smallest probability whose strictly-larger mass is
< top_p (ties are never split); the kept probabilities are renormalised.

Design: one program per row (the GPU has R rows of work, each a few passes over V). No sort and
no [R, V] scratch besides the output: the output row first holds x, then the probabilities, so
every pass after the first reads 4 bytes per element, mostly from L2 (a 128K-vocabulary row is
512 KB). The thresholds are found by bisection over float32 bit patterns (the order of
non-negative floats is the order of their int32 bits; negative ones are mapped by flipping the
magnitude bits): top-k counts the elements >= a candidate, top-p sums the mass strictly above one,
about 31 passes each, and only for rows that use the filter. Masses are accumulated in float64, as
the reference's cumulative sum is, so that the top-p cut agrees with it up to the float32 rounding
of the probabilities themselves.
"""

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .._backend import triton_interpret

# Ordered int32 key of -inf: (0xFF800000 as int32) ^ 0x7FFFFFFF. Every float32 but NaN is >= it.
_NEG_INF_KEY = tl.constexpr(-2139095041)
_POS_INF_BITS = tl.constexpr(0x7F800000)


@triton.jit
def _key_to_float(key):
    """Inverse of the order-preserving map float32 -> int32 (negative floats: magnitude flipped)."""
    k = key.to(tl.int32)
    return tl.where(k < 0, k ^ 0x7FFFFFFF, k).to(tl.float32, bitcast=True)


@triton.jit
def _exp(x, PRECISE: tl.constexpr):
    if PRECISE:
        # libdevice expf (2 ulp): tl.exp is ex2.approx(x * log2 e), whose error grows with |x|
        # and would move probabilities (and hence top-p cuts) further from the reference's.
        return libdevice.exp(x)
    else:
        return tl.exp(x)  # interpreter: numpy's exp (libdevice is not available there)


@triton.jit
def _sampling_probs_kernel(logits_ptr, out_ptr, temp_ptr, topk_ptr, topp_ptr, R, V,
                           ROWS: tl.constexpr, BLOCK: tl.constexpr, PRECISE: tl.constexpr):
    # Tiles are [ROWS, BLOCK]: ROWS is 1 on the GPU; the interpreter packs rows into one program
    # because it pays per executed op, not per element.
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rm = r < R
    T = tl.load(temp_ptr + r, mask=rm, other=1.0)
    k = tl.load(topk_ptr + r, mask=rm, other=0)
    top_p = tl.load(topp_ptr + r, mask=rm, other=1.0)
    lrow = logits_ptr + r[:, None] * V
    orow = out_ptr + r[:, None] * V
    cols = tl.arange(0, BLOCK)[None, :]

    # Every pass accumulates per lane and reduces across the tile once at its end: a reduction
    # per chunk would put a cross-warp barrier inside the loop and stall its pipelined loads.

    # Pass 1: x = logits / T into the output row (read once in the input dtype, upcast before any
    # math) and the row maximum.
    mx_acc = tl.full((ROWS, BLOCK), float("-inf"), tl.float32)
    for start in range(0, V, BLOCK):
        offs = start + cols
        m = rm[:, None] & (offs < V)
        x = tl.load(lrow + offs, mask=m, other=float("-inf")).to(tl.float32)
        x = tl.math.div_rn(x, T[:, None])  # Triton's `/` is approximate on NVIDIA; T must be exact
        tl.store(orow + offs, x, mask=m)
        mx_acc = tl.maximum(mx_acc, x)
    mx = tl.max(mx_acc, axis=1)
    tl.debug_barrier()  # later passes read what other threads of the program wrote
    mx = tl.where(rm, mx, 0.0)  # padding rows: no -inf - -inf below

    # Top-k: the largest key t with count(x >= t) >= k is the k-th largest x. Invariant:
    # count(>= lo) >= k > count(>= hi). Rows without top-k start converged at lo = key(-inf).
    active_k = rm & (k > 0) & (k < V)
    mx_bits = mx.to(tl.int32, bitcast=True)
    mx_key = tl.where(mx == 0.0, 0, tl.where(mx_bits < 0, mx_bits ^ 0x7FFFFFFF, mx_bits))
    lo = tl.full((ROWS,), _NEG_INF_KEY, tl.int64)
    hi = tl.where(active_k, mx_key.to(tl.int64) + 1, _NEG_INF_KEY + 1)
    while tl.max(hi - lo, axis=0) > 1:
        go = hi - lo > 1
        mid = lo + (hi - lo) // 2
        # Comparing floats against the float of the key is the key order (+0 and -0 both count).
        t = _key_to_float(mid)[:, None]
        cnt_acc = tl.zeros((ROWS, BLOCK), tl.int32)
        for start in range(0, V, BLOCK):
            offs = start + cols
            m = rm[:, None] & (offs < V)
            x = tl.load(orow + offs, mask=m, other=float("-inf"))
            cnt_acc += (m & (x >= t)).to(tl.int32)
        enough = tl.sum(cnt_acc, axis=1) >= k
        lo = tl.where(go & enough, mid, lo)
        hi = tl.where(go & ~enough, mid, hi)
    kth = _key_to_float(lo)[:, None]  # -inf when top-k is off: keeps everything

    # Softmax over the kept tokens. float64 sum: the normaliser's rounding would otherwise shift
    # every mass the top-p cut compares against top_p.
    s_acc = tl.zeros((ROWS, BLOCK), tl.float64)
    for start in range(0, V, BLOCK):
        offs = start + cols
        m = rm[:, None] & (offs < V)
        x = tl.load(orow + offs, mask=m, other=float("-inf"))
        e = tl.where(m & (x >= kth), _exp(x - mx[:, None], PRECISE), 0.0)
        s_acc += e.to(tl.float64)
    s_row = tl.where(rm, tl.sum(s_acc, axis=1).to(tl.float32), 1.0)
    for start in range(0, V, BLOCK):
        offs = start + cols
        m = rm[:, None] & (offs < V)
        x = tl.load(orow + offs, mask=m, other=float("-inf"))
        p = tl.where(x >= kth, _exp(x - mx[:, None], PRECISE) / s_row[:, None], 0.0)
        tl.store(orow + offs, p, mask=m)
    tl.debug_barrier()

    # Top-p: tau = the smallest t with mass(p > t) < top_p is a probability of the row (the mass
    # only changes at those), so p >= tau keeps exactly the runs whose preceding mass is < top_p.
    # Non-negative floats order like their bits. Invariant: mass(> hi) < top_p <= mass(> lo),
    # except when the whole mass is < top_p (rounding), where it converges to keeping all. The
    # largest probability is exp(0) / s, so hi starts a few ulp (division rounding) above it.
    active_p = rm & (top_p < 1.0)
    p_max_bits = (1.0 / s_row).to(tl.int32, bitcast=True).to(tl.int64)
    lo = tl.where(active_p, 0, -1).to(tl.int64)
    hi = tl.where(active_p, tl.minimum(p_max_bits + 8, _POS_INF_BITS), 0).to(tl.int64)
    while tl.max(hi - lo, axis=0) > 1:
        go = hi - lo > 1
        mid = lo + (hi - lo) // 2
        t = mid.to(tl.int32).to(tl.float32, bitcast=True)[:, None]
        mass_acc = tl.zeros((ROWS, BLOCK), tl.float64)
        for start in range(0, V, BLOCK):
            offs = start + cols
            m = rm[:, None] & (offs < V)
            p = tl.load(orow + offs, mask=m, other=0.0)
            mass_acc += tl.where(p > t, p, 0.0).to(tl.float64)
        below = tl.sum(mass_acc, axis=1) < top_p.to(tl.float64)
        hi = tl.where(go & below, mid, hi)
        lo = tl.where(go & ~below, mid, lo)
    if tl.max(active_p.to(tl.int32), axis=0) > 0:
        tau = hi.to(tl.int32).to(tl.float32, bitcast=True)[:, None]  # +0.0 when off: keeps all
        s_acc = tl.zeros((ROWS, BLOCK), tl.float64)
        for start in range(0, V, BLOCK):
            offs = start + cols
            m = rm[:, None] & (offs < V)
            p = tl.load(orow + offs, mask=m, other=0.0)
            s_acc += tl.where(p >= tau, p, 0.0).to(tl.float64)
        s32 = tl.where(active_p, tl.sum(s_acc, axis=1).to(tl.float32), 1.0)[:, None]
        for start in range(0, V, BLOCK):
            offs = start + cols
            m = rm[:, None] & (offs < V)
            p = tl.load(orow + offs, mask=m, other=0.0)
            tl.store(orow + offs, tl.where(p >= tau, p / s32, 0.0), mask=m)


def sampling_probs(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                   top_p: torch.Tensor) -> torch.Tensor:
    """Triton sampling_probs on the canonical arguments (``contract.sampling.SamplingProbsArgs``,
    checked by ``contract.sampling.sampling_probs_args``).

    logits [R, V] float32/float16/bfloat16, temperature [R] float32 (> 0), top_k [R] int64 (0 or
    >= V = off), top_p [R] float32 in (0, 1] (1 = off). Returns probs [R, V] float32.
    """
    R, V = logits.shape
    out = torch.empty((R, V), dtype=torch.float32, device=logits.device)
    if R == 0 or V == 0:
        return out
    logits = logits.contiguous()
    temperature = temperature.contiguous()
    top_k = top_k.contiguous()
    top_p = top_p.contiguous()
    if triton_interpret():
        # Per-op cost: one tile spans the row, many rows per program.
        BLOCK = max(16, min(triton.next_power_of_2(V), 32768))
        ROWS = min(triton.next_power_of_2(R), max(1, 2**17 // BLOCK))
        warps = 4
    else:
        # Each row is a sequence of dependent passes on one SM, bound by L2 latency per chunk, so
        # wide tiles with many warps (more loads in flight, fewer chunks per pass) win: on an H100,
        # top-k + top-p over V = 128256 took 1082 us with 4096 x 8 warps, 810 us with 8192 x 16 and
        # 510 us with 16384 x 16 (R = 1; 1413 / 903 / 563 us at R = 64). The row stays in L2
        # between passes.
        BLOCK = max(16, min(triton.next_power_of_2(V), 16384))
        ROWS = 1
        warps = 16 if BLOCK >= 8192 else 8 if BLOCK >= 4096 else 4
    _sampling_probs_kernel[(triton.cdiv(R, ROWS),)](
        logits, out, temperature, top_k, top_p, R, V,
        ROWS=ROWS, BLOCK=BLOCK, PRECISE=not triton_interpret(), num_warps=warps)
    return out


COMPILE_CHECKS = [
    (
        _sampling_probs_kernel,
        {"logits_ptr": "*bf16", "out_ptr": "*fp32", "temp_ptr": "*fp32", "topk_ptr": "*i64",
         "topp_ptr": "*fp32", "R": "i32", "V": "i32"},
        {"ROWS": 1, "BLOCK": 16384, "PRECISE": True},
    ),
    (
        _sampling_probs_kernel,
        {"logits_ptr": "*fp32", "out_ptr": "*fp32", "temp_ptr": "*fp32", "topk_ptr": "*i64",
         "topp_ptr": "*fp32", "R": "i32", "V": "i32"},
        {"ROWS": 1, "BLOCK": 1024, "PRECISE": True},
    ),
]
