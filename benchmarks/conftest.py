"""Shared machinery of the specdec_kernels microbenchmarks (pytest-benchmark): the grids of cases,
the cached inputs and reference results, and the timed, checked call with its recorded extra_info.
Input builders, comparators and bytes-moved counts are those of ``specdec_kernels.testing``
(imported as ``skt`` by the benchmark files); the ``bench`` fixture gives this module.

What a benchmark here does, in order:
  1. builds realistic inputs once per shape (peaked target rows, a noisy draft, drafts sampled
     from the draft), so that rejections happen at various positions;
  2. runs the op once with the backend forced and checks the result against
     ``specdec_kernels.reference`` on the first rows BEFORE any timing, so a wrong or mis-routed
     kernel fails instead of producing a number;
  3. times it: on CPU the call itself; on CUDA ``CALLS_PER_GRAPH`` calls captured in one CUDA
     graph, replayed and synchronised (stats are then per replay: divide by ``calls_per_round``,
     which ``benchmarks/record.py`` does);
  4. records in ``benchmark.extra_info`` the bytes the call MUST move (derived from its actual
     result) and the effective bandwidth.
Under ``--benchmark-disable`` (the CI smoke pass) every benchmark makes one checked call instead
(on CUDA: the graph is still captured and replayed once).

Environment:
  SPECDEC_BENCH_DEVICE    cpu | cuda (default: cuda when available, else cpu)
  SPECDEC_BENCH_FULL=1    the full grid B in {1,16,64} x K in {3,5,8} x V in {32000,32064,128256}
                          on every device (default: full on CUDA, reduced on CPU)
  SPECDEC_BENCH_BACKENDS  comma list restricting the backends (default: all available ones, except
                          Triton on CPU: the interpreter is a correctness tool, not a contender)
  SPECDEC_BENCH_DTYPES    comma list of float32,float16,bfloat16 (default float32)
  SPECDEC_COMMIT          commit recorded when the tree has no .git (a copy on another machine)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import specdec_kernels as sk
import specdec_kernels.testing as skt

# One CUDA graph replays this many calls: a single call of these ops is a few microseconds of GPU
# work, below the launch + synchronisation overhead we would otherwise be timing.
CALLS_PER_GRAPH = 20
# The fixed case of the issue: "cpu backend at least 5x faster than reference" is measured here.
CLAIM_SHAPE = (8, 5, 32000)
# Ops benchmarked on their own grid of (rows R, k or width, V), in the Case fields (B, K, V):
# sampling without replacement (issue 3): V in {32000, 128256}, R in {1, 16, 256}, k in {2..16};
# its CPU claim (fused >= 5x the reference) is at R = 64, k = 8, V = 32000.
ROW_K_OPS = {"gumbel_topk", "stochastic_beam_step"}
ROW_K_CLAIM = (64, 8, 32000)
# Tree verification (issue 4) on its own grid of (B, nodes N, V), in the Case fields (B, K, V):
# N in {6, 14, 30, 64} (complete binary trees in BFS order), V in {32000, 128256}, B in {1, 16, 64};
# its CPU claim (fused >= 5x the reference) is a 15-node binary tree at B = 8, V = 32000.
TREE_OPS = {"verify_tree", "verify_tree_greedy"}
TREE_CLAIM = (8, 15, 32000)
# Row reductions (issue 5): draft_entropy at V = 32000 (and 128256 on CUDA), R in {1, 16, 256}; K unused.
ROW_OPS = {"draft_entropy"}
# Distillation losses (issue 5): forward + backward at N = 4096 positions, V = 32000; K unused.
LOSS_OPS = {"tvdpp_loss"}
# Rows compared with the reference before timing: the reference is a Python loop, and rows are
# independent (seed tensors give every row its own stream), so a prefix checks the kernel.
CHECK_ROWS = 4
COPY_BYTES = 512 * 2**20
# Other processes on the machine skew CPU timings: the load is recorded with the results.
_LOAD_AT_START = os.getloadavg() if hasattr(os, "getloadavg") else None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip() not in ("", "0")


def bench_device() -> str:
    """The device the grid runs on (``SPECDEC_BENCH_DEVICE``, default cuda when present)."""
    dev = os.environ.get("SPECDEC_BENCH_DEVICE", "").strip().lower()
    if not dev:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if dev not in ("cpu", "cuda"):
        raise pytest.UsageError(f"SPECDEC_BENCH_DEVICE must be cpu or cuda, got {dev!r}")
    return dev


def grid(device: str) -> list[tuple[int, int, int]]:
    """(B, K, V) shapes benchmarked on ``device``."""
    if _env_flag("SPECDEC_BENCH_FULL"):
        return [(B, K, V) for B in (1, 16, 64) for K in (3, 5, 8) for V in (32000, 32064, 128256)]
    if device == "cuda":
        # A lent GPU session has minutes: the headline cases plus the large-vocabulary ones.
        return [(1, 5, 32000), (16, 5, 32000), (64, 5, 32000), (16, 5, 32064),
                (16, 8, 128256), (64, 8, 128256)]
    # Reduced CPU grid: a full timed CPU run stays at a few minutes (the reference loop dominates).
    return [(B, 5, V) for B in (1, 8, 16) for V in (32000, 128256)]


def dtypes() -> list[str]:
    names = [d.strip() for d in os.environ.get("SPECDEC_BENCH_DTYPES", "float32").split(",") if d.strip()]
    for d in names:
        if d not in skt.DTYPES:
            known = ", ".join(skt.DTYPES)
            raise pytest.UsageError(f"SPECDEC_BENCH_DTYPES: unknown dtype {d!r} (use {known})")
    return names


def _wanted() -> set[str] | None:
    want = os.environ.get("SPECDEC_BENCH_BACKENDS", "").strip()
    return {b.strip() for b in want.split(",") if b.strip()} if want else None


def backends(device: str) -> list[str]:
    """Backends benchmarked on ``device``: available ones, filtered as the module doc says."""
    keep = _wanted()
    if keep is not None:
        return [b for b in sk.backends(device) if b in keep]
    return [b for b in sk.backends(device) if not (device == "cpu" and b == "triton")]


def device_name(device: str) -> str:
    """Human-readable name of the device the numbers come from."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        ncpu = os.cpu_count() or 0
    return f"{model} ({ncpu} CPUs)"


