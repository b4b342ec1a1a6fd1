"""Sampling without replacement (docs/algorithms.md §2-3) in Triton: Gumbel-Top-k and one Stochastic
Beam Search step, kernels and launchers.

Same arithmetic as ``specdec_kernels.reference.gumbel`` (the spec) and csrc/cpu/gumbel.cpp: s = x / T
correctly rounded (div_rn), g = -log(-log(u)) from the shared Philox layout (slot 0, element v, or
w * V + v for beam w), z = s + g, candidates ordered by (z desc, index asc).

Design: the vocabulary is split into chunks so that small batches still fill the GPU.

* ``_topk_partial_kernel``, grid (row tiles, chunks): reads its chunk of each row ONCE, draws the
  noise, and keeps only the chunk's k best candidates (k rounds of max + arg-min-index over the
  tile, in registers) plus the chunk's (max, sum exp) for the log-sum-exp. Writes k + 2 values per
  (row, chunk); no [R, V] noise or score tensor ever reaches memory.
* ``_topk_final_kernel`` (Gumbel-Top-k), grid (row tiles): merges the chunks' candidates, combines
  the log-sum-exp and writes tokens, log_probs and scores.
* ``_beam_final_kernel`` (SBS), one program per request: merges each live beam's candidates into
  its top-``width`` (z order), turns them into truncated scores G', and folds them into the
  request's running top-``width`` by (G' desc, beam asc, rank asc).

log1p and expm1 are not in ``tl.math`` (and libdevice is not available to the interpreter), so
they use the classical exact-compensation forms (Goldberg 1991), a few ulps from libm.
"""

import torch
import triton
import triton.language as tl

from .._backend import triton_interpret
from ._philox import row_draw_key, uniform_at, uniform_block

# Index sentinel of an empty candidate slot: larger than any vocabulary index.
_NO_IDX = tl.constexpr(2**31 - 1)
_NEG_LN2 = tl.constexpr(-0.6931471805599453)


@triton.jit
def _log1p(x):
    u = 1.0 + x
    d = tl.where(u == 1.0, 1.0, u - 1.0)  # the unused branch must not divide by zero
    return tl.where(u == 1.0, x, tl.log(u) * (x / d))


@triton.jit
def _expm1(a):
    u = tl.exp(a)
    um1 = u - 1.0
    lu = tl.log(u)
    return tl.where(u == 1.0, a, tl.where(um1 == -1.0, -1.0, um1 * (a / tl.where(u == 1.0, 1.0, lu))))


@triton.jit
def _truncated_score(G, Z, Gt):
    # -log(exp(-G) - exp(-Z) + exp(-Gt)) in the stable form of docs/algorithms.md §3; G where Gt >= Z.
    a = tl.minimum(Gt - Z, 0.0)
    # Each branch of the select gets an argument in its own range, so neither evaluates log(0)
    # (the Gt >= Z case, a = 0, returns G below).
    a_near = tl.minimum(tl.maximum(a, _NEG_LN2), -1e-30)
    a_far = tl.minimum(a, _NEG_LN2)
    l1me = tl.where(a > _NEG_LN2, tl.log(-_expm1(a_near)), _log1p(-tl.exp(a_far)))
    t = G - Gt + l1me
    out = G - tl.maximum(t, 0.0) - _log1p(tl.exp(-tl.abs(t)))
    return tl.where(Gt >= Z, G, out)


