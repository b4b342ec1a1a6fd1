"""Contract of the sampling-without-replacement ops (docs/algorithms.md §2-3): Gumbel-Top-k and one
Stochastic Beam Search step.

Canonical arguments (the C++ schemas in csrc/registration.cpp, without the trailing ``check``):

    gumbel_topk(logits [R, V] float32/float16/bfloat16, temperature [R] float32, k int,
        seed [R] int64, offset [R] int64, row_streams bool)
        -> (tokens [R, k] int64, log_probs [R, k] float32, scores [R, k] float32)
    stochastic_beam_step(logits [B, W, V], beam_log_probs [B, W] float32, beam_scores [B, W] float32,
        beam_mask [B, W] bool | None, width int, temperature [B] float32, seed [B] int64,
        offset [B] int64, row_streams bool)
        -> (parents, tokens [B, width] int64, log_probs, scores [B, width] float32)

Draw plan: a call uses the one Philox draw ``offset`` (slot 0) of the row's stream
(``GUMBEL_OFFSET_STRIDE``); element v for token v of a gumbel_topk row, ``w * V + v`` for child v of
beam w in a beam step. The stream of row r is r when ``row_streams`` else 0.

Limits: 1 <= k <= V; V < 2**31 (gumbel_topk) and W * V < 2**32 (stochastic_beam_step). The CUDA
kernels also refuse k (width) > ``CUDA_MAX_K`` (``contract.limits``) with a ValueError (check_max_k
in csrc/cuda/gumbel.cu); the Triton kernels, the GPU default for these ops (``_backend.CUDA_DEFAULTS``),
have no such limit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._common import SeedLike, raise_first, require_device, require_float, require_tensor, rng_rows, row_param
from .limits import CUDA_MAX_K  # noqa: F401  (re-exported)

#: Philox draws one gumbel_topk or stochastic_beam_step call consumes (draw ``offset``): advance
#: ``offset`` by 1 between calls that share a seed.
GUMBEL_OFFSET_STRIDE = 1


class GumbelTopkArgs(NamedTuple):
    """Canonical arguments of gumbel_topk."""

    logits: torch.Tensor
    temperature: torch.Tensor
    k: int
    seed: torch.Tensor
    offset: torch.Tensor
    row_streams: bool


class StochasticBeamStepArgs(NamedTuple):
    """Canonical arguments of stochastic_beam_step."""

    logits: torch.Tensor
    beam_log_probs: torch.Tensor
    beam_scores: torch.Tensor
    beam_mask: torch.Tensor | None
    width: int
    temperature: torch.Tensor
    seed: torch.Tensor
    offset: torch.Tensor
    row_streams: bool


def _check_count(k, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"{name} must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    return k


def _check_temperature(temperature, R: int, lead: tuple[int, ...], device) -> torch.Tensor:
    if isinstance(temperature, bool):
        raise ValueError(f"temperature must be a float or a float tensor, got {temperature!r}")
    if isinstance(temperature, (int, float)) and not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0 and finite (take the top-k logits for greedy), "
                         f"got {temperature}")
    return row_param(temperature, R, lead, device, torch.float32, "temperature")


def _beam_tensor(t, name: str, B: int, W: int, ref: torch.Tensor) -> torch.Tensor:
    require_tensor(t, name)
    if list(t.shape) != [B, W]:
        raise ValueError(f"{name} must be [B, W] = [{B}, {W}] to match logits [B, W, V], got {list(t.shape)}")
    require_device(t, ref, name, "logits")
    if not t.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float tensor, got {t.dtype}")
    return t.to(torch.float32).contiguous()


def gumbel_topk_args(logits, k, temperature=1.0, seed: SeedLike = None, offset=0,
                     generator: torch.Generator | None = None) -> GumbelTopkArgs:
    """Check shapes, dtypes, devices and scalars (always) and normalise to the canonical arguments."""
    require_tensor(logits, "logits")
    if logits.dim() != 2:
        raise ValueError(f"logits must be [R, V] (exactly 2-D), got shape {list(logits.shape)}")
    require_float(logits, "logits")
    R, V = logits.shape
    if V < 1:
        raise ValueError("logits must have V >= 1")
    if V >= 2**31:
        raise ValueError(f"logits must have V < 2**31, got {V}")
    _check_count(k, "k")
    if k > V:
        raise ValueError(f"k must be <= V = {V} (k distinct tokens are drawn), got {k}")
    temp = _check_temperature(temperature, R, (R,), logits.device)
    seeds, offsets, row_streams = rng_rows(seed, offset, R, logits.device, generator)
    return GumbelTopkArgs(logits, temp, k, seeds, offsets, row_streams)


def stochastic_beam_step_args(logits, beam_log_probs, beam_scores, width, temperature=1.0, beam_mask=None,
                              seed: SeedLike = None, offset=0,
                              generator: torch.Generator | None = None) -> StochasticBeamStepArgs:
    """Check shapes, dtypes, devices and scalars (always) and normalise to the canonical arguments
    (beam_log_probs and beam_scores as contiguous float32, beam_mask contiguous)."""
    require_tensor(logits, "logits")
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, W, V] (one row per live beam), got shape {list(logits.shape)}")
    require_float(logits, "logits")
    B, W, V = logits.shape
    if V < 1 or W < 1:
        raise ValueError(f"logits must have W >= 1 and V >= 1, got {list(logits.shape)}")
    if W * V >= 2**32:
        raise ValueError(f"logits must have W * V < 2**32 (one Philox element per expansion), got {W * V}")
    _check_count(width, "width")
    phi = _beam_tensor(beam_log_probs, "beam_log_probs", B, W, logits)
    G = _beam_tensor(beam_scores, "beam_scores", B, W, logits)
    mask = None
    if beam_mask is not None:
        require_tensor(beam_mask, "beam_mask")
        if list(beam_mask.shape) != [B, W]:
            raise ValueError(f"beam_mask must be [B, W] = [{B}, {W}], got {list(beam_mask.shape)}")
        if beam_mask.dtype != torch.bool:
            raise ValueError(f"beam_mask must be bool, got {beam_mask.dtype}")
        require_device(beam_mask, logits, "beam_mask", "logits")
        mask = beam_mask.contiguous()
    temp = _check_temperature(temperature, B, (B,), logits.device)
    seeds, offsets, row_streams = rng_rows(seed, offset, B, logits.device, generator)
    return StochasticBeamStepArgs(logits, phi, G, mask, width, temp, seeds, offsets, row_streams)


def _logit_flags(x: torch.Tensor, temp: torch.Tensor, live: torch.Tensor | None = None):
    """Value flags of the logits and temperatures. The scaled logits x / T are checked, not x: a
    finite logit that overflows float32 when divided by a small temperature is as bad as +inf.
    ``live`` ([B, W] bool): rows of dead beams are not looked at."""
    t = temp.reshape(temp.shape + (1,) * (x.dim() - 1))
    scaled = x.float() / torch.where(torch.isfinite(t) & (t > 0), t, torch.ones_like(t))
    bad = torch.isnan(scaled) | (scaled == float("inf"))
    if live is not None:
        bad = bad & live[..., None]
    return [bad.any(), ~(torch.isfinite(temp) & (temp > 0)).all()], [
        "logits must not contain NaN or +inf, and logits / temperature must not overflow float32 "
        "(-inf masks a token)",
        "temperature must be > 0 and finite in every row",
    ]


def check_gumbel_topk_values(logits, temperature, *_rest) -> None:
    """The check=True pass over the values (one device sync); the cpu kernel checks the logits in
    its first pass over each row."""
    if logits.shape[0] == 0:
        return
    flags, msgs = _logit_flags(logits, temperature)
    raise_first(torch.stack(flags), msgs)


def check_stochastic_beam_step_values(logits, beam_log_probs, beam_scores, beam_mask, width, temperature,
                                      *_rng) -> None:
    """The check=True pass over the values of live beams (one device sync)."""
    B, W = logits.shape[:2]
    if B == 0:
        return
    live = beam_mask if beam_mask is not None else torch.ones(B, W, dtype=torch.bool, device=logits.device)
    flags, msgs = _logit_flags(logits, temperature, live)
    flags.append((live & ~torch.isfinite(beam_log_probs)).any())
    msgs.append("beam_log_probs must be finite for live beams (mask dead beams with beam_mask)")
    flags.append((live & ~torch.isfinite(beam_scores)).any())
    msgs.append("beam_scores must be finite for live beams (mask dead beams with beam_mask)")
    raise_first(torch.stack(flags), msgs)


def gumbel_topk_fake(logits, temperature, k, seed, offset, row_streams, check=False):
    """Output shapes of gumbel_topk, for torch.compile and CUDA graphs."""
    R = logits.shape[0]
    return (logits.new_empty((R, k), dtype=torch.long), logits.new_empty((R, k), dtype=torch.float32),
            logits.new_empty((R, k), dtype=torch.float32))


def stochastic_beam_step_fake(logits, beam_log_probs, beam_scores, beam_mask, width, temperature, seed,
                              offset, row_streams, check=False):
    """Output shapes of stochastic_beam_step, for torch.compile and CUDA graphs."""
    B = logits.shape[0]
    ints = logits.new_empty((B, width), dtype=torch.long)
    floats = logits.new_empty((B, width), dtype=torch.float32)
    return ints, ints.clone(), floats, floats.clone()