@dataclass(frozen=True)
class Case:
    """One benchmark point."""

    op: str  # public op name
    variant: str  # "" or what distinguishes calls of the same op (draft_probs=None, top_p, ...)
    backend: str
    device: str
    B: int
    K: int
    V: int
    dtype: str

    @property
    def label(self) -> str:
        """Op as it appears in the results: the variant in brackets (the CSV has no variant column)."""
        return f"{self.op}[{self.variant}]" if self.variant else self.op

    @property
    def id(self) -> str:
        v = f"-{self.variant}" if self.variant else ""
        return f"{self.backend}-{self.device}-B{self.B}-K{self.K}-V{self.V}-{self.dtype}{v}"

    @property
    def claim(self) -> bool:
        shape = (ROW_K_CLAIM if self.op in ROW_K_OPS else TREE_CLAIM if self.op in TREE_OPS
                 else CLAIM_SHAPE)
        return self.device == "cpu" and (self.B, self.K, self.V) == shape and self.dtype == "float32"


def row_k_grid(device: str) -> list[tuple[int, int, int]]:
    """(R, k, V) shapes of the sampling-without-replacement ops on ``device``."""
    if device == "cuda" or _env_flag("SPECDEC_BENCH_FULL"):
        return [(R, k, V) for V in (32000, 128256) for R in (1, 16, 256) for k in (2, 4, 8, 16)]
    # CPU: the reference draws its noise with int64 tensor arithmetic (~1 s per million
    # elements), so the CPU grid stays at a few million elements per call.
    return [(1, 8, 32000), (16, 2, 32000), (16, 16, 32000), (16, 8, 128256)]