@triton.jit
def _topk_partial_kernel(
    x_ptr, sx_b, sx_w,
    temp_ptr, seed_ptr, s_seed, off_ptr, s_off, live_ptr,
    cz_ptr, ci_ptr, pm_ptr, ps_ptr,
    NROWS, W, V, NCH, k, stream_mul,
    HAS_LIVE: tl.constexpr, ALIGNED: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    # Row = b * W + w (gumbel_topk: W = 1). ROWS is 1 on the GPU; the interpreter packs many rows
    # into one program because it pays per executed op, not per element.
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rm = row < NROWS
    b = row // W
    w = row - b * W
    if HAS_LIVE:
        rm = rm & (tl.load(live_ptr + row, mask=rm, other=0) != 0)  # dead beams: never read
    c = tl.program_id(1)
    T = tl.load(temp_ptr + b, mask=rm, other=1.0)
    k0, k1, st, d0, d1 = row_draw_key(seed_ptr, s_seed, off_ptr, s_off, b, stream_mul, 0, rm)

    offs = c * BLOCK + tl.arange(0, BLOCK)
    m = rm[:, None] & (offs < V)[None, :]
    ptr = x_ptr + b * sx_b + w * sx_w
    x = tl.load(ptr[:, None] + offs[None, :], mask=m, other=float("-inf")).to(tl.float32)
    s = tl.math.div_rn(x, T[:, None])
    # Chunk's share of the log-sum-exp: (max, sum exp(s - max)); masked entries add nothing.
    cmax = tl.max(s, axis=1)
    safe = tl.where(cmax == float("-inf"), 0.0, cmax)
    csum = tl.sum(tl.where(s == float("-inf"), 0.0, tl.exp(s - safe[:, None])), axis=1)

    if ALIGNED:
        # V % 4 == 0: element w * V + v starts a Philox block at every 4th v, so one Philox call
        # serves 4 neighbouring elements.
        blk0 = ((w * V) // 4 + c * (BLOCK // 4)).to(tl.uint32)
        u = uniform_block(k0[:, None], k1[:, None], st[:, None], d0[:, None], d1[:, None],
                          blk0[:, None], ROWS, BLOCK // 4)
    else:
        u = uniform_at(k0[:, None], k1[:, None], st[:, None], d0[:, None], d1[:, None],
                       w[:, None] * V + offs[None, :])
    z = tl.where(m, s - tl.log(-tl.log(u)), float("-inf"))

    base = (row * NCH + c) * k
    for j in range(k):
        best = tl.max(z, axis=1)
        idx = tl.min(tl.where(z == best[:, None], offs[None, :], _NO_IDX), axis=1)
        idx = tl.where(best > float("-inf"), idx, _NO_IDX)
        tl.store(cz_ptr + base + j, best, mask=rm)
        tl.store(ci_ptr + base + j, idx, mask=rm)
        z = tl.where(offs[None, :] == idx[:, None], float("-inf"), z)
    tl.store(pm_ptr + row * NCH + c, cmax, mask=rm)
    tl.store(ps_ptr + row * NCH + c, csum, mask=rm)


@triton.jit
def _row_lse(pm_ptr, ps_ptr, row, rm, NCH, NCHP: tl.constexpr):
    # Combine the chunks' (max, sum) of each row of the tile into log-sum-exp (-inf if all masked).
    ch = tl.arange(0, NCHP)[None, :]
    cm = rm[:, None] & (ch < NCH)
    pm = tl.load(pm_ptr + row[:, None] * NCH + ch, mask=cm, other=float("-inf"))
    ps = tl.load(ps_ptr + row[:, None] * NCH + ch, mask=cm, other=0.0)
    M = tl.max(pm, axis=1)
    safe = tl.where(M == float("-inf"), 0.0, M)
    tot = tl.sum(tl.where(pm == float("-inf"), 0.0, ps * tl.exp(pm - safe[:, None])), axis=1)
    return tl.where(M == float("-inf"), float("-inf"), safe + tl.log(tl.where(tot > 0, tot, 1.0)))


@triton.jit
def _topk_final_kernel(
    x_ptr, sx_r, temp_ptr, cz_ptr, ci_ptr, pm_ptr, ps_ptr,
    tok_ptr, lp_ptr, sc_ptr, R, NCH, k,
    ROWS: tl.constexpr, CP: tl.constexpr, NCHP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rm = row < R
    n = NCH * k
    j = tl.arange(0, CP)[None, :]
    cm = rm[:, None] & (j < n)
    cz = tl.load(cz_ptr + row[:, None] * n + j, mask=cm, other=float("-inf"))
    ci = tl.load(ci_ptr + row[:, None] * n + j, mask=cm, other=_NO_IDX)
    lse = _row_lse(pm_ptr, ps_ptr, row, rm, NCH, NCHP)
    # A row with a valid token has a finite lse; the others (all -inf) write only padding, so a
    # finite stand-in keeps -inf - -inf out of the unused lanes.
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    T = tl.load(temp_ptr + row, mask=rm, other=1.0)
    for t in range(k):
        best = tl.max(cz, axis=1)
        idx = tl.min(tl.where(cz == best[:, None], ci, _NO_IDX), axis=1)
        valid = rm & (best > float("-inf"))
        x = tl.load(x_ptr + row * sx_r + idx, mask=valid, other=0.0).to(tl.float32)
        s = tl.math.div_rn(x, T)
        tl.store(tok_ptr + row * k + t, tl.where(valid, idx.to(tl.int64), -1), mask=rm)
        tl.store(lp_ptr + row * k + t, tl.where(valid, s - lse, float("-inf")), mask=rm)
        tl.store(sc_ptr + row * k + t, tl.where(valid, best - lse, float("-inf")), mask=rm)
        cz = tl.where(ci == idx[:, None], float("-inf"), cz)  # indices are unique across chunks


@triton.jit
def _beam_final_kernel(
    x_ptr, sx_b, sx_w, phi_ptr, g_ptr, temp_ptr, live_ptr,
    cz_ptr, ci_ptr, pm_ptr, ps_ptr,
    par_ptr, tok_ptr, lp_ptr, sc_ptr,
    W, NCH, kc, kk, width,
    HAS_LIVE: tl.constexpr, CP: tl.constexpr, NCHP: tl.constexpr, P: tl.constexpr,
):
    # One request per program. kc: candidates per chunk written by the partial kernel (= kk).
    b = tl.program_id(0).to(tl.int64)
    T = tl.load(temp_ptr + b)
    jj = tl.arange(0, P)
    run_g = tl.full((P,), float("-inf"), tl.float32)
    run_key = tl.full((P,), _NO_IDX, tl.int32)  # w * kk + rank: the merge's tie-break
    run_tok = tl.full((P,), -1, tl.int32)
    run_phi = tl.full((P,), float("-inf"), tl.float32)
    n = NCH * kc
    cj = tl.arange(0, CP)
    for w in range(W):
        row = b * W + w
        live = w >= 0
        if HAS_LIVE:
            live = tl.load(live_ptr + row) != 0
        if live:
            cz = tl.load(cz_ptr + row * n + cj, mask=cj < n, other=float("-inf"))
            ci = tl.load(ci_ptr + row * n + cj, mask=cj < n, other=_NO_IDX)
            rowv = tl.full((1,), 0, tl.int64) + row
            lse = tl.sum(_row_lse(pm_ptr, ps_ptr, rowv, rowv >= 0, NCH, NCHP), axis=0)
            lse = tl.where(lse == float("-inf"), 0.0, lse)  # all-masked beam: no valid candidate
            phi = tl.load(phi_ptr + row)
            G = tl.load(g_ptr + row)
            # The beam's top-kk in z order (its rank is the position).
            new_z = tl.full((P,), float("-inf"), tl.float32)
            new_i = tl.full((P,), _NO_IDX, tl.int32)
            for t in range(kk):
                best = tl.max(cz, axis=0)
                idx = tl.min(tl.where(cz == best, ci, _NO_IDX), axis=0)
                new_z = tl.where(jj == t, best, new_z)
                new_i = tl.where(jj == t, idx, new_i)
                cz = tl.where(ci == idx, float("-inf"), cz)
            valid = new_z > float("-inf")
            Gt = phi + (new_z - lse)
            Z = tl.max(tl.where(valid, Gt, float("-inf")), axis=0)
            Z = tl.where(Z == float("-inf"), 0.0, Z)  # no candidate: every slot is dropped below
            # Empty slots are fed Z (so no -inf arithmetic) and then dropped.
            Gp = tl.where(valid, _truncated_score(G, Z, tl.where(valid, Gt, Z)), float("-inf"))
            x = tl.load(x_ptr + b * sx_b + w * sx_w + new_i, mask=valid, other=0.0).to(tl.float32)
            cphi = phi + (tl.math.div_rn(x, T) - lse)
            key = (w * kk + jj).to(tl.int32)
            # Fold into the running top-width: 2P candidates, `width` rounds of (max G', min key).
            all_g = tl.reshape(tl.join(run_g, Gp), (2 * P,))
            all_key = tl.reshape(tl.join(run_key, tl.where(valid, key, _NO_IDX)), (2 * P,))
            all_tok = tl.reshape(tl.join(run_tok, tl.where(valid, new_i, -1)), (2 * P,))
            all_phi = tl.reshape(tl.join(run_phi, cphi), (2 * P,))
            run_g = tl.full((P,), float("-inf"), tl.float32)
            run_key = tl.full((P,), _NO_IDX, tl.int32)
            run_tok = tl.full((P,), -1, tl.int32)
            run_phi = tl.full((P,), float("-inf"), tl.float32)
            for t in range(width):
                best = tl.max(all_g, axis=0)
                kmin = tl.min(tl.where(all_g == best, all_key, _NO_IDX), axis=0)
                pick = (all_key == kmin) & (all_g > float("-inf"))
                run_g = tl.where(jj == t, best, run_g)
                run_key = tl.where(jj == t, tl.where(best > float("-inf"), kmin, _NO_IDX), run_key)
                run_tok = tl.where(jj == t, tl.max(tl.where(pick, all_tok, -1), axis=0), run_tok)
                run_phi = tl.where(jj == t, tl.max(tl.where(pick, all_phi, float("-inf")), axis=0), run_phi)
                all_g = tl.where(pick, float("-inf"), all_g)
    valid = (jj < width) & (run_key != _NO_IDX)
    out = b * width + jj
    om = jj < width
    tl.store(par_ptr + out, tl.where(valid, (run_key // kk).to(tl.int64), -1), mask=om)
    tl.store(tok_ptr + out, tl.where(valid, run_tok.to(tl.int64), -1), mask=om)
    tl.store(lp_ptr + out, tl.where(valid, run_phi, float("-inf")), mask=om)
    tl.store(sc_ptr + out, tl.where(valid, run_g, float("-inf")), mask=om)


def _vocab_block(rows: int, V: int, k: int) -> tuple[int, int, int]:
    """(BLOCK, ROWS, num_warps) of the partial kernel."""
    if triton_interpret():
        block = max(16, min(triton.next_power_of_2(V), 32768))
        return block, min(triton.next_power_of_2(rows), max(1, 2**16 // block)), 4
    # Enough programs to fill the GPU (~4 per SM on an H100) even for one row; chunks of at least
    # 8k elements so that the k extraction rounds and the merged candidate list stay small.
    target = max(1, triton.cdiv(rows * V, 4 * 132))
    block = max(max(1024, 8 * triton.next_power_of_2(k)), min(4096, triton.next_power_of_2(target)))
    block = min(block, max(16, triton.next_power_of_2(V)))
    return block, 1, (8 if block >= 4096 else 4)


def _final_rows(rows: int, per_row: int) -> int:
    if triton_interpret():
        fit = max(1, 2**15 // per_row)
        return min(triton.next_power_of_2(rows), 1 << (fit.bit_length() - 1))
    return 1


def _partials(x, temp, seeds, offsets, live, rows: int, W: int, V: int, kc: int, row_streams: bool):
    dev = x.device
    BLOCK, ROWS, warps = _vocab_block(rows, V, kc)
    NCH = triton.cdiv(V, BLOCK)
    cz = torch.empty((rows, NCH, kc), dtype=torch.float32, device=dev)
    ci = torch.empty((rows, NCH, kc), dtype=torch.int32, device=dev)
    pm = torch.empty((rows, NCH), dtype=torch.float32, device=dev)
    ps = torch.empty((rows, NCH), dtype=torch.float32, device=dev)
    sx_b, sx_w = (x.stride(0), x.stride(1)) if x.dim() == 3 else (x.stride(0), 0)
    _topk_partial_kernel[(triton.cdiv(rows, ROWS), NCH)](
        x, sx_b, sx_w, temp, seeds, seeds.stride(0), offsets, offsets.stride(0),
        live if live is not None else seeds, cz, ci, pm, ps,
        rows, W, V, NCH, kc, 1 if row_streams else 0,
        HAS_LIVE=live is not None, ALIGNED=V % 4 == 0, ROWS=ROWS, BLOCK=BLOCK, num_warps=warps)
    return cz, ci, pm, ps, NCH


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def gumbel_topk(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    k: int,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    row_streams: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton Gumbel-Top-k on the canonical arguments (``contract.gumbel.GumbelTopkArgs``, checked
    by ``contract.gumbel.gumbel_topk_args``).

    logits [R, V] f32/f16/bf16, temperature float32 [R], 1 <= k <= V (no CUDA_MAX_K limit here),
    seeds/offsets int64 [R] (any stride). Returns (tokens [R, k] int64, log_probs [R, k] f32,
    scores [R, k] f32).
    """
    R, V = logits.shape
    dev = logits.device
    tokens = torch.empty((R, k), dtype=torch.int64, device=dev)
    log_probs = torch.empty((R, k), dtype=torch.float32, device=dev)
    scores = torch.empty((R, k), dtype=torch.float32, device=dev)
    if R == 0:
        return tokens, log_probs, scores
    x = _unit_last_stride(logits)
    temp = temperature.contiguous()
    cz, ci, pm, ps, NCH = _partials(x, temp, seeds, offsets, None, R, 1, V, k, row_streams)
    CP = triton.next_power_of_2(NCH * k)
    NCHP = triton.next_power_of_2(NCH)
    ROWS = _final_rows(R, CP)
    _topk_final_kernel[(triton.cdiv(R, ROWS),)](
        x, x.stride(0), temp, cz, ci, pm, ps, tokens, log_probs, scores, R, NCH, k,
        ROWS=ROWS, CP=CP, NCHP=NCHP, num_warps=1 if CP <= 64 else 4)
    return tokens, log_probs, scores


def stochastic_beam_step(
    logits: torch.Tensor,
    beam_log_probs: torch.Tensor,
    beam_scores: torch.Tensor,
    beam_mask: torch.Tensor | None,
    width: int,
    temperature: torch.Tensor,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    row_streams: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton Stochastic Beam Search step on the canonical arguments
    (``contract.gumbel.StochasticBeamStepArgs``, checked by ``contract.gumbel.stochastic_beam_step_args``).

    logits [B, W, V], beam_log_probs/beam_scores float32 [B, W], beam_mask bool [B, W] or None,
    width >= 1, temperature float32 [B], seeds/offsets int64 [B]. Returns (parents, tokens,
    log_probs, scores), each [B, width].
    """
    B, W, V = logits.shape
    dev = logits.device
    parents = torch.empty((B, width), dtype=torch.int64, device=dev)
    tokens = torch.empty((B, width), dtype=torch.int64, device=dev)
    log_probs = torch.empty((B, width), dtype=torch.float32, device=dev)
    scores = torch.empty((B, width), dtype=torch.float32, device=dev)
    if B == 0:
        return parents, tokens, log_probs, scores
    x = _unit_last_stride(logits)
    temp = temperature.contiguous()
    live = beam_mask.contiguous().view(torch.uint8) if beam_mask is not None else None
    kk = min(width, V)
    cz, ci, pm, ps, NCH = _partials(x, temp, seeds, offsets, live, B * W, W, V, kk, row_streams)
    phi = beam_log_probs.contiguous()
    G = beam_scores.contiguous()
    P = triton.next_power_of_2(width)
    _beam_final_kernel[(B,)](
        x, x.stride(0), x.stride(1), phi, G, temp, live if live is not None else phi,
        cz, ci, pm, ps, parents, tokens, log_probs, scores, W, NCH, kk, kk, width,
        HAS_LIVE=live is not None, CP=triton.next_power_of_2(NCH * kk), NCHP=triton.next_power_of_2(NCH),
        P=P, num_warps=1 if P * NCH <= 64 else 4)
    return parents, tokens, log_probs, scores


def _partial_sig(dtype: str) -> dict:
    return {
        "x_ptr": f"*{dtype}", "sx_b": "i64", "sx_w": "i64", "temp_ptr": "*fp32",
        "seed_ptr": "*i64", "s_seed": "i64", "off_ptr": "*i64", "s_off": "i64", "live_ptr": "*u8",
        "cz_ptr": "*fp32", "ci_ptr": "*i32", "pm_ptr": "*fp32", "ps_ptr": "*fp32",
        "NROWS": "i32", "W": "i32", "V": "i32", "NCH": "i32", "k": "i32", "stream_mul": "i32",
    }


# One representative specialisation of each kernel, compiled for sm_90 by .ci/triton_compile_check.py.
COMPILE_CHECKS = [
    (_topk_partial_kernel, _partial_sig("fp32"),
     {"HAS_LIVE": False, "ALIGNED": True, "ROWS": 1, "BLOCK": 4096}),
    (_topk_partial_kernel, _partial_sig("bf16"),
     {"HAS_LIVE": True, "ALIGNED": False, "ROWS": 1, "BLOCK": 1024}),
    (_topk_final_kernel,
     {"x_ptr": "*fp32", "sx_r": "i64", "temp_ptr": "*fp32", "cz_ptr": "*fp32", "ci_ptr": "*i32",
      "pm_ptr": "*fp32", "ps_ptr": "*fp32", "tok_ptr": "*i64", "lp_ptr": "*fp32", "sc_ptr": "*fp32",
      "R": "i32", "NCH": "i32", "k": "i32"},
     {"ROWS": 1, "CP": 256, "NCHP": 32}),
    (_beam_final_kernel,
     {"x_ptr": "*fp16", "sx_b": "i64", "sx_w": "i64", "phi_ptr": "*fp32", "g_ptr": "*fp32",
      "temp_ptr": "*fp32", "live_ptr": "*u8", "cz_ptr": "*fp32", "ci_ptr": "*i32", "pm_ptr": "*fp32",
      "ps_ptr": "*fp32", "par_ptr": "*i64", "tok_ptr": "*i64", "lp_ptr": "*fp32", "sc_ptr": "*fp32",
      "W": "i32", "NCH": "i32", "kc": "i32", "kk": "i32", "width": "i32"},
     {"HAS_LIVE": True, "CP": 256, "NCHP": 32, "P": 8}),
]
