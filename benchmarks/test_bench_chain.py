"""Microbenchmarks of chain verification: verify_chain (with draft_probs and with None) and
verify_chain_greedy, on every backend of the bench device (see conftest.py for what is timed,
checked and recorded), plus the issue's claim on the fixed CPU case."""

from __future__ import annotations

import types

import pytest

import specdec_kernels as sk
import specdec_kernels.testing as skt
from specdec_kernels import reference


@pytest.mark.bench_op("verify_chain", variants=["", "draft_probs=None", "rule=block"])
def test_verify_chain(benchmark, case, bench: types.ModuleType) -> None:
    # rule=block (block verification): its bytes are counted as rule "token"'s floor (the scalars
    # and the one raced row); the row pairs it weighs depend on the draws and are not counted, so
    # its GB/s understates its traffic. Compare its time with the "" variant's.
    inp = bench.make_inputs(case.device, case.B, case.K, case.V, case.dtype)
    q = None if case.variant == "draft_probs=None" else inp.q
    rule = "block" if case.variant == "rule=block" else "token"
    m = min(case.B, bench.CHECK_ROWS)
    ref = bench.reference_result(case, lambda: reference.verify_chain(
        inp.x[:m], inp.p[:m], None if q is None else q[:m], seed=inp.seed[:m], offset=inp.offset,
        rule=rule, check=False))

    def call() -> sk.ChainResult:
        # check=False: input validation (a pass over the inputs and a sync) is not what is measured
        return sk.verify_chain(inp.x, inp.p, q, seed=inp.seed, offset=inp.offset, rule=rule, check=False)

    out = bench.run_benchmark(
        benchmark, case, call,
        check=lambda o: skt.check_chain(o, ref, case.K, case.V),
        bytes_of=lambda o: skt.chain_bytes(o.num_accepted, case.K, case.V, case.dtype, q is not None),
    )
    benchmark.extra_info["accepted_mean"] = float(out.num_accepted.float().mean())


@pytest.mark.bench_op("verify_chain_greedy")
def test_verify_chain_greedy(benchmark, case, bench: types.ModuleType) -> None:
    inp = bench.make_inputs(case.device, case.B, case.K, case.V, case.dtype)
    m = min(case.B, bench.CHECK_ROWS)
    # Drafts sampled from the noisy draft match the target's argmax (its mode) often but not
    # always, so mismatches land at various positions.
    ref = bench.reference_result(
        case, lambda: reference.verify_chain_greedy(inp.x[:m], inp.z[:m], check=False))

    def call() -> sk.ChainResult:
        return sk.verify_chain_greedy(inp.x, inp.z, check=False)

    out = bench.run_benchmark(
        benchmark, case, call,
        check=lambda o: skt.check_chain(o, ref, case.K, case.V),
        bytes_of=lambda o: skt.greedy_bytes(o.num_accepted, case.K, case.V, case.dtype),
    )
    benchmark.extra_info["accepted_mean"] = float(out.num_accepted.float().mean())