def tree_grid(device: str) -> list[tuple[int, int, int]]:
    """(B, N, V) shapes of the tree-verification ops on ``device``."""
    if device == "cuda" or _env_flag("SPECDEC_BENCH_FULL"):
        return [(B, N, V) for V in (32000, 128256) for B in (1, 16, 64) for N in (6, 14, 30, 64)]
    # CPU: B x N x V float32 inputs of a few hundred MB at most.
    return [(1, 14, 32000), (16, 6, 32000), (16, 30, 32000), (4, 64, 128256)]


def row_grid(device: str) -> list[tuple[int, int, int]]:
    """(R, 0, V) shapes of the per-row reductions on ``device``."""
    vs = (32000, 128256) if device == "cuda" or _env_flag("SPECDEC_BENCH_FULL") else (32000,)
    return [(R, 0, V) for V in vs for R in (1, 16, 256)]


def attention_cases(dev: str) -> list[Case]:
    """tree_attention: (B, N, L) in the (B, K, V) columns; each specdec backend, plus PyTorch SDPA
    with the dense mask and plain decode attention as "torch" rows (test_bench_attention.py)."""
    if dev == "cuda":
        shapes, dts = [(1, N, L) for L in (512, 2048, 8192, 32768) for N in (8, 32, 64)], ["float16"]
    else:
        shapes, dts = [(1, N, L) for L in (512, 2048, 8192) for N in (8, 64)], dtypes()
    out = []
    for dt in dts:
        for B, N, L in shapes:
            for be in backends(dev):
                if be == "reference" and (dev == "cuda" or L > 2048):
                    continue  # float64 over the whole cache: a sanity point, not a contender
                if be == "cuda":
                    continue  # no CUDA kernel: that backend runs the Triton one
                out.append(Case("tree_attention", "", be, dev, B, N, L, dt))
            for variant in ("sdpa-dense", "decode"):
                out.append(Case("tree_attention", variant, "torch", dev, B, N, L, dt))
    return out


def cases(op: str, variants: list[str]) -> list[Case]:
    """The grid on the bench device, plus the issue's fixed CPU case (always measured)."""
    dev = bench_device()
    out: list[Case] = []
    if dev == "cuda" and not torch.cuda.is_available():
        return out  # every benchmark is then reported as skipped (see pytest_generate_tests)
    if op == "tree_attention":
        return attention_cases(dev)
    row_k = op in ROW_K_OPS
    tree = op in TREE_OPS
    for dt in dtypes():
        shapes = (row_k_grid(dev) if row_k else tree_grid(dev) if tree else row_grid(dev) if op in ROW_OPS
                  else [(4096, 0, 32000)] if op in LOSS_OPS else grid(dev))
        for B, K, V in shapes:
            for variant in variants:
                for be in backends(dev):
                    # The reference is a Python loop over requests: on CUDA it is no contender,
                    # only a sanity point at the smallest batch.
                    if be == "reference" and dev == "cuda" and B > 1:
                        continue
                    out.append(Case(op, variant, be, dev, B, K, V, dt))
    if op in ROW_OPS or op in LOSS_OPS:
        return out  # no fixed CPU claim for these
    B, K, V = ROW_K_CLAIM if row_k else TREE_CLAIM if tree else CLAIM_SHAPE
    for variant in variants:
        for be in ("reference", "cpu"):
            c = Case(op, variant, be, "cpu", B, K, V, "float32")
            if be in backends("cpu") and c not in out:
                out.append(c)
    return out


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "bench_op(op, variants): parametrize a benchmark's `case` over the grid of op"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("bench_op")
    if marker is None or "case" not in metafunc.fixturenames:
        return
    op = marker.args[0]
    variants = list(marker.kwargs.get("variants", [""]))
    cs = cases(op, variants)
    if not cs:
        why = f"SPECDEC_BENCH_DEVICE={bench_device()} but torch.cuda.is_available() is False"
        metafunc.parametrize("case", [pytest.param(None, marks=pytest.mark.skip(reason=why))], ids=["none"])
        return
    metafunc.parametrize("case", cs, ids=[c.id for c in cs])


