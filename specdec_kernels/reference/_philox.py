"""Philox4x32-10 in plain PyTorch int64 arithmetic: the spec of every backend's random numbers.

Mirrors csrc/common/philox.h bit for bit (see that header for the layout of a draw). 32-bit
unsigned words live in int64 tensors; 32x32-bit products are split into 16-bit halves so that no
intermediate overflows int64.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo(m: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = m * (x & 0xFFFF)  # < 2^48
    b = m * (x >> 16)  # < 2^48
    hi = (b + (a >> 16)) >> 16
    lo = (((b & 0xFFFF) << 16) + a) & _MASK32
    return hi, lo


def philox4x32_10(c0, c1, c2, c3, k0, k1) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on broadcastable int64 tensors holding uint32 values."""
    for _ in range(10):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def _split64(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # int64 two's complement -> (low word, high word) as uint32 values.
    return v & _MASK32, (v >> 32) & _MASK32


def draw_words(seed: torch.Tensor, offset: torch.Tensor, slot: int, stream: torch.Tensor,
               element: torch.Tensor) -> torch.Tensor:
    """Raw uint32 words (as int64) of one draw.

    Args:
        seed, offset, stream: int64 tensors broadcastable against ``element``.
        slot: which draw of the op (added to offset).
        element: int64 indices within the draw (vocabulary index, position, ...).
    """
    seed, offset, stream, element = torch.broadcast_tensors(
        *(torch.as_tensor(t, dtype=torch.int64) for t in (seed, offset, stream, element)))
    k0, k1 = _split64(seed)
    d0, d1 = _split64(offset + slot)
    outs = philox4x32_10(element >> 2, stream & _MASK32, d0, d1, k0, k1)
    words = torch.stack(outs, dim=-1)
    return torch.gather(words, -1, (element & 3).unsqueeze(-1)).squeeze(-1)


def words_to_uniform(w: torch.Tensor) -> torch.Tensor:
    """uint32 words -> float32 uniforms ((w >> 9) + 0.5) * 2^-23 in (0, 1), exact."""
    return ((w >> 9).to(torch.float32) + 0.5) * (2.0**-23)


def draw_uniform(seed, offset, slot: int, stream, element) -> torch.Tensor:
    return words_to_uniform(draw_words(seed, offset, slot, stream, element))


def race_keys(r: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Exponential-race keys r / -log(u) (0 where r == 0); argmax has law r / sum(r)."""
    r = r.to(torch.float32)
    return torch.where(r > 0, r / -torch.log(u), torch.zeros_like(r))
