"""Philox4x32-10 and the draw layout of csrc/common/philox.h as ``@triton.jit`` helpers.

Bit-identical to ``specdec_kernels.reference._philox`` and the C++ header (see the header for the
layout of a draw). Triton's own ``tl.rand``/``tl.randint`` are NOT used: they put the offset in the
counter's first words and the seed in the key differently, so their streams would differ from the
other backends'.

All words are uint32: multiplications wrap mod 2^32 and ``tl.umulhi`` gives the high half, which is
exactly ``mulhilo32`` of the header; shifts of unsigned values are logical. The wrapping products
and key increments say ``sanitize_overflow=False``: the wrap is intended, and the interpreter's
overflow check would otherwise cost more than the arithmetic.
"""

import triton
import triton.language as tl

# Philox4x32 round multipliers and Weyl key increments (Salmon et al. 2011, Random123).
_M0 = tl.constexpr(0xD2511F53)
_M1 = tl.constexpr(0xCD9E8D57)
_W0 = tl.constexpr(0x9E3779B9)
_W1 = tl.constexpr(0xBB67AE85)
# 2^-23: ((w >> 9) + 0.5) * 2^-23 has at most 24 significant bits, so it is exact in float32.
_TWO_M23 = tl.constexpr(1.1920928955078125e-07)


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on uint32 counters (any broadcastable shapes) and a uint32 key."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, _M0)
        lo0 = tl.mul(c0, _M0, sanitize_overflow=False)
        hi1 = tl.umulhi(c2, _M1)
        lo1 = tl.mul(c2, _M1, sanitize_overflow=False)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = tl.add(k0, _W0, sanitize_overflow=False)
        k1 = tl.add(k1, _W1, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def draw_key(seed, offset, slot, stream):
    """(k0, k1, stream, d0, d1) of one draw from int64 ``seed``/``offset`` scalars.

    ``slot`` is added to ``offset`` modulo 2^64 and the words split as unsigned values, like the
    header's ``make_draw_key`` (which casts to uint64 before shifting).
    """
    s = seed.to(tl.uint64, bitcast=True)
    d = offset.to(tl.uint64, bitcast=True) + slot
    k0 = s.to(tl.uint32)  # truncation keeps the low word
    k1 = (s >> 32).to(tl.uint32)
    d0 = d.to(tl.uint32)
    d1 = (d >> 32).to(tl.uint32)
    st = stream.to(tl.uint32)
    return k0, k1, st, d0, d1


@triton.jit
def row_draw_key(seed_ptr, s_seed, off_ptr, s_off, row, stream_mul, slot, mask):
    """Twin of ``row_draw_key`` in csrc/common/philox.h: the key of a request row's draw at ``slot``.
    Its seed and offset are read with their strides (0 for a scalar broadcast over the batch); its
    stream is ``row * stream_mul``: the row itself when one int seed covers the batch, 0 when every
    request brings its own seed. Rows outside ``mask`` read seed 0 and offset 0 (never used)."""
    seed = tl.load(seed_ptr + row * s_seed, mask=mask, other=0)
    offset = tl.load(off_ptr + row * s_off, mask=mask, other=0)
    return draw_key(seed, offset, slot, row * stream_mul)


@triton.jit
def word_to_uniform(w):
    """uint32 word -> float32 uniform ((w >> 9) + 0.5) * 2^-23 in (0, 1), exact."""
    return ((w >> 9).to(tl.int32).to(tl.float32) + 0.5) * _TWO_M23


@triton.jit
def uniform_at(k0, k1, st, d0, d1, element):
    """Uniforms of arbitrary (non-negative int) ``element`` indices of one draw.

    Every element runs its own Philox block, so neighbours in one block repeat the work 4 times:
    meant for a handful of elements (the K acceptance uniforms), not for a vocabulary row. The
    key words may be tensors broadcastable against ``element`` (one draw per row of a tile).
    """
    e = element.to(tl.uint32)
    x, y, z, w = philox4x32_10(e >> 2, st, d0, d1, k0, k1)
    lane = e & 3
    word = tl.where(lane == 0, x, tl.where(lane == 1, y, tl.where(lane == 2, z, w)))
    return ((word >> 9).to(tl.int32).to(tl.float32) + 0.5) * _TWO_M23


@triton.jit
def uniform_block(k0, k1, st, d0, d1, first_block, R: tl.constexpr, NB: tl.constexpr):
    """Uniforms [R, 4 * NB] of elements 4 * first_block ... of R draws (one per tile row).

    ``first_block`` is a scalar or an [R, 1] tensor (a different first block per tile row).

    The key words are scalars or [R, 1] tensors (row r of the tile uses draw r). One Philox call
    per block of 4 elements (no redundant rounds): the 4 output words are joined on two minor axes
    of size 2 and flattened, which keeps element order (block-major, lane-minor) and leaves each
    thread holding 4 neighbouring elements, the layout of a vectorised load.
    """
    blk = tl.zeros((R, NB), tl.uint32) + first_block.to(tl.uint32) + tl.arange(0, NB).to(tl.uint32)[None, :]
    x, y, z, w = philox4x32_10(blk, st, d0, d1, k0, k1)
    # join(join(x, z), join(y, w)) has shape [R, NB, 2, 2]; its flat index 4i + 2j + l holds
    # x, y, z, w for (j, l) = (0, 0), (0, 1), (1, 0), (1, 1): element 4i + lane gets word[lane].
    words = tl.reshape(tl.join(tl.join(x, z), tl.join(y, w)), (R, 4 * NB))
    return ((words >> 9).to(tl.int32).to(tl.float32) + 0.5) * _TWO_M23


@triton.jit
def _philox_check_kernel(seed_ptr, offset_ptr, out_ptr, out_block_ptr, slot, stream, n,
                         BLOCK: tl.constexpr):
    # Test hook: the same draw through both entry points, for the bit-exactness self-check.
    seed = tl.load(seed_ptr)
    offset = tl.load(offset_ptr)
    k0, k1, st, d0, d1 = draw_key(seed, offset, slot, stream)
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, uniform_at(k0, k1, st, d0, d1, offs), mask=mask)
    ub = uniform_block(k0, k1, st, d0, d1, pid * (BLOCK // 4), 1, BLOCK // 4)
    tl.store(out_block_ptr + offs[None, :], ub, mask=mask[None, :])


def draw_uniform(seed, offset, slot: int, stream: int, n: int, block: int = 1024):
    """Uniforms of elements 0..n-1 of one draw, computed by the Triton helpers.

    Returns (via ``uniform_at``, via ``uniform_block``), both float32 [n]. Used by tests and the
    self-check to compare with ``specdec_kernels.reference._philox.draw_uniform`` bit for bit.
    ``seed`` and ``offset`` are int64 tensors of shape [1] on the device to run on.
    """
    import torch

    out = torch.empty(n, dtype=torch.float32, device=seed.device)
    out_block = torch.empty_like(out)
    if n == 0:
        return out, out_block
    grid = (triton.cdiv(n, block),)
    _philox_check_kernel[grid](seed, offset, out, out_block, slot, stream, n, BLOCK=block)
    return out, out_block


COMPILE_CHECKS = [
    (
        _philox_check_kernel,
        {"seed_ptr": "*i64", "offset_ptr": "*i64", "out_ptr": "*fp32", "out_block_ptr": "*fp32",
         "slot": "i32", "stream": "i32", "n": "i32"},
        {"BLOCK": 1024},
    ),
]
