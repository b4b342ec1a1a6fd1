"""Microbenchmarks of sampling without replacement: gumbel_topk and stochastic_beam_step on every
backend of the bench device, on the (R, k, V) grid of issue 3 (see conftest.py for what is timed,
checked and recorded; Case.B is R, Case.K is k or width)."""

from __future__ import annotations

import types

import pytest
import torch

import specdec_kernels as sk
import specdec_kernels.testing as skt
from specdec_kernels import reference

# Beams per request in the SBS benchmark: a W x V logits block per request, as RSD-S draws it.
BEAMS = 4


@pytest.mark.bench_op("gumbel_topk")
def test_gumbel_topk(benchmark, case, bench: types.ModuleType) -> None:
    R, k, V = case.B, case.K, case.V
    logits = skt.make_logits(case.device, (R, V), case.dtype)
    # Seed tensor: each row has its own stream, so the reference on the first rows is comparable.
    seed = torch.arange(R, dtype=torch.int64, device=case.device) + 77
    offset = torch.zeros((), dtype=torch.int64, device=case.device)
    m = min(R, bench.CHECK_ROWS)
    ref = bench.reference_result(case, lambda: reference.gumbel_topk(
        logits[:m], k, temperature=0.8, seed=seed[:m], offset=offset, check=False))

    def call() -> sk.TopKSample:
        return sk.gumbel_topk(logits, k, temperature=0.8, seed=seed, offset=offset, check=False)

    bench.run_benchmark(
        benchmark, case, call,
        check=lambda o: skt.check_samples(o, ref),
        bytes_of=lambda o: skt.row_k_bytes(R, V, k, case.dtype, R * k * 16),
    )


@pytest.mark.bench_op("stochastic_beam_step", variants=[f"W={BEAMS}"])
def test_stochastic_beam_step(benchmark, case, bench: types.ModuleType) -> None:
    B, width, V = case.B, case.K, case.V
    logits = skt.make_logits(case.device, (B, BEAMS, V), case.dtype, seed=1)
    g = torch.Generator(device=case.device).manual_seed(2)
    phi = -3.0 * torch.rand(B, BEAMS, generator=g, device=case.device)
    G = phi + torch.rand(B, BEAMS, generator=g, device=case.device)
    seed = torch.arange(B, dtype=torch.int64, device=case.device) + 5
    offset = torch.zeros((), dtype=torch.int64, device=case.device)
    m = min(B, bench.CHECK_ROWS)
    ref = bench.reference_result(case, lambda: reference.stochastic_beam_step(
        logits[:m], phi[:m], G[:m], width, temperature=0.8, seed=seed[:m], offset=offset, check=False))

    def call() -> sk.BeamStep:
        return sk.stochastic_beam_step(logits, phi, G, width, temperature=0.8, seed=seed, offset=offset,
                                       check=False)

    bench.run_benchmark(
        benchmark, case, call,
        check=lambda o: skt.check_samples(o, ref),
        bytes_of=lambda o: skt.row_k_bytes(B * BEAMS, V, width, case.dtype, B * width * 24),
    )
