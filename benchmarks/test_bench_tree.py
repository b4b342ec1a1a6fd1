"""Microbenchmarks of tree verification: verify_tree (stochastic drafts without replacement, and
one-hot drafts) and verify_tree_greedy on every backend of the bench device, on the (B, N, V) grid
of issue 4 (see conftest.py for what is timed, checked and recorded; Case.K is the node count N)."""

from __future__ import annotations

import types

import pytest

import specdec_kernels as sk
import specdec_kernels.testing as skt
from specdec_kernels import reference


@pytest.mark.bench_op("verify_tree", variants=["", "draft_probs=None"])
def test_verify_tree(benchmark, case, bench: types.ModuleType) -> None:
    inp = bench.make_tree_inputs(case.device, case.B, case.K, case.V, case.dtype)
    q = None if case.variant == "draft_probs=None" else inp.q
    m = min(case.B, bench.CHECK_ROWS)
    ref = bench.reference_result(case, lambda: reference.verify_tree(
        inp.tokens[:m], inp.parents[:m], inp.p[:m], None if q is None else q[:m], seed=inp.seed[:m],
        offset=inp.offset, check=False))

    def call() -> sk.TreeResult:
        # check=False: tree validation (a pass over the inputs and a sync) is not what is measured
        return sk.verify_tree(inp.tokens, inp.parents, inp.p, q, seed=inp.seed, offset=inp.offset,
                              check=False)

    out = bench.run_benchmark(
        benchmark, case, call, check=lambda o: skt.check_tree(o, ref),
        bytes_of=lambda o: skt.tree_bytes(o, inp.parents, case.V, case.dtype, q is not None),
    )
    benchmark.extra_info["accepted_mean"] = float(out.num_accepted.float().mean())


@pytest.mark.bench_op("verify_tree_greedy")
def test_verify_tree_greedy(benchmark, case, bench: types.ModuleType) -> None:
    inp = bench.make_tree_inputs(case.device, case.B, case.K, case.V, case.dtype)
    m = min(case.B, bench.CHECK_ROWS)
    ref = bench.reference_result(case, lambda: reference.verify_tree_greedy(
        inp.tokens[:m], inp.parents[:m], inp.z[:m], check=False))

    def call() -> sk.TreeResult:
        return sk.verify_tree_greedy(inp.tokens, inp.parents, inp.z, check=False)

    out = bench.run_benchmark(
        benchmark, case, call, check=lambda o: skt.check_tree(o, ref),
        bytes_of=lambda o: skt.tree_greedy_bytes(o, case.K, case.V, case.dtype),
    )
    benchmark.extra_info["accepted_mean"] = float(out.num_accepted.float().mean())
