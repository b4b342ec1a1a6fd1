"""Timing: device synchronisation, CUDA-graph capture, and median timings of one call.

A single call of these ops is a few microseconds of GPU work, below the launch + synchronisation
overhead an eager loop would time; on CUDA, time graph replays of many calls instead
(:func:`graph_median_us`). On CPU, :func:`median_us` times synchronised eager calls.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from .inputs import Device

T = TypeVar("T")


def sync(device: Device) -> None:
    """Wait for the work queued on ``device`` (a no-op on CPU, where calls are synchronous)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def capture_cuda_graph(fn: Callable[[], T], calls: int = 1,
                       warmup: int = 3) -> tuple[torch.cuda.CUDAGraph, T]:
    """Capture ``calls`` calls of ``fn`` in one CUDA graph; returns ``(graph, output)``, the output
    of the last captured call, which every replay rewrites in place.

    ``fn`` first runs ``warmup`` times on a side stream, as ``torch.cuda.graphs`` requires: Triton
    compiles and the caching allocator sizes its pools on first launch, neither of which may
    happen during capture.
    """
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            out = fn()
    return graph, out


def median_us(fn: Callable[[], Any], device: Device, reps: int = 200, budget_s: float = 1.0) -> float:
    """Median wall time of one synchronised eager call of ``fn`` in microseconds, after one warm-up
    call; at least 3 and at most ``reps`` calls, stopping after roughly ``budget_s`` seconds."""
    fn()
    sync(device)
    ts: list[float] = []
    start = time.perf_counter()
    while len(ts) < reps and (len(ts) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


def graph_median_us(fn: Callable[[], Any], calls: int = 20, reps: int = 30) -> float:
    """CUDA only: median time of one call of ``fn`` in microseconds, from ``reps`` replays (timed
    with CUDA events) of a graph of ``calls`` calls (:func:`capture_cuda_graph`)."""
    graph, _ = capture_cuda_graph(fn, calls)
    graph.replay()  # the first replay uploads the graph: not representative
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        graph.replay()
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1) * 1000 / calls)
    return statistics.median(ts)
