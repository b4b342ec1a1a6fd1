"""Microbenchmarks of sampling_probs on every backend of the bench device, and the device's copy
bandwidth (the yardstick for the effective bandwidth of every op). See conftest.py."""

from __future__ import annotations

import types

import pytest
import torch

import specdec_kernels as sk
import specdec_kernels.testing as skt
from specdec_kernels import reference

# Sampling settings as engines use them: temperature alone (a softmax pass), HF's top_k=50, and
# nucleus sampling (top_p needs the sorted mass: the expensive path).
VARIANTS: dict[str, dict[str, float | int]] = {
    "T=0.8": {"temperature": 0.8},
    "T=0.8,top_k=50": {"temperature": 0.8, "top_k": 50},
    "T=0.8,top_p=0.9": {"temperature": 0.8, "top_p": 0.9},
}
CHECK_ROWS = 8


@pytest.mark.bench_op("sampling_probs", variants=list(VARIANTS))
def test_sampling_probs(benchmark, case, bench: types.ModuleType) -> None:
    # The logits of one verification step, [B, K+1, V]: what is filtered before verify_chain.
    logits = bench.make_inputs(case.device, case.B, case.K, case.V, case.dtype).z
    kw = VARIANTS[case.variant]
    rows = case.B * (case.K + 1)
    head = logits.reshape(rows, case.V)[:CHECK_ROWS]
    ref = bench.reference_result(case, lambda: reference.sampling_probs(head, **kw, check=False))
    scaled = head.float() / kw["temperature"]

    def call() -> torch.Tensor:
        return sk.sampling_probs(logits, **kw, check=False)

    bench.run_benchmark(
        benchmark, case, call,
        check=lambda o: skt.check_probs(o, ref, scaled, float(kw.get("top_p", 1.0))),
        bytes_of=lambda o: skt.sampling_bytes(rows, case.V, case.dtype),
    )


def test_copy_bandwidth(benchmark, bench: types.ModuleType) -> None:
    """Device-to-device copy of a 512 MiB tensor; bytes = read + write."""
    dev = bench.bench_device()
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("SPECDEC_BENCH_DEVICE=cuda but torch.cuda.is_available() is False")
    n = bench.COPY_BYTES // 4
    src = torch.arange(n, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    case = bench.Case("copy", "", "torch", dev, 0, 0, 0, "float32")

    def call() -> torch.Tensor:
        return dst.copy_(src)

    def check(o: torch.Tensor) -> None:
        assert torch.equal(o, src)

    bench.run_benchmark(benchmark, case, call, check=check, bytes_of=lambda o: 2 * bench.COPY_BYTES)
