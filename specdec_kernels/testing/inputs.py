"""Input builders per op family: realistic rows, deterministic given a seed, device and dtype.

Every builder draws from its own ``torch.Generator`` seeded with ``seed`` on ``device``, so the
same call gives the same tensors on the same device (a CUDA generator's stream differs from the
CPU one: build on ``"cpu"`` and move with :func:`to_device` when two devices must see the same
inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch

Device: TypeAlias = str | torch.device
DType: TypeAlias = str | torch.dtype

#: The dtype names the benchmarks and their results use.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16,
                                  "bfloat16": torch.bfloat16}


def as_dtype(dtype: DType) -> torch.dtype:
    """``dtype`` as a torch dtype; names are those of :data:`DTYPES`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r} (use {', '.join(DTYPES)})") from None


def to_device(obj: Any, device: Device) -> Any:
    """``obj`` (a tensor, or dicts/tuples/lists/NamedTuples of them) with every tensor on ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


@dataclass
class ChainInputs:
    """Chain inputs of one shape: drafts x [B,K], target probs p [B,K+1,V], draft probs q [B,K,V],
    target logits z [B,K+1,V] (p = softmax(z)), per-row seed tensor [B], offset tensor []."""

    x: torch.Tensor
    p: torch.Tensor
    q: torch.Tensor
    z: torch.Tensor
    seed: torch.Tensor
    offset: torch.Tensor


def make_chain_inputs(device: Device, B: int, K: int, V: int, dtype: DType = "float32",
                      seed: int = 0) -> ChainInputs:
    """Realistic chain inputs.

    Target rows look like a language model's: a flat background (2 * N(0,1) logits) plus one mode
    whose probability is spread over about [0.1, 0.98] across rows. The draft is the target with
    N(0,1) logit noise, and drafts are sampled from it. Acceptance then varies per request, so
    rejections land at every position and some requests accept everything (bonus row). p, q and z
    are computed in float32 and rounded to ``dtype`` last, so every dtype sees the same rows.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    z = 2.0 * torch.randn(B, K + 1, V, generator=g, device=device)
    mode = torch.randint(0, V, (B, K + 1, 1), generator=g, device=device)
    # background mass is about V * e^2, so a mode logit of log(V) + 2 + c gets probability ~sigmoid(c)
    c = torch.rand(B, K + 1, 1, generator=g, device=device) * 6.0 - 2.0
    z.scatter_add_(-1, mode, math.log(V) + 2.0 + c)
    p = torch.softmax(z, -1)
    q = torch.softmax(z[:, :K] + torch.randn(B, K, V, generator=g, device=device), -1)
    if K:
        x = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, K)
    else:  # no draft: multinomial over zero rows is not defined on every device
        x = torch.zeros(B, 0, dtype=torch.int64, device=device)
    dt = as_dtype(dtype)
    return ChainInputs(
        x=x,
        p=p.to(dt),
        q=q.to(dt),
        z=z.to(dt),
        seed=torch.arange(B, dtype=torch.int64, device=device) + 1234,
        offset=torch.zeros((), dtype=torch.int64, device=device),
    )


@dataclass
class TreeInputs:
    """Tree inputs of one shape: a complete binary tree in BFS order (parents[i] = (i-1) // 2)
    whose siblings are distinct tokens drawn WITHOUT replacement (Gumbel-top-2) from the draft row
    of their parent; target probs p, draft probs q and target logits z [B, N, V]; seed tensor [B]."""

    tokens: torch.Tensor
    parents: torch.Tensor
    p: torch.Tensor
    q: torch.Tensor
    z: torch.Tensor
    seed: torch.Tensor
    offset: torch.Tensor


def make_tree_inputs(device: Device, B: int, N: int, V: int, dtype: DType = "float32",
                     seed: int = 7) -> TreeInputs:
    """Realistic tree inputs: the target rows (p, z) are those of
    ``make_chain_inputs(device, B, N - 1, V, dtype, seed)``, one node per row, so a tree and a
    chain built with the same seed verify against the same target; the draft rows q are the target
    with N(0,1) logit noise from a second generator (``seed + 1``)."""
    base = make_chain_inputs(device, B, N - 1, V, dtype, seed=seed)  # p, z: [B, N, V]
    z = base.z.float()
    g = torch.Generator(device=device).manual_seed(seed + 1)
    q = torch.softmax(z + torch.randn(B, N, V, generator=g, device=device), -1)
    parents = ((torch.arange(N, device=device) - 1) // 2).expand(B, N).contiguous()
    parents[:, 0] = -1
    tokens = torch.zeros(B, N, dtype=torch.long, device=device)
    for n in range(N // 2):  # the internal nodes: children 2n+1, 2n+2
        kids = [c for c in (2 * n + 1, 2 * n + 2) if c < N]
        u = torch.rand(B, V, generator=g, device=device).clamp_min(1e-20)
        tokens[:, kids] = torch.topk(torch.log(q[:, n]) - torch.log(-torch.log(u)), len(kids), -1).indices
    return TreeInputs(tokens=tokens, parents=parents, p=base.p, q=q.to(as_dtype(dtype)), z=base.z,
                      seed=torch.arange(B, dtype=torch.int64, device=device) + 99,
                      offset=torch.zeros((), dtype=torch.int64, device=device))


def make_logits(device: Device, shape: tuple[int, ...], dtype: DType = "float32",
                seed: int = 0) -> torch.Tensor:
    """Drafter-like logits: 2 * N(0, 1) plus a few strong modes per row (top-k has real winners)."""
    g = torch.Generator(device=device).manual_seed(seed)
    z = 2.0 * torch.randn(*shape, generator=g, device=device)
    V = shape[-1]
    modes = torch.randint(0, V, (*shape[:-1], 4), generator=g, device=device)
    z.scatter_add_(-1, modes, torch.full(modes.shape, math.log(V), device=device))
    return z.to(as_dtype(dtype))
