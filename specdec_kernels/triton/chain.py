"""Chain verification (docs/algorithms.md §1 and §9) in Triton: kernels and launchers.

Bit-identical to ``specdec_kernels.reference.chain`` and csrc/cpu/chain.cpp: same acceptance rule
``u * q < p`` in float32 (u = slot-0 uniform of element = position), same exponential race (key
``r / -log(u)`` correctly rounded, u = slot-1 uniform of element = vocabulary index, ties to the
smaller index), same residual rules and fallbacks.

Design (a verify call should cost little more than reading the one row per request it needs):

* ``_chain_partial_kernel``, grid (B, cdiv(V, BLOCK)). Each program first recomputes its request's
  acceptance prefix from the K drafted-token scalars p_i(x_i), q_i(x_i) (K one-element gathers,
  all issued at once; positions >= num_draft and out-of-range tokens are masked, so never read).
  That gives ``a``, the first rejected position (or the bonus position). It then reads only its
  BLOCK-wide chunk of the ONE row that must be sampled (row a of p, plus row a of q for a residual)
  and writes two race partials: (best key, index) for r (the residual, or p at the bonus position)
  and for p itself, the fallback when the residual has zero mass. The fallback shares the loads and
  the logs and is only evaluated in chunks where the residual is zero. Rows after the first
  rejection are never touched and no [B, K+1, V] temporary exists: bytes moved ~= B * V elements
  (2x with a residual), against (K+1) * B * V for engines that build every residual eagerly.
* ``_chain_combine_kernel``, grid (B,): reduces a row's partials (a few hundred bytes) and writes
  the whole tokens row (-1 padding included, so no torch.full launch) and num_accepted.

Block verification (rule="block", §9; the arithmetic with every rounding is the docstring of
specdec_kernels/reference/chain.py) reuses the race and the combine, with the decision split off:

* ``_block_decide_kernel``, grid (B,): the weights w_i from the same K scalar gathers, then tau by
  the downward scan. A scan step reads row pair i only where it must weigh the exact mass m_i
  (eta_i < w_i < 1, draft probabilities given: one pass over V summing int64 fixed-point words, so
  the parallel reduction gives the CPU loop's bits); at w_i = 1, h_i = 1 accepts unread, and
  deterministic drafts need no row at all. The scan is a dependent chain per request, so it runs
  in one program per request rather than across the grid: splitting a mass over programs would
  need a round trip per step, while the rows a step reads are at most the ones the spec reads.
* ``_block_race_kernel``, grid (B, cdiv(V, BLOCK)): the race over the one chosen row (p_n, or the
  residual of row tau), read once and vocabulary-parallel, then ``_chain_combine_kernel``.

Bytes moved: the 2K scalars, the weighed row pairs, then the same one or two rows as rule="token".

No host synchronisation: every data-dependent decision happens on the device.

Measured on an H100 (CUDA-graph replay, K = 5, float32, with draft_probs): B = 1, V = 32000: 10 us
(two launches); B = 16, V = 128256: 27 us; B = 64, V = 128256: 73 us, i.e. ~900 GB/s of the bytes
that must move (one p row and one q row per request). At large B the kernel is bound by the
per-element Philox rounds, logf and IEEE division, not by memory: they are what bit-exactness
with the other backends costs.
"""

import torch
import triton
import triton.language as tl

from .._backend import triton_interpret
from ._philox import row_draw_key, uniform_at, uniform_block
from .tree import _TWO_M32, _TWO_M64, _fixed_words

# Index sentinel of "no winner" in a partial: larger than any vocabulary index.
_NO_IDX = tl.constexpr(2**31 - 1)


