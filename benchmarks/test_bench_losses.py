"""Microbenchmark of the distillation losses: tvdpp_loss forward + backward at N = 4096 positions,
V = 32000, every backend of the bench device against the reference (float64 autograd-free but
explicit), with the peak memory of one call recorded next to the time (see conftest.py for what is
timed and recorded; Case.B is N)."""

from __future__ import annotations

import os
import types

import pytest
import torch

import specdec_kernels as sk
import specdec_kernels.testing as skt
from specdec_kernels import reference


def _peak_reset(device: str) -> int:
    """Start a peak-memory window; returns the baseline in bytes (0 where unknown)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:  # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _rss("VmRSS")
    except OSError:
        return 0


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_bytes(device: str, base: int) -> int | None:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    if not os.path.exists("/proc/self/status") or base == 0:
        return None
    return _rss("VmHWM") - base


@pytest.mark.bench_op("tvdpp_loss", variants=["normalize=vocab"])
def test_tvdpp_forward_backward(benchmark, case, bench: types.ModuleType) -> None:
    N, V = case.B, case.V
    z = skt.make_logits(case.device, (N, V), case.dtype).requires_grad_(True)
    p = torch.softmax(skt.make_logits(case.device, (N, V), "float32", seed=1).float(), -1)
    fn = reference.tvdpp_loss if case.backend == "reference" else sk.tvdpp_loss

    def call() -> torch.Tensor:
        z.grad = None
        loss = fn(z, p, normalize="vocab")
        loss.backward()
        return loss

    # Peak memory of one forward + backward beyond the inputs (and the gradient it must produce).
    base = _peak_reset(case.device)
    with sk.use_backend(case.backend):
        call()
    peak = _peak_bytes(case.device, base)
    want = reference.tvdpp_loss(z[:4].detach(), p[:4], normalize="vocab")

    def check(out: torch.Tensor) -> None:
        assert out.dim() == 0 and torch.isfinite(out)
        with sk.use_backend(case.backend):
            head = fn(z[:4].detach(), p[:4], normalize="vocab")
        torch.testing.assert_close(head.cpu(), want.cpu(), rtol=1e-4, atol=1e-5)

    # Bytes that must move: logits and teacher read by the forward and again by the backward,
    # the gradient written once.
    bench.run_benchmark(benchmark, case, call, check=check,
                        bytes_of=lambda o: skt.tvdpp_bytes(N, V, case.dtype, reads=2),
                        extra={"peak_bytes": peak})
