"""Sampling without replacement (docs/algorithms.md §2-3): Gumbel-Top-k and one Stochastic Beam Search
step, the drafting half of recursive speculative decoding. The public ops."""

from __future__ import annotations

import math

import torch

from .. import _backend
from ..contract._common import (
    BeamStep,
    SeedLike,
    TopKSample,
    raise_first,
    require_device,
    require_float,
    require_tensor,
    rng_rows,
    row_param,
)

#: Philox draws one gumbel_topk or stochastic_beam_step call consumes (draw ``offset``): advance
#: ``offset`` by 1 between calls that share a seed.
GUMBEL_OFFSET_STRIDE = 1

# The CUDA kernels keep each warp's candidates in registers (8 per lane at most).
CUDA_MAX_K = 256


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


def _check_gumbel_topk(logits, k, temperature, check: bool):
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
    if check and R > 0:
        flags, msgs = _logit_flags(logits, temp)
        raise_first(torch.stack(flags), msgs)
    return R, V, temp


def _beam_tensor(t, name: str, B: int, W: int, ref: torch.Tensor) -> torch.Tensor:
    require_tensor(t, name)
    if list(t.shape) != [B, W]:
        raise ValueError(f"{name} must be [B, W] = [{B}, {W}] to match logits [B, W, V], got {list(t.shape)}")
    require_device(t, ref, name, "logits")
    if not t.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float tensor, got {t.dtype}")
    return t.to(torch.float32).contiguous()


def _check_beam_step(logits, beam_log_probs, beam_scores, width, temperature, beam_mask, check: bool):
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
    if check and B > 0:
        live = mask if mask is not None else torch.ones(B, W, dtype=torch.bool, device=logits.device)
        flags, msgs = _logit_flags(logits, temp, live)
        flags.append((live & ~torch.isfinite(phi)).any())
        msgs.append("beam_log_probs must be finite for live beams (mask dead beams with beam_mask)")
        flags.append((live & ~torch.isfinite(G)).any())
        msgs.append("beam_scores must be finite for live beams (mask dead beams with beam_mask)")
        raise_first(torch.stack(flags), msgs)
    return B, W, V, temp, phi, G, mask


def _route_large_k(backend: str, k: int) -> str:
    # The CUDA kernels hold candidates in registers; larger k goes to Triton unless CUDA is forced
    # (then the C++ check names the limit).
    if backend == "cuda" and k > CUDA_MAX_K and _backend.forced() is None and \
            "triton" in _backend.available("cuda"):
        return "triton"
    return backend


def gumbel_topk(
    logits: torch.Tensor,
    k: int,
    *,
    temperature: float | torch.Tensor = 1.0,
    seed: SeedLike = None,
    offset: int | torch.Tensor = 0,
    check: bool = True,
    generator: torch.Generator | None = None,
) -> TopKSample:
    """Draw k distinct tokens per row without replacement from softmax(logits / temperature).

    Gumbel-Top-k: the k largest ``logits / temperature + Gumbel noise``, in descending order, have
    exactly the law of sequential sampling without replacement,
    ``P(x1, x2, ...) = p(x1) * p(x2) / (1 - p(x1)) * ...`` (docs/algorithms.md §2). One pass over each
    row; only the k best candidates are kept (no [R, V] noise tensor on any backend). Tokens with
    -inf logits are never drawn.

    Args:
        logits: Shape: (R, V), float32/float16/bfloat16 (arithmetic in float32); -inf masks a token.
        k: tokens per row, 1 <= k <= V.
        temperature: float or float tensor of shape () or (R,); > 0.
        seed: int, int64 tensor of shape () or (R,), or None (drawn from ``generator``). An int gives
            row r Philox stream r; a tensor gives each row the stream of its own seed, so a row's
            draws do not depend on its batch position. Values in [0, 2**63).
        offset: int or int64 tensor of shape () or (R,): the call uses Philox draw ``offset``
            (``GUMBEL_OFFSET_STRIDE`` = 1: advance by 1 between calls sharing a seed).
        check: reject NaN/+inf logits (also finite ones that overflow when divided by the
            temperature) and non-positive temperatures in tensors (one device sync).
        generator: used only to draw ``seed`` when it is None.

    Returns:
        TopKSample(tokens, log_probs, scores):
            tokens: (R, k) int64, distinct, in draw order; -1 in the slots past the number of
                tokens with a finite logit (-inf masks a token; any finite logit can be drawn).
            log_probs: (R, k) float32, log softmax(logits / temperature) at the tokens; -inf in
                missing slots.
            scores: (R, k) float32, log_probs + Gumbel noise, descending; -inf in missing slots.

    Note: the noise comes from 23-bit uniforms (docs/design.md "Randomness"), so it is a Gumbel truncated
    to about [-2.8, 16.6]; the law differs from the exact one by less than 1e-7 per draw.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> out = sk.gumbel_topk(torch.tensor([[2.0, 1.0, 0.0, float("-inf")]]), 3, seed=0)
        >>> sorted(out.tokens[0].tolist())
        [0, 1, 2]
    """
    dev = require_tensor(logits, "logits").device
    backend = _route_large_k(_backend.select("gumbel_topk", dev), k if isinstance(k, int) else 0)
    # The cpu kernel checks the logits in its first pass over each row (no extra pass here).
    R, V, temp = _check_gumbel_topk(logits, k, temperature, check and backend != "cpu")
    seeds, offsets, row_streams = rng_rows(seed, offset, R, logits.device, generator)
    if backend == "reference":
        from ..reference.gumbel import gumbel_topk as ref

        return ref(logits, k, temperature=temp, seed=seeds if not row_streams else int(seeds[0]) if R else 0,
                   offset=offsets, check=False)
    if backend == "triton":
        from ..triton.gumbel import gumbel_topk as tri

        return TopKSample(*tri(logits, temp, k, seeds, offsets, row_streams))
    return TopKSample(*torch.ops.specdec.gumbel_topk(logits, temp, k, seeds, offsets, row_streams,
                                                     check and backend == "cpu"))