@triton.jit
def _race_partials(p, r, offs, b, bm, c, k0, k1, st, d0, d1, key_ptr, idx_ptr, NCH,
                   ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Writes this chunk's race partials (best key, index) of r and of p (the fallback), [ROWS]."""
    d1s = d1 + (d0 == 0xFFFFFFFF).to(tl.uint32)  # slot 1: draw = offset + 1 with the carry
    d0s = d0 + 1
    u = uniform_block(k0[:, None], k1[:, None], st[:, None], d0s[:, None], d1s[:, None],
                      c * (BLOCK // 4), ROWS, BLOCK // 4)
    e = -tl.log(u)  # u in (0, 1): finite and > 0; lowers to libdevice logf, as CUDA's logf does
    # div_rn: Triton's `/` is div.full.f32 (2 ulp) on NVIDIA; the race must be correctly rounded to
    # agree with the C++ kernels (IEEE division) on who wins.
    key_r = tl.where(r > 0, tl.math.div_rn(r, e), 0.0)
    # Per chunk: (max key, smallest index holding it); keys of 0 never win (index _NO_IDX).
    best_r = tl.max(key_r, axis=1)
    idx_r = tl.min(tl.where((key_r == best_r[:, None]) & (key_r > 0), offs[None, :], _NO_IDX), axis=1)
    # The race over p is the fallback for a residual of zero mass over the WHOLE row, so it is
    # only needed from chunks whose residual is zero: a positive residual anywhere in the chunk
    # proves it unused. Skipping it elsewhere saves a correctly rounded division per element (the
    # kernel is bound by the Philox/log/division arithmetic, not by memory, at large B).
    best_p = tl.zeros((ROWS,), tl.float32)
    idx_p = tl.full((ROWS,), _NO_IDX, tl.int32)
    if tl.min(tl.where(bm, best_r, 1.0), axis=0) == 0.0:
        key_p = tl.where(p > 0, tl.math.div_rn(p, e), 0.0)
        best_p = tl.max(key_p, axis=1)
        idx_p = tl.min(tl.where((key_p == best_p[:, None]) & (key_p > 0), offs[None, :], _NO_IDX),
                       axis=1)
    base = b * 2 * NCH + c
    two = tl.arange(0, 2)[None, :]
    tl.store(key_ptr + base[:, None] + two * NCH, tl.join(best_r, best_p), mask=bm[:, None])
    tl.store(idx_ptr + base[:, None] + two * NCH, tl.join(idx_r, idx_p), mask=bm[:, None])


@triton.jit
def _chain_partial_kernel(
    draft_ptr, sd_b, sd_k,
    p_ptr, sp_b, sp_k,
    q_ptr, sq_b, sq_k,
    nd_ptr, snd,
    seed_ptr, s_seed, off_ptr, s_off,
    key_ptr, idx_ptr, acc_ptr,
    B, K, V, NCH, stream_mul,
    HAS_Q: tl.constexpr, HAS_ND: tl.constexpr, KP: tl.constexpr, ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Tiles are [ROWS, ...]: one request per tile row. ROWS is 1 on the GPU (the grid already has
    # B * chunks programs); the interpreter packs many requests into one program because it pays
    # per executed op, not per element.
    b = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    bm = b < B
    c = tl.program_id(1)
    if HAS_ND:
        n = tl.minimum(tl.maximum(tl.load(nd_ptr + b * snd, mask=bm, other=0), 0), K).to(tl.int64)
    else:
        n = tl.zeros((ROWS,), tl.int64) + K
    k0, k1, st, d0, d1 = row_draw_key(seed_ptr, s_seed, off_ptr, s_off, b, stream_mul, 0, bm)

    # Acceptance prefix: K one-element gathers p_i(x_i), q_i(x_i), all issued at once.
    pos = tl.arange(0, KP)[None, :]
    live = (pos < n[:, None]) & bm[:, None]
    x = tl.load(draft_ptr + b[:, None] * sd_b + pos * sd_k, mask=live, other=-1)
    # An out-of-range token (possible only with check=False) is rejected and never dereferenced.
    valid = live & (x >= 0) & (x < V)
    pa = tl.load(p_ptr + b[:, None] * sp_b + pos * sp_k + x, mask=valid, other=0.0).to(tl.float32)
    if HAS_Q:
        qa = tl.load(q_ptr + b[:, None] * sq_b + pos * sq_k + x, mask=valid, other=0.0).to(tl.float32)
    else:
        qa = tl.full((ROWS, KP), 1.0, tl.float32)  # deterministic draft: q is one-hot at x
    ua = uniform_at(k0[:, None], k1[:, None], st[:, None], d0[:, None], d1[:, None], pos)
    accepted = valid & (ua * qa < pa)  # float32 product: the same rounding on every backend
    a = tl.min(tl.where(live & ~accepted, pos.to(tl.int64), n[:, None]), axis=1)
    if c == 0:
        tl.store(acc_ptr + b, a, mask=bm)  # every chunk computes the same a; one hands it over
    rejected = a < n

    # The one row that is sampled: row a of p (and of q for a residual), this program's chunk.
    offs = c * BLOCK + tl.arange(0, BLOCK)
    m = bm[:, None] & (offs < V)[None, :]
    row_p = p_ptr + b * sp_b + a * sp_k
    # Upcast on load: all arithmetic is float32 (bf16 math is also wrong in the interpreter).
    p = tl.load(row_p[:, None] + offs[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_Q:
        # q is read only for a rejected position; at the bonus position r = p and q costs nothing.
        row_q = q_ptr + b * sq_b + a * sq_k
        q = tl.load(row_q[:, None] + offs[None, :], mask=m & rejected[:, None], other=0.0).to(tl.float32)
        r = tl.where(rejected[:, None], tl.maximum(p - q, 0.0), p)
    else:
        # Deterministic draft: the residual is p with the rejected token removed. An out-of-range
        # token removes nothing (as in the C++ kernel); the bonus position loads no token (-1).
        xa = tl.load(draft_ptr + b * sd_b + a * sd_k, mask=bm & rejected, other=-1)
        r = tl.where(offs[None, :] == xa[:, None], 0.0, p)

    _race_partials(p, r, offs, b, bm, c, k0, k1, st, d0, d1, key_ptr, idx_ptr, NCH, ROWS, BLOCK)


@triton.jit
def _chain_combine_kernel(draft_ptr, sd_b, sd_k, key_ptr, idx_ptr, acc_ptr, tokens_ptr, nacc_ptr,
                          B, K, NCH, ROWS: tl.constexpr, KP1: tl.constexpr, NCHP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    bm = b < B
    a = tl.load(acc_ptr + b, mask=bm, other=0)
    # [ROWS, 2 races, chunks]: chunks are in index order and each partial holds its chunk's
    # smallest winning index, so "larger key, then smaller index" over partials is exactly the
    # sequential scan's winner.
    ch = tl.arange(0, NCHP)[None, None, :]
    two = tl.arange(0, 2)[None, :, None]
    off = b[:, None, None] * 2 * NCH + two * NCH + ch
    m = bm[:, None, None] & (ch < NCH)
    kk = tl.load(key_ptr + off, mask=m, other=0.0)
    ii = tl.load(idx_ptr + off, mask=m, other=_NO_IDX)
    best = tl.max(kk, axis=2)
    y2 = tl.min(tl.where(kk == best[:, :, None], ii, _NO_IDX), axis=2)  # [ROWS, 2]
    race = tl.arange(0, 2)[None, :]
    y_r = tl.sum(tl.where(race == 0, y2, 0), axis=1)
    y_p = tl.sum(tl.where(race == 1, y2, 0), axis=1)
    # Residual of zero mass (measure zero for valid inputs): fall back to p; p of zero mass too
    # (only with check=False): emit token 0, as the other backends do.
    y = tl.where(y_r != _NO_IDX, y_r, tl.where(y_p != _NO_IDX, y_p, 0)).to(tl.int64)

    j = tl.arange(0, KP1)[None, :]
    drafts = tl.load(draft_ptr + b[:, None] * sd_b + j * sd_k, mask=bm[:, None] & (j < a[:, None]),
                     other=-1)
    row = tl.where(j < a[:, None], drafts, tl.where(j == a[:, None], y[:, None], -1))
    tl.store(tokens_ptr + b[:, None] * (K + 1) + j, row, mask=bm[:, None] & (j < K + 1))
    tl.store(nacc_ptr + b, a, mask=bm)


@triton.jit
def _block_weight(w_prev, p, q):
    # w = min(1, w_prev p / q) as block_weight in sampling_math.h: w_prev * p is exact in float64
    # (so FMA contraction cannot change it) and the one division is IEEE float64, rounded to float32
    # afterwards, as the reference does.
    num = w_prev.to(tl.float64) * p.to(tl.float64)
    qd = q.to(tl.float64)
    lt = num < qd
    ratio = (num / tl.where(lt, qd, 1.0)).to(tl.float32)  # the guard only keeps 0/0 out of the dead lane
    return tl.where(lt, ratio, tl.where(num > 0.0, 1.0, 0.0))


@triton.jit
def _block_residual(p, q, w):
    # fl32(max(0, w p - q)) in float64: w p is exact there, so an FMA or not gives the same bits.
    v = w.to(tl.float64) * p.to(tl.float64) - q.to(tl.float64)
    return tl.where(v > 0.0, v, 0.0).to(tl.float32)


@triton.jit
def _block_mass(prow, qrow, w, need, V, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """m = exact 2^-64 fixed-point sum of r(v) = fl32(max(0, w p(v) - q(v))) over the row pair,
    for the tile rows in ``need`` ([ROWS] row pointers and weights); 0 elsewhere. Integer words make
    the sum independent of the reduction order, hence equal to the sequential CPU loop's."""
    hi = tl.zeros((ROWS,), tl.int64)
    lo = tl.zeros((ROWS,), tl.int64)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = need[:, None] & (offs < V)[None, :]
        p = tl.load(prow[:, None] + offs[None, :], mask=m, other=0.0)
        q = tl.load(qrow[:, None] + offs[None, :], mask=m, other=0.0)
        h, lw = _fixed_words(_block_residual(p.to(tl.float32), q.to(tl.float32), w[:, None]))
        hi += tl.sum(h, axis=1)
        lo += tl.sum(lw, axis=1)
    return hi.to(tl.float64) * _TWO_M32 + lo.to(tl.float64) * _TWO_M64


@triton.jit
def _block_decide_kernel(
    draft_ptr, sd_b, sd_k,
    p_ptr, sp_b, sp_k,
    q_ptr, sq_b, sq_k,
    nd_ptr, snd,
    seed_ptr, s_seed, off_ptr, s_off,
    tau_ptr, wt_ptr,
    B, K, V, stream_mul,
    HAS_Q: tl.constexpr, HAS_ND: tl.constexpr, KP: tl.constexpr, ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # tau of each request (docs/algorithms.md §9, arithmetic of specdec_kernels/reference/chain.py).
    # One request per program on the GPU: the downward scan is a dependent chain, and each step
    # that needs a mass streams one row pair; the race over the chosen row is left to the
    # vocabulary-parallel _block_race_kernel. Outputs: tau, and the weight of the raced residual
    # (w_tau; -1 when tau = n, whose race is over the bonus row p_n itself).
    b = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    bm = b < B
    if HAS_ND:
        n = tl.minimum(tl.maximum(tl.load(nd_ptr + b * snd, mask=bm, other=0), 0), K).to(tl.int64)
    else:
        n = tl.where(bm, K, 0).to(tl.int64)
    k0, k1, st, d0, d1 = row_draw_key(seed_ptr, s_seed, off_ptr, s_off, b, stream_mul, 0, bm)

    # The drafts' scalars p_{i-1}(x_i), q_{i-1}(x_i), all gathered at once. Drafts from the first
    # out-of-range one on (check=False only) are never dereferenced: their weights are 0.
    pos = tl.arange(0, KP)[None, :]
    live = pos < n[:, None]
    x = tl.load(draft_ptr + b[:, None] * sd_b + pos * sd_k, mask=live, other=-1)
    nv = tl.min(tl.where(live & ((x < 0) | (x >= V)), pos.to(tl.int64), n[:, None]), axis=1)
    ok = pos < nv[:, None]
    px = tl.load(p_ptr + b[:, None] * sp_b + pos * sp_k + x, mask=ok, other=0.0).to(tl.float32)
    if HAS_Q:
        qx = tl.load(q_ptr + b[:, None] * sq_b + pos * sq_k + x, mask=ok, other=0.0).to(tl.float32)
    else:
        qx = tl.full((ROWS, KP), 1.0, tl.float32)  # deterministic draft: q is one-hot at x
    eta = uniform_at(k0[:, None], k1[:, None], st[:, None], d0[:, None], d1[:, None], pos)

    # Running weights: column i of wcol holds w_i (w_0 = 1), a float32 recurrence, so sequential.
    w = tl.full((ROWS,), 1.0, tl.float32)
    wcol = tl.where(pos == 0, 1.0, tl.zeros((ROWS, KP), tl.float32))
    for j in range(0, K - 1):
        pj = tl.sum(tl.where(pos == j, px, 0.0), axis=1)
        qj = tl.sum(tl.where(pos == j, qx, 0.0), axis=1)
        w = tl.where(j < nv, _block_weight(w, pj, qj), 0.0)
        wcol = tl.where(pos == j + 1, w[:, None], wcol)

    # tau = n: fl32(eta_n q) < fl32(w_{n-1} p), each product exact in float64 and rounded once.
    last = pos == n[:, None] - 1
    e_n = tl.sum(tl.where(last, eta, 0.0), axis=1)
    all_in = (n >= 1) & (nv == n) & (
        (e_n.to(tl.float64) * tl.sum(tl.where(last, qx, 0.0), axis=1).to(tl.float64)).to(tl.float32)
        < (tl.sum(tl.where(last, wcol, 0.0), axis=1).to(tl.float64)
           * tl.sum(tl.where(last, px, 0.0), axis=1).to(tl.float64)).to(tl.float32))
    bonus = all_in | (n == 0)
    tau = tl.where(all_in, n, 0)
    wt = tl.where(bonus, -1.0, 1.0)
    done = bonus | (n == 1)
    # Downward scan, i = K-1 .. 1 (rows with i >= n idle). With w_i == 1, h_i = m_i / m_i = 1 and
    # eta_i < 1 always accepts, so the row pair is not read; below w_i the scan has to weigh h_i.
    for t in range(1, K):
        i = K - t
        w_i = tl.sum(tl.where(pos == i, wcol, 0.0), axis=1)
        e_i = tl.sum(tl.where(pos == i - 1, eta, 0.0), axis=1)
        cand = ~done & (i < n) & (e_i < w_i)
        need = cand & (w_i < 1.0)
        if HAS_Q:
            m = tl.zeros((ROWS,), tl.float64)
            if tl.max(need.to(tl.int32), axis=0) != 0:  # stream the row pair only when weighed
                m = _block_mass(p_ptr + b * sp_b + i * sp_k, q_ptr + b * sq_b + i * sq_k, w_i, need, V,
                                ROWS, BLOCK)
        else:
            # q_i one-hot at x_{i+1}: m_i = w_i fl32(1 - p_i(x_{i+1})), exact product; no row read
            # (p_i(x_{i+1}) = 0 when x_{i+1} is out of range: px is 0 from the first such draft on).
            p_next = tl.sum(tl.where(pos == i, px, 0.0), axis=1)
            m = w_i.to(tl.float64) * (1.0 - p_next).to(tl.float64)
        den = m + (1.0 - w_i.to(tl.float64))
        hit = cand & ((w_i == 1.0) | ~(den > 0.0) | (e_i.to(tl.float64) * den < m))
        tau = tl.where(hit, i, tau)
        wt = tl.where(hit, w_i, wt)
        done = done | hit
    tl.store(tau_ptr + b, tau, mask=bm)
    tl.store(wt_ptr + b, wt, mask=bm)


@triton.jit
def _block_race_kernel(
    draft_ptr, sd_b, sd_k,
    p_ptr, sp_b, sp_k,
    q_ptr, sq_b, sq_k,
    seed_ptr, s_seed, off_ptr, s_off,
    tau_ptr, wt_ptr, key_ptr, idx_ptr,
    B, V, NCH, stream_mul,
    HAS_Q: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    # Grid (B, chunks), as _chain_partial_kernel: the one raced row per request, read once, in
    # parallel over the vocabulary. tau = n races p_n (wt < 0); otherwise the residual of row tau:
    # fl32(max(0, w_tau p - q)) with draft probabilities (w_0 = 1 gives rule "token"'s
    # max(0, p - q) bit for bit: p - q of two floats rounds the same via float64), or p without
    # x_{tau+1} for deterministic drafts.
    b = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    bm = b < B
    c = tl.program_id(1)
    tau = tl.load(tau_ptr + b, mask=bm, other=0)
    wt = tl.load(wt_ptr + b, mask=bm, other=-1.0)
    resid = wt >= 0.0
    k0, k1, st, d0, d1 = row_draw_key(seed_ptr, s_seed, off_ptr, s_off, b, stream_mul, 0, bm)
    offs = c * BLOCK + tl.arange(0, BLOCK)
    m = bm[:, None] & (offs < V)[None, :]
    p = tl.load((p_ptr + b * sp_b + tau * sp_k)[:, None] + offs[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_Q:
        # q is read only for a residual; the bonus row costs one row, as in rule "token".
        q = tl.load((q_ptr + b * sq_b + tau * sq_k)[:, None] + offs[None, :], mask=m & resid[:, None],
                    other=0.0).to(tl.float32)
        r = tl.where(resid[:, None], _block_residual(p, q, wt[:, None]), p)
    else:
        # An out-of-range x_{tau+1} removes nothing; the bonus row loads no token (-1).
        xa = tl.load(draft_ptr + b * sd_b + tau * sd_k, mask=bm & resid, other=-1)
        r = tl.where(offs[None, :] == xa[:, None], 0.0, p)
    _race_partials(p, r, offs, b, bm, c, k0, k1, st, d0, d1, key_ptr, idx_ptr, NCH, ROWS, BLOCK)


@triton.jit
def _greedy_partial_kernel(logits_ptr, s_b, s_k, nd_ptr, snd, val_ptr, idx_ptr, B, K, V, NCH,
                           HAS_ND: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    # Grid (cdiv(B * (K+1), ROWS), chunks) over the rows (b, j) of the logits. Greedy verification
    # needs the argmax of each row up to the first mismatch; we compute the argmax of ALL rows up
    # to num_draft in parallel instead of row after row: the extra bytes (at most the K rows a
    # sequential scan might skip) buy one launch-wide pass with no dependent round trips, which is
    # what bounds latency at these sizes. Rows past num_draft (the ragged tail) are never read.
    rj = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    b = rj // (K + 1)
    j = rj % (K + 1)
    rm = b < B
    if HAS_ND:
        n = tl.minimum(tl.maximum(tl.load(nd_ptr + b * snd, mask=rm, other=0), 0), K)
        rm = rm & (j <= n)
    c = tl.program_id(1)
    offs = c * BLOCK + tl.arange(0, BLOCK)
    row = logits_ptr + b * s_b + j * s_k
    x = tl.load(row[:, None] + offs[None, :], mask=rm[:, None] & (offs < V)[None, :],
                other=float("-inf")).to(tl.float32)
    x = tl.where(x == x, x, float("-inf"))  # NaN never wins, as in the C++ kernel
    best = tl.max(x, axis=1)
    # Padding lanes are -inf and have larger indices than every real lane of the chunk.
    idx = tl.min(tl.where(x == best[:, None], offs[None, :], _NO_IDX), axis=1)
    tl.store(val_ptr + rj * NCH + c, best, mask=rm)
    tl.store(idx_ptr + rj * NCH + c, idx, mask=rm)


@triton.jit
def _greedy_combine_kernel(draft_ptr, sd_b, sd_k, nd_ptr, snd, val_ptr, idx_ptr, tokens_ptr, nacc_ptr,
                           B, K, NCH, HAS_ND: tl.constexpr, ROWS: tl.constexpr, KP1: tl.constexpr,
                           NCHP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    bm = b < B
    if HAS_ND:
        n = tl.minimum(tl.maximum(tl.load(nd_ptr + b * snd, mask=bm, other=0), 0), K).to(tl.int64)
    else:
        n = tl.zeros((ROWS,), tl.int64) + K
    j = tl.arange(0, KP1)[None, :, None]
    ch = tl.arange(0, NCHP)[None, None, :]
    m = bm[:, None, None] & (j <= n[:, None, None]) & (ch < NCH)
    off = (b[:, None, None] * (K + 1) + j) * NCH + ch
    v = tl.load(val_ptr + off, mask=m, other=float("-inf"))
    ix = tl.load(idx_ptr + off, mask=m, other=_NO_IDX)
    best = tl.max(v, axis=2)
    # Argmax ties go to the smallest index: chunk partials already hold their smallest one.
    arg = tl.min(tl.where(v == best[:, :, None], ix, _NO_IDX), axis=2).to(tl.int64)  # [ROWS, KP1]
    j2 = tl.arange(0, KP1)[None, :]
    n2 = n[:, None]
    drafts = tl.load(draft_ptr + b[:, None] * sd_b + j2 * sd_k, mask=bm[:, None] & (j2 < n2), other=-1)
    mismatch = (j2 <= n2) & ((j2 == n2) | (drafts != arg))
    a = tl.min(tl.where(mismatch, j2.to(tl.int64), n2), axis=1)
    tl.store(tokens_ptr + b[:, None] * (K + 1) + j2, tl.where(j2 <= a[:, None], arg, -1),
             mask=bm[:, None] & (j2 < K + 1))
    tl.store(nacc_ptr + b, a, mask=bm)


# ---------------------------------------------------------------------------------------------
# Launchers


def _vocab_block(rows: int, V: int) -> tuple[int, int, int]:
    """(BLOCK, ROWS, num_warps) for one pass over a V-wide row per request."""
    if triton_interpret():
        # The interpreter costs per executed op, not per element: one wide tile per row and many
        # rows per program (tiles of up to 2^18 elements keep numpy's temporaries small).
        block = max(16, min(triton.next_power_of_2(V), 32768))
        return block, min(triton.next_power_of_2(rows), max(1, 2**18 // block)), 4
    # Enough programs to fill the GPU (~4 per SM on an H100) even at B = 1, but tiles of at least
    # 512 elements so that the per-program prefix recomputation (K gathers) stays amortised.
    target = max(1, triton.cdiv(rows * V, 4 * 132))
    block = max(512, min(4096, triton.next_power_of_2(target)))
    block = min(block, max(16, triton.next_power_of_2(V)))
    return block, 1, (8 if block >= 4096 else 4)


def _small_rows(rows: int, per_row: int) -> int:
    """ROWS of the combine kernels: one request per program on the GPU, many when interpreting."""
    if triton_interpret():
        fit = max(1, 2**16 // per_row)
        return min(triton.next_power_of_2(rows), 1 << (fit.bit_length() - 1))  # tl.arange: powers of 2
    return 1


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def verify_chain(
    draft_tokens: torch.Tensor,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    num_draft: torch.Tensor | None,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    row_streams: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton chain verification; arguments already validated by ``specdec_kernels.verify_chain``.

    draft_tokens [B, K] int64, target_probs [B, K+1, V] f32/f16/bf16, draft_probs [B, K, V] (same
    dtype) or None, num_draft [B] int64 or None, seeds/offsets [B] int64 (any stride, 0 included),
    row_streams: Philox stream of row b is b (True) or 0. Returns (tokens [B, K+1] int64 with -1
    padding, num_accepted [B] int64).
    """
    B, K = draft_tokens.shape
    V = target_probs.shape[-1]
    dev = draft_tokens.device
    tokens = torch.empty((B, K + 1), dtype=torch.int64, device=dev)
    num_accepted = torch.empty((B,), dtype=torch.int64, device=dev)
    if B == 0:
        return tokens, num_accepted
    P = _unit_last_stride(target_probs)
    has_q = draft_probs is not None
    Q = _unit_last_stride(draft_probs) if has_q else P  # dummy pointer, never read, when None
    nd = num_draft if num_draft is not None else seeds  # dummy pointer, never read, when None
    BLOCK, ROWS, warps = _vocab_block(B, V)
    NCH = triton.cdiv(V, BLOCK)
    keys = torch.empty((B, 2, NCH), dtype=torch.float32, device=dev)
    idx = torch.empty((B, 2, NCH), dtype=torch.int32, device=dev)
    _chain_partial_kernel[(triton.cdiv(B, ROWS), NCH)](
        draft_tokens, draft_tokens.stride(0), draft_tokens.stride(1),
        P, P.stride(0), P.stride(1),
        Q, Q.stride(0), Q.stride(1),
        nd, nd.stride(0),
        seeds, seeds.stride(0), offsets, offsets.stride(0),
        keys, idx, num_accepted,  # num_accepted doubles as the buffer of a for the combine
        B, K, V, NCH, 1 if row_streams else 0,
        HAS_Q=has_q, HAS_ND=num_draft is not None, KP=triton.next_power_of_2(max(K, 1)),
        ROWS=ROWS, BLOCK=BLOCK, num_warps=warps)
    NCHP = triton.next_power_of_2(NCH)
    KP1 = triton.next_power_of_2(K + 1)
    ROWS = _small_rows(B, 2 * NCHP + KP1)
    _chain_combine_kernel[(triton.cdiv(B, ROWS),)](
        draft_tokens, draft_tokens.stride(0), draft_tokens.stride(1), keys, idx, num_accepted,
        tokens, num_accepted, B, K, NCH, ROWS=ROWS, KP1=KP1, NCHP=NCHP,
        num_warps=1 if NCH <= 16 else 4)
    return tokens, num_accepted


def verify_chain_block(
    draft_tokens: torch.Tensor,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    num_draft: torch.Tensor | None,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    row_streams: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton block verification (docs/algorithms.md §9); arguments as :func:`verify_chain`.

    Three launches, no host synchronisation and no [B, K, V] temporary: _block_decide_kernel
    (grid B) finds tau from the drafts' scalars, streaming a row pair only where the downward scan
    weighs a mass; _block_race_kernel (grid B x vocabulary chunks) races the one chosen row;
    _chain_combine_kernel writes the tokens. Bytes moved: the 2K scalars, the weighed row pairs,
    then one row (two for a residual with draft probabilities) per request.
    """
    B, K = draft_tokens.shape
    V = target_probs.shape[-1]
    dev = draft_tokens.device
    tokens = torch.empty((B, K + 1), dtype=torch.int64, device=dev)
    num_accepted = torch.empty((B,), dtype=torch.int64, device=dev)
    if B == 0:
        return tokens, num_accepted
    P = _unit_last_stride(target_probs)
    has_q = draft_probs is not None
    Q = _unit_last_stride(draft_probs) if has_q else P  # dummy pointer, never read, when None
    nd = num_draft if num_draft is not None else seeds  # dummy pointer, never read, when None
    stream_mul = 1 if row_streams else 0
    KP = triton.next_power_of_2(max(K, 1))
    wt = torch.empty((B,), dtype=torch.float32, device=dev)
    if triton_interpret():
        MBLOCK, MROWS, mwarps = _vocab_block(B, V)
    else:
        # The mass pass of a weighed row pair is one program's loop over V: wide tiles keep many
        # loads in flight. Deterministic drafts never read a row here: one warp for the scalars
        # (and a fixed BLOCK, so V does not multiply the compiled variants).
        MBLOCK, MROWS = (max(16, min(4096, triton.next_power_of_2(V))) if has_q else 16), 1
        mwarps = (8 if MBLOCK >= 4096 else 4) if has_q else 1
    _block_decide_kernel[(triton.cdiv(B, MROWS),)](
        draft_tokens, draft_tokens.stride(0), draft_tokens.stride(1),
        P, P.stride(0), P.stride(1),
        Q, Q.stride(0), Q.stride(1),
        nd, nd.stride(0),
        seeds, seeds.stride(0), offsets, offsets.stride(0),
        num_accepted, wt,  # num_accepted doubles as the buffer of tau for the next two kernels
        B, K, V, stream_mul,
        HAS_Q=has_q, HAS_ND=num_draft is not None, KP=KP, ROWS=MROWS, BLOCK=MBLOCK, num_warps=mwarps)
    BLOCK, ROWS, warps = _vocab_block(B, V)
    NCH = triton.cdiv(V, BLOCK)
    keys = torch.empty((B, 2, NCH), dtype=torch.float32, device=dev)
    idx = torch.empty((B, 2, NCH), dtype=torch.int32, device=dev)
    _block_race_kernel[(triton.cdiv(B, ROWS), NCH)](
        draft_tokens, draft_tokens.stride(0), draft_tokens.stride(1),
        P, P.stride(0), P.stride(1),
        Q, Q.stride(0), Q.stride(1),
        seeds, seeds.stride(0), offsets, offsets.stride(0),
        num_accepted, wt, keys, idx,
        B, V, NCH, stream_mul,
        HAS_Q=has_q, ROWS=ROWS, BLOCK=BLOCK, num_warps=warps)
    NCHP = triton.next_power_of_2(NCH)
    KP1 = triton.next_power_of_2(K + 1)
    ROWS = _small_rows(B, 2 * NCHP + KP1)
    _chain_combine_kernel[(triton.cdiv(B, ROWS),)](
        draft_tokens, draft_tokens.stride(0), draft_tokens.stride(1), keys, idx, num_accepted,
        tokens, num_accepted, B, K, NCH, ROWS=ROWS, KP1=KP1, NCHP=NCHP,
        num_warps=1 if NCH <= 16 else 4)
    return tokens, num_accepted


def verify_chain_greedy(
    draft_tokens: torch.Tensor,
    target_logits: torch.Tensor,
    num_draft: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton greedy chain verification; arguments validated by ``specdec_kernels.verify_chain_greedy``.

    draft_tokens [B, K] int64, target_logits [B, K+1, V] f32/f16/bf16, num_draft [B] int64 or None.
    Returns (tokens [B, K+1] int64 with -1 padding, num_accepted [B] int64).
    """
    B, K = draft_tokens.shape
    V = target_logits.shape[-1]
    dev = draft_tokens.device
    tokens = torch.empty((B, K + 1), dtype=torch.int64, device=dev)
    num_accepted = torch.empty((B,), dtype=torch.int64, device=dev)
    if B == 0:
        return tokens, num_accepted
    L = _unit_last_stride(target_logits)
    nd = num_draft if num_draft is not None else draft_tokens  # dummy pointer, never read, when None
    snd = num_draft.stride(0) if num_draft is not None else 0
    BLOCK, ROWS, warps = _vocab_block(B * (K + 1), V)
    NCH = triton.cdiv(V, BLOCK)
    vals = torch.empty((B, K + 1, NCH), dtype=torch.float32, device=dev)
    idx = torch.empty((B, K + 1, NCH), dtype=torch.int32, device=dev)
    _greedy_partial_kernel[(triton.cdiv(B * (K + 1), ROWS), NCH)](
        L, L.stride(0), L.stride(1), nd, snd, vals, idx, B, K, V, NCH,
        HAS_ND=num_draft is not None, ROWS=ROWS, BLOCK=BLOCK, num_warps=warps)
    NCHP = triton.next_power_of_2(NCH)
    KP1 = triton.next_power_of_2(K + 1)
    ROWS = _small_rows(B, KP1 * NCHP)
    _greedy_combine_kernel[(triton.cdiv(B, ROWS),)](
        draft_tokens, draft_tokens.stride(0), draft_tokens.stride(1), nd, snd, vals, idx, tokens,
        num_accepted, B, K, NCH, HAS_ND=num_draft is not None, ROWS=ROWS, KP1=KP1, NCHP=NCHP,
        num_warps=1 if KP1 * NCHP <= 64 else 4)
    return tokens, num_accepted


# One representative specialisation of each kernel, compiled for sm_90 by
# .ci/triton_compile_check.py (bf16 too where the loads depend on the input dtype).
def _partial_sig(dtype: str) -> dict:
    return {
        "draft_ptr": "*i64", "sd_b": "i64", "sd_k": "i64",
        "p_ptr": f"*{dtype}", "sp_b": "i64", "sp_k": "i64",
        "q_ptr": f"*{dtype}", "sq_b": "i64", "sq_k": "i64",
        "nd_ptr": "*i64", "snd": "i64",
        "seed_ptr": "*i64", "s_seed": "i64", "off_ptr": "*i64", "s_off": "i64",
        "key_ptr": "*fp32", "idx_ptr": "*i32", "acc_ptr": "*i64",
        "B": "i32", "K": "i32", "V": "i32", "NCH": "i32", "stream_mul": "i32",
    }


def _block_decide_sig(dtype: str) -> dict:
    return {
        "draft_ptr": "*i64", "sd_b": "i64", "sd_k": "i64",
        "p_ptr": f"*{dtype}", "sp_b": "i64", "sp_k": "i64",
        "q_ptr": f"*{dtype}", "sq_b": "i64", "sq_k": "i64",
        "nd_ptr": "*i64", "snd": "i64",
        "seed_ptr": "*i64", "s_seed": "i64", "off_ptr": "*i64", "s_off": "i64",
        "tau_ptr": "*i64", "wt_ptr": "*fp32",
        "B": "i32", "K": "i32", "V": "i32", "stream_mul": "i32",
    }


def _block_race_sig(dtype: str) -> dict:
    return {
        "draft_ptr": "*i64", "sd_b": "i64", "sd_k": "i64",
        "p_ptr": f"*{dtype}", "sp_b": "i64", "sp_k": "i64",
        "q_ptr": f"*{dtype}", "sq_b": "i64", "sq_k": "i64",
        "seed_ptr": "*i64", "s_seed": "i64", "off_ptr": "*i64", "s_off": "i64",
        "tau_ptr": "*i64", "wt_ptr": "*fp32", "key_ptr": "*fp32", "idx_ptr": "*i32",
        "B": "i32", "V": "i32", "NCH": "i32", "stream_mul": "i32",
    }


COMPILE_CHECKS = [
    (_block_decide_kernel, _block_decide_sig("fp32"),
     {"HAS_Q": True, "HAS_ND": True, "KP": 8, "ROWS": 1, "BLOCK": 4096}, {"num_warps": 8}),
    (_block_decide_kernel, _block_decide_sig("bf16"),
     {"HAS_Q": False, "HAS_ND": False, "KP": 8, "ROWS": 1, "BLOCK": 16}, {"num_warps": 1}),
    (_block_race_kernel, _block_race_sig("bf16"), {"HAS_Q": True, "ROWS": 1, "BLOCK": 2048}),
    (_block_race_kernel, _block_race_sig("fp16"), {"HAS_Q": False, "ROWS": 1, "BLOCK": 4096}),
    (_chain_partial_kernel, _partial_sig("fp32"),
     {"HAS_Q": True, "HAS_ND": True, "KP": 8, "ROWS": 1, "BLOCK": 2048}),
    (_chain_partial_kernel, _partial_sig("bf16"),
     {"HAS_Q": False, "HAS_ND": False, "KP": 8, "ROWS": 1, "BLOCK": 4096}),
    (_chain_combine_kernel,
     {"draft_ptr": "*i64", "sd_b": "i64", "sd_k": "i64", "key_ptr": "*fp32", "idx_ptr": "*i32",
      "acc_ptr": "*i64", "tokens_ptr": "*i64", "nacc_ptr": "*i64", "B": "i32", "K": "i32",
      "NCH": "i32"},
     {"ROWS": 1, "KP1": 16, "NCHP": 64}),
    (_greedy_partial_kernel,
     {"logits_ptr": "*bf16", "s_b": "i64", "s_k": "i64", "nd_ptr": "*i64", "snd": "i64",
      "val_ptr": "*fp32", "idx_ptr": "*i32", "B": "i32", "K": "i32", "V": "i32", "NCH": "i32"},
     {"HAS_ND": True, "ROWS": 1, "BLOCK": 2048}),
    (_greedy_combine_kernel,
     {"draft_ptr": "*i64", "sd_b": "i64", "sd_k": "i64", "nd_ptr": "*i64", "snd": "i64",
      "val_ptr": "*fp32", "idx_ptr": "*i32", "tokens_ptr": "*i64", "nacc_ptr": "*i64",
      "B": "i32", "K": "i32", "NCH": "i32"},
     {"HAS_ND": True, "ROWS": 1, "KP1": 16, "NCHP": 64}),
]
