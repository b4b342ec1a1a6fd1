"""Microbenchmark of draft_entropy (AdaEDL's per-step cost) on every backend of the bench device:
V = 32000 (and 128256 on CUDA), R in {1, 16, 256} rows (see conftest.py for what is timed, checked
and recorded; Case.B is R)."""

from __future__ import annotations

import types

import pytest
import torch

import specdec_kernels as sk
import specdec_kernels.testing as skt
from specdec_kernels import reference


@pytest.mark.bench_op("draft_entropy")
def test_draft_entropy(benchmark, case, bench: types.ModuleType) -> None:
    R, V = case.B, case.V
    logits = skt.make_logits(case.device, (R, V), case.dtype)
    m = min(R, bench.CHECK_ROWS)
    ref = bench.reference_result(case, lambda: reference.draft_entropy(logits[:m], temperature=0.8))

    def check(out: torch.Tensor) -> None:
        assert out.shape == (R,)
        torch.testing.assert_close(out[:m].cpu(), ref.cpu(), rtol=1e-4, atol=1e-4)

    def call() -> torch.Tensor:
        return sk.draft_entropy(logits, temperature=0.8, check=False)

    bench.run_benchmark(benchmark, case, call, check=check,
                        bytes_of=lambda o: skt.entropy_bytes(R, V, case.dtype))
