"""Small helpers shared by the op test modules (importable as ``helpers``: pytest puts this
directory on sys.path for the test modules in it)."""

from __future__ import annotations

import torch


def to_device(obj, device):
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


def with_generator(kw: dict) -> dict:
    """Case kwargs store a generator as its seed (cases are cached and reused): a fresh
    torch.Generator seeded with it, so every call draws the same seed."""
    kw = dict(kw)
    if kw.get("generator") is not None:
        kw["generator"] = torch.Generator().manual_seed(kw["generator"])
    return kw


def capture_cuda_graph(fn):
    """Run ``fn`` once on a side stream (Triton compiles on first launch, off the capture), then
    capture it into a CUDA graph. Returns ``(graph, static_output)``: replays rewrite the output."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = fn()
    return graph, static