# ----------------------------------------------------------------------------------------------
# Inputs (built by specdec_kernels.testing) and reference results, cached across benchmarks

_INPUT_CACHE: dict[tuple, Any] = {}
# Inputs are kept across benchmarks (each test function walks the whole grid, so an input set is
# needed once per op) up to this many bytes; the oldest go first.
INPUT_CACHE_BYTES = 4 * 2**30 if torch.cuda.is_available() else 2 * 2**30


def _nbytes(inp: Any) -> int:
    return sum(t.numel() * t.element_size() for t in vars(inp).values() if isinstance(t, torch.Tensor))


def _cached_input(key: tuple, need: int, build: Callable[[], Any]) -> Any:
    """build(), kept under ``key``; ``need``: about what the new set and its temporaries take."""
    if key in _INPUT_CACHE:
        return _INPUT_CACHE[key]
    while _INPUT_CACHE and sum(map(_nbytes, _INPUT_CACHE.values())) + need > INPUT_CACHE_BYTES:
        del _INPUT_CACHE[next(iter(_INPUT_CACHE))]
    _INPUT_CACHE[key] = build()
    return _INPUT_CACHE[key]


def make_inputs(device: str, B: int, K: int, V: int, dtype: str, seed: int = 0) -> skt.ChainInputs:
    """:func:`specdec_kernels.testing.make_chain_inputs`, cached (see ``INPUT_CACHE_BYTES``)."""
    return _cached_input((device, B, K, V, dtype, seed), 4 * B * (K + 1) * V * 4,
                         lambda: skt.make_chain_inputs(device, B, K, V, dtype, seed))


def make_tree_inputs(device: str, B: int, N: int, V: int, dtype: str) -> skt.TreeInputs:
    """:func:`specdec_kernels.testing.make_tree_inputs`, cached with the chain inputs."""
    return _cached_input(("tree", device, B, N, V, dtype), 4 * B * N * V * 4,
                         lambda: skt.make_tree_inputs(device, B, N, V, dtype))


_REF_CACHE: dict[tuple, Any] = {}


def reference_result(case: Case, compute: Callable[[], Any]) -> Any:
    """The reference result of ``case``'s first rows, computed once per op, variant and shape
    (every backend of the case is checked against it; the reference is the slow part)."""
    key = (case.op, case.variant, case.device, case.B, case.K, case.V, case.dtype)
    if key not in _REF_CACHE:
        if len(_REF_CACHE) >= 64:
            del _REF_CACHE[next(iter(_REF_CACHE))]
        _REF_CACHE[key] = compute()
    return _REF_CACHE[key]


# ----------------------------------------------------------------------------------------------
# Timing