def stochastic_beam_step(
    logits: torch.Tensor,
    beam_log_probs: torch.Tensor,
    beam_scores: torch.Tensor,
    width: int,
    *,
    temperature: float | torch.Tensor = 1.0,
    beam_mask: torch.Tensor | None = None,
    seed: SeedLike = None,
    offset: int | torch.Tensor = 0,
    check: bool = True,
    generator: torch.Generator | None = None,
) -> BeamStep:
    """One step of Stochastic Beam Search: the ``width`` best expansions of each request's beams.

    Every child t of a live beam y gets ``phi' = phi(y) + log q(t | y)`` and the perturbed score
    ``G~ = phi' + Gumbel``, truncated at the parent's score ``G(y)`` given the maximum ``Z`` over
    the beam's children: ``G' = -log(exp(-G(y)) - exp(-Z) + exp(-G~))`` (stable form in
    docs/algorithms.md §3). The ``width`` largest G' over all live beams of a request are kept, sorted
    descending. Start from the root (W = 1, log prob 0, score 0) and repeat L times: the kept
    sequences are ``width`` distinct samples without replacement from the draft's sequence law q,
    and the first follows q exactly. A beam's kept children, in output order, are a prefix of its
    Gumbel-Top-k order: valid without-replacement siblings for tree verification. Each beam's row
    is read once; only ``width`` candidates per beam are kept.

    Args:
        logits: Shape: (B, W, V), float32/float16/bfloat16: the drafter's next-token logits of each
            beam. -inf masks a token.
        beam_log_probs: Shape: (B, W), float: cumulative log q of each beam (0 at the root).
        beam_scores: Shape: (B, W), float: each beam's perturbed score G (0 at the root), as
            returned by the previous step.
        width: expansions kept per request, >= 1.
        temperature: float or float tensor of shape () or (B,); > 0; applied to the logits.
        beam_mask: Shape: (B, W), bool, or None (all live). Dead beams are never expanded (their
            rows are not read).
        seed, offset, generator: as in :func:`gumbel_topk` with rows = requests; the call uses one
            Philox draw (``GUMBEL_OFFSET_STRIDE``), element ``w * V + t`` for child t of beam w.
        check: reject NaN/+inf (or overflowing scaled) logits, non-positive temperatures and
            non-finite scores or log probs, of live beams only (one device sync).

    Returns:
        BeamStep(parents, tokens, log_probs, scores), each of shape (B, width), best first:
            parents: int64 beam index in [0, W); tokens: int64 token; log_probs: float32 cumulative
            log q; scores: float32 G'. Slots past the number of possible expansions hold -1, -1,
            -inf, -inf.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> logits = torch.randn(2, 1, 50)                       # B=2 requests, the root beam
        >>> zeros = torch.zeros(2, 1)
        >>> step = sk.stochastic_beam_step(logits, zeros, zeros, 3, seed=0)
        >>> step.tokens.shape, bool((step.parents == 0).all())
        (torch.Size([2, 3]), True)
    """
    dev = require_tensor(logits, "logits").device
    backend = _route_large_k(_backend.select("stochastic_beam_step", dev),
                             width if isinstance(width, int) else 0)
    B, W, V, temp, phi, G, mask = _check_beam_step(logits, beam_log_probs, beam_scores, width, temperature,
                                                   beam_mask, check and backend != "cpu")
    seeds, offsets, row_streams = rng_rows(seed, offset, B, logits.device, generator)
    if backend == "reference":
        from ..reference.gumbel import stochastic_beam_step as ref

        return ref(logits, phi, G, width, temperature=temp, beam_mask=mask,
                   seed=seeds if not row_streams else int(seeds[0]) if B else 0, offset=offsets, check=False)
    if backend == "triton":
        from ..triton.gumbel import stochastic_beam_step as tri

        return BeamStep(*tri(logits, phi, G, mask, width, temp, seeds, offsets, row_streams))
    return BeamStep(*torch.ops.specdec.stochastic_beam_step(logits, phi, G, mask, width, temp, seeds, offsets,
                                                            row_streams, check and backend == "cpu"))