def run_benchmark(
    benchmark: Any,
    case: Case,
    fn: Callable[[], Any],
    check: Callable[[Any], None],
    bytes_of: Callable[[Any], int],
    extra: dict[str, Any] | None = None,
) -> Any:
    """Check fn's result, time fn with ``case.backend`` forced, and record extra_info."""
    calls = 1
    # "torch" (the copy baseline) is no specdec backend: nothing to force then.
    is_specdec = case.backend in sk._backend.BACKENDS
    with sk.use_backend(case.backend) if is_specdec else contextlib.nullcontext():
        if case.device == "cuda" and case.backend != "reference":
            out = fn()
            torch.cuda.synchronize()
            check(out)  # eagerly first: a wrong kernel fails here, before any capture
            calls = CALLS_PER_GRAPH
            g, out = skt.capture_cuda_graph(fn, calls)
            g.replay()
            torch.cuda.synchronize()
            check(out)  # what the graph computes, not only what eager computed

            def timed() -> None:
                g.replay()
                torch.cuda.synchronize()

            benchmark(timed)  # under --benchmark-disable: one replay
            timing = f"cuda-graph: stats are per replay of {calls} calls; per call = stats / {calls}"
        elif benchmark.disabled:
            # Smoke test (--benchmark-disable): exactly one call, through the fixture, checked.
            # No separate warm-up call: on CPU the reference calls dominate the smoke run.
            out = benchmark(fn)
            skt.sync(case.device)
            check(out)
            timing = "not timed (--benchmark-disable)"
        else:
            t0 = time.perf_counter()
            out = fn()  # warm-up, and the result that is checked before timing
            skt.sync(case.device)
            first_s = time.perf_counter() - t0
            check(out)
            if case.backend == "reference":
                # A slow Python loop: a few rounds, sized from the first call, keep runs short.
                rounds = max(3, min(50, int(1.0 / max(first_s, 1e-6))))

                def timed_ref() -> Any:
                    r = fn()
                    skt.sync(case.device)
                    return r

                benchmark.pedantic(timed_ref, rounds=rounds, warmup_rounds=0)
                timing = "eager, synchronised per call"
            else:
                benchmark(fn)
                timing = "eager"
    nbytes = bytes_of(out)
    info: dict[str, Any] = {
        "op": case.label,
        "op_name": case.op,
        "variant": case.variant,
        "backend": case.backend,
        "device": device_name(case.device),
        "device_type": case.device,
        "B": case.B,
        "K": case.K,
        "V": case.V,
        "dtype": case.dtype,
        "bytes": nbytes,
        "calls_per_round": calls,
        "timing": timing,
        "claim_case": case.claim,
    }
    info.update(extra or {})
    st = benchmark.stats.stats if benchmark.stats else None  # None under --benchmark-disable
    if st is not None and st.median > 0:
        per_call = st.median / calls
        info["median_per_call_us"] = per_call * 1e6
        info["gbps"] = nbytes / per_call / 1e9
    benchmark.extra_info.update(info)
    return out


# Taken at import: every conftest.py is imported under the name ``conftest``, so by the time a
# fixture runs ``sys.modules["conftest"]`` may be another directory's (tests/decoder/conftest.py).
_THIS_MODULE = sys.modules[__name__]


@pytest.fixture(scope="session")
def bench() -> types.ModuleType:
    """This module, for the benchmark files: importing it as ``conftest`` by name would be
    ambiguous when other conftest.py files are collected in the same run."""
    return _THIS_MODULE


# ----------------------------------------------------------------------------------------------
# Run-level metadata, read back by benchmarks/record.py


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                           cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # a missing or broken triton is a fact to record, not an error
        triton_version = None
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    if commit is None and os.environ.get("SPECDEC_COMMIT"):
        # a copy of the tree without .git (e.g. a lent GPU machine): the runner says which commit
        commit, dirty = os.environ["SPECDEC_COMMIT"], None
    dev = bench_device()
    try:
        import transformers

        transformers_version = transformers.__version__
    except Exception:  # the decoder benchmarks skip without it
        transformers_version = None
    machine_info["specdec"] = {
        "transformers": transformers_version,
        "specdec_kernels": sk.__version__,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "bench_device": dev,
        "device": device_name(dev) if (dev == "cpu" or torch.cuda.is_available()) else None,
        "cpu": device_name("cpu"),
        "torch_threads": torch.get_num_threads(),
        "commit": commit,
        "dirty": bool(dirty) if commit is not None else None,
        "cpp_status": list(sk._backend.cpp_status()),
        "loadavg_start": list(_LOAD_AT_START) if _LOAD_AT_START else None,
        "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "backends": {"cpu": sk.backends("cpu"), "cuda": sk.backends("cuda")},
    }
