"""The yardstick of issue 15 ("CPU kernels at memory speed"): every cpu-backend op, all goals, one run.

    python benchmarks/cpu_speed.py                      # full run (a few minutes) -> benchmarks/results/
    python benchmarks/cpu_speed.py --quick --out /tmp   # one small shape per op, seconds (a smoke test)
    python benchmarks/cpu_speed.py --ops verify_chain,sampling_probs
    python benchmarks/cpu_speed.py --markdown benchmarks/results/cpu-speed-X.csv  # docs/benchmarks.md

Goals, measured side by side on the same machine in the same run (medians of single calls timed
with time.perf_counter, after a warm-up; the things compared are interleaved call by call, so load
from other processes hits both sides alike):

  1. memory speed: op time <= 4x the time to move its must-move bytes once at the SINGLE-thread copy
     bandwidth (``dst.copy_(src)`` of 256 MiB float32, bytes = read + write), at B in {1, 8, 64},
     V in {32000, 49152, 128256}, one torch thread (ratio = median / (bytes / copy bandwidth));
  2. check=True costs <= 1.25x check=False, for every op with a ``check`` argument;
  3. sampling_probs (per-row parameters) <= 2x ``torch.softmax(logits.float() / T, -1)`` on the same
     rows; draft_entropy, gumbel_topk, stochastic_beam_step, verify_tree >= 10x their reference
     (B = 8, V = 32000: the reference is a slow Python/tensor loop);
  4. 2 threads >= 1.7x one thread at B = 8 and 64, V = 32000.
Goals 1-3 run on one torch thread. Every op's result is compared with ``specdec_kernels.reference``
on its first rows before it is timed (the checks of specdec_kernels.testing), and every
warm-up result of a timed configuration is checked again, so a wrong kernel fails instead of
producing a number.

The inputs and must-move byte counts are those of the pytest-benchmark suite (specdec_kernels.testing):
chains K = 5, trees a 15-node complete binary tree, gumbel_topk k = 8 on B rows,
stochastic_beam_step B requests x 4 beams keeping 4, draft_entropy B rows, tvdpp_loss forward +
backward on N = 16 B positions, sampling_probs on the B x (K+1) rows of one verification step.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

import specdec_kernels as sk
import specdec_kernels.testing as skt
from specdec_kernels import reference

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str) -> types.ModuleType:
    """benchmarks/<name>.py as a module. benchmarks/ is no package, and under pytest conftest.py is
    already imported as ``conftest`` (possibly beside another directory's conftest): reuse that
    module object when it is this file, so its input cache is shared, else import it by path."""
    path = os.path.join(HERE, f"{name}.py")
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and os.path.abspath(f) == path:
            return mod
    spec = importlib.util.spec_from_file_location(f"specdec_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _load("conftest")
record = _load("record")

DEVICE = "cpu"
DTYPE = "float32"
K = 5  # drafts per chain
TREE_N = 15  # complete binary tree of depth 3
TOPK = 8  # gumbel_topk draws per row
BEAMS, WIDTH = 4, 4  # stochastic_beam_step: beams per request, expansions kept
LOSS_POSITIONS = 16  # tvdpp_loss positions per request: N = 16 B
TEMPERATURE = 0.8
SAMPLING_VARIANTS: dict[str, dict[str, float | int]] = {
    "T=0.8": {"temperature": TEMPERATURE},
    "T=0.8,top_k=50": {"temperature": TEMPERATURE, "top_k": 50},
    "T=0.8,top_p=0.9": {"temperature": TEMPERATURE, "top_p": 0.9},
}

GRID = [(B, V) for V in (32000, 49152, 128256) for B in (1, 8, 64)]
CHECK_SHAPES = [(8, 32000), (64, 128256)]
BASELINE_SHAPES = {"sampling_probs": [(8, 32000), (64, 128256)], "default": [(8, 32000)]}
SCALING_SHAPES = [(8, 32000), (64, 32000)]
QUICK_SHAPE = (4, 2048)
COPY_MIB, QUICK_COPY_MIB = 256, 32
TARGETS = {1: "<=4", 2: "<=1.25", 3: ">=10", 4: ">=1.7"}
SAMPLING_TARGET = "<=2"
# Goal 3's reference comparison is for these ops only (the issue's list).
REFERENCE_OPS = ("draft_entropy", "gumbel_topk", "stochastic_beam_step", "verify_tree")

COLUMNS = [
    "date", "commit", "device", "torch", "goal", "op", "variant", "B", "V", "dtype", "threads",
    "median_us", "baseline", "baseline_us", "bytes", "gbps", "copy_gbps", "ratio", "target", "pass",
    "repeats", "load1", "env",
]
# Environment that changes these numbers, recorded with them: THP_MEM_ALLOC_ENABLE=1 makes torch's
# CPU allocator ask for huge pages, which cuts the first-touch cost of large new outputs ~5x here;
# SPECDEC_CPU_SIMD=0 runs the scalar kernels (the code before the vector paths).
ENV_VARS = ("THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
            "SPECDEC_BACKEND", "SPECDEC_CPU_SIMD", "LD_PRELOAD")


# ----------------------------------------------------------------------------------------------
# The ops: inputs, the checked call, the bytes it must move


@dataclass
class Prepared:
    """One op at one shape, inputs built and the reference computed on the first rows."""

    call: Callable[[bool], Any]  # the public op (backend chosen by the caller); argument: check=
    verify: Callable[[Any], None]  # raises when the result differs from the reference
    must_move: Callable[[Any], int]  # bytes the call must move, from its result
    baseline: Callable[[], Any] | None = None  # goal 3's torch.softmax on the same rows


@dataclass(frozen=True)
class OpSpec:
    op: str
    variant: str
    has_check: bool
    group: str  # ops of one group share inputs; the caches are freed between groups
    prepare: Callable[[int, int], Prepared]

    @property
    def label(self) -> str:
        return f"{self.op}[{self.variant}]" if self.variant else self.op


_LOCAL_CACHE: dict[tuple, Any] = {}


def _cached(key: tuple, make: Callable[[], Any]) -> Any:
    if key not in _LOCAL_CACHE:
        _LOCAL_CACHE[key] = make()
    return _LOCAL_CACHE[key]


def _free_inputs() -> None:
    """Drop every cached input: the largest sets (trees at B = 64, V = 128256) are GBs."""
    _LOCAL_CACHE.clear()
    bench._INPUT_CACHE.clear()
    bench._REF_CACHE.clear()


def _rows(B: int) -> int:
    return min(B, bench.CHECK_ROWS)


def _chain(with_q: bool) -> Callable[[int, int], Prepared]:
    def prepare(B: int, V: int) -> Prepared:
        inp = bench.make_inputs(DEVICE, B, K, V, DTYPE)
        q = inp.q if with_q else None
        m = _rows(B)
        ref = reference.verify_chain(inp.x[:m], inp.p[:m], None if q is None else q[:m], seed=inp.seed[:m],
                                     offset=inp.offset, check=False)
        return Prepared(
            call=lambda check: sk.verify_chain(inp.x, inp.p, q, seed=inp.seed, offset=inp.offset,
                                               check=check),
            verify=lambda o: skt.check_chain(o, ref, K, V),
            must_move=lambda o: skt.chain_bytes(o.num_accepted, K, V, DTYPE, with_q),
        )

    return prepare


def _chain_greedy(B: int, V: int) -> Prepared:
    inp = bench.make_inputs(DEVICE, B, K, V, DTYPE)
    m = _rows(B)
    ref = reference.verify_chain_greedy(inp.x[:m], inp.z[:m], check=False)
    return Prepared(
        call=lambda check: sk.verify_chain_greedy(inp.x, inp.z, check=check),
        verify=lambda o: skt.check_chain(o, ref, K, V),
        must_move=lambda o: skt.greedy_bytes(o.num_accepted, K, V, DTYPE),
    )


def _sampling(variant: str) -> Callable[[int, int], Prepared]:
    def prepare(B: int, V: int) -> Prepared:
        # The logits of one verification step [B, K+1, V], as test_bench_sampling.py filters them.
        logits = bench.make_inputs(DEVICE, B, K, V, DTYPE).z
        kw = SAMPLING_VARIANTS[variant]
        R = B * (K + 1)
        # Per-row parameters (tensors of shape (R,)), as an engine batching requests passes them.
        per_row = {name: torch.full((R,), v, dtype=torch.int64 if name == "top_k" else torch.float32)
                   for name, v in kw.items()}
        temp_col = per_row["temperature"].reshape(B, K + 1, 1)
        head = logits.reshape(R, V)[: bench.CHECK_ROWS]
        ref = reference.sampling_probs(head, **kw, check=False)
        scaled = head.float() / TEMPERATURE
        return Prepared(
            call=lambda check: sk.sampling_probs(logits, **per_row, check=check),
            verify=lambda o: skt.check_probs(o, ref, scaled, float(kw.get("top_p", 1.0))),
            must_move=lambda o: skt.sampling_bytes(R, V, DTYPE),
            baseline=lambda: torch.softmax(logits.float() / temp_col, -1),
        )

    return prepare


def _gumbel(B: int, V: int) -> Prepared:
    logits = _cached(("logits", B, V), lambda: skt.make_logits(DEVICE, (B, V), DTYPE))
    seed = torch.arange(B, dtype=torch.int64) + 77
    offset = torch.zeros((), dtype=torch.int64)
    m = _rows(B)
    ref = reference.gumbel_topk(logits[:m], TOPK, temperature=TEMPERATURE, seed=seed[:m], offset=offset,
                                check=False)
    return Prepared(
        call=lambda check: sk.gumbel_topk(logits, TOPK, temperature=TEMPERATURE, seed=seed, offset=offset,
                                          check=check),
        verify=lambda o: skt.check_samples(o, ref),
        # outputs: tokens int64 + log_probs and scores float32 per slot
        must_move=lambda o: skt.row_k_bytes(B, V, TOPK, DTYPE, B * TOPK * 16),
    )


def _beam(B: int, V: int) -> Prepared:
    logits = skt.make_logits(DEVICE, (B, BEAMS, V), DTYPE, seed=1)
    g = torch.Generator().manual_seed(2)
    phi = -3.0 * torch.rand(B, BEAMS, generator=g)
    G = phi + torch.rand(B, BEAMS, generator=g)
    seed = torch.arange(B, dtype=torch.int64) + 5
    offset = torch.zeros((), dtype=torch.int64)
    m = _rows(B)
    ref = reference.stochastic_beam_step(logits[:m], phi[:m], G[:m], WIDTH, temperature=TEMPERATURE,
                                         seed=seed[:m], offset=offset, check=False)
    return Prepared(
        call=lambda check: sk.stochastic_beam_step(logits, phi, G, WIDTH, temperature=TEMPERATURE, seed=seed,
                                                   offset=offset, check=check),
        verify=lambda o: skt.check_samples(o, ref),
        # outputs: parents and tokens int64, log_probs and scores float32 per kept expansion
        must_move=lambda o: skt.row_k_bytes(B * BEAMS, V, WIDTH, DTYPE, B * WIDTH * 24),
    )


def _tree(B: int, V: int) -> Prepared:
    inp = bench.make_tree_inputs(DEVICE, B, TREE_N, V, DTYPE)
    m = _rows(B)
    ref = reference.verify_tree(inp.tokens[:m], inp.parents[:m], inp.p[:m], inp.q[:m], seed=inp.seed[:m],
                                offset=inp.offset, check=False)
    return Prepared(
        call=lambda check: sk.verify_tree(inp.tokens, inp.parents, inp.p, inp.q, seed=inp.seed,
                                          offset=inp.offset, check=check),
        verify=lambda o: skt.check_tree(o, ref),
        must_move=lambda o: skt.tree_bytes(o, inp.parents, V, DTYPE, True),
    )


def _tree_greedy(B: int, V: int) -> Prepared:
    inp = bench.make_tree_inputs(DEVICE, B, TREE_N, V, DTYPE)
    m = _rows(B)
    ref = reference.verify_tree_greedy(inp.tokens[:m], inp.parents[:m], inp.z[:m], check=False)
    return Prepared(
        call=lambda check: sk.verify_tree_greedy(inp.tokens, inp.parents, inp.z, check=check),
        verify=lambda o: skt.check_tree(o, ref),
        must_move=lambda o: skt.tree_greedy_bytes(o, TREE_N, V, DTYPE),
    )


def _entropy(B: int, V: int) -> Prepared:
    logits = _cached(("logits", B, V), lambda: skt.make_logits(DEVICE, (B, V), DTYPE))
    m = _rows(B)
    ref = reference.draft_entropy(logits[:m], temperature=TEMPERATURE)

    def verify(o: torch.Tensor) -> None:
        assert o.shape == (B,)
        torch.testing.assert_close(o[:m], ref, rtol=1e-4, atol=1e-4)

    return Prepared(
        call=lambda check: sk.draft_entropy(logits, temperature=TEMPERATURE, check=check),
        verify=verify,
        must_move=lambda o: skt.entropy_bytes(B, V, DTYPE),
    )


def _tvdpp(B: int, V: int) -> Prepared:
    N = LOSS_POSITIONS * B
    z = skt.make_logits(DEVICE, (N, V), DTYPE).requires_grad_(True)
    p = torch.softmax(skt.make_logits(DEVICE, (N, V), "float32", seed=1).float(), -1)

    def head_loss_grad(fn: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        zh = z[: bench.CHECK_ROWS].detach().clone().requires_grad_(True)
        loss = fn(zh, p[: bench.CHECK_ROWS], normalize="vocab")
        loss.backward()
        return loss.detach(), zh.grad

    want = head_loss_grad(reference.tvdpp_loss)

    def call(check: bool) -> torch.Tensor:  # no check argument: the losses validate shapes only
        z.grad = None
        loss = sk.tvdpp_loss(z, p, normalize="vocab")
        loss.backward()
        return loss

    def verify(out: torch.Tensor) -> None:
        # The timed call's value and gradient must be finite; the first rows, recomputed through
        # the same backend, must match the reference's value AND gradient (a wrong backward
        # kernel would otherwise time fine).
        assert out.dim() == 0 and bool(torch.isfinite(out))
        assert z.grad is not None and z.grad.shape == z.shape
        got = head_loss_grad(sk.tvdpp_loss)
        torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-6)

    # Must move: logits and teacher read once, the gradient written once. A fused forward +
    # backward can keep a row's statistics while the row is in cache, so the second read that
    # benchmarks/test_bench_losses.py counts is not a must.
    return Prepared(call=call, verify=verify, must_move=lambda o: skt.tvdpp_bytes(N, V, DTYPE, reads=1))


OPS: list[OpSpec] = [
    OpSpec("verify_chain", "", True, "chain", _chain(True)),
    OpSpec("verify_chain", "draft_probs=None", True, "chain", _chain(False)),
    OpSpec("verify_chain_greedy", "", True, "chain", _chain_greedy),
    *[OpSpec("sampling_probs", v, True, "chain", _sampling(v)) for v in SAMPLING_VARIANTS],
    OpSpec("gumbel_topk", f"k={TOPK}", True, "rows", _gumbel),
    OpSpec("draft_entropy", "", True, "rows", _entropy),
    OpSpec("stochastic_beam_step", f"W={BEAMS},width={WIDTH}", True, "beam", _beam),
    OpSpec("verify_tree", f"N={TREE_N}", True, "tree", _tree),
    OpSpec("verify_tree_greedy", f"N={TREE_N}", True, "tree", _tree_greedy),
    OpSpec("tvdpp_loss", f"fwd+bwd,N={LOSS_POSITIONS}B", False, "loss", _tvdpp),
]
OP_NAMES = sorted({s.op for s in OPS})


# ----------------------------------------------------------------------------------------------
# Timing


@dataclass
class Budget:
    """How long one measurement may take: repeats = seconds / (time of one round), clamped to
    [min_repeats, max_repeats], and cut (down to 3) where rounds of a slow op would exceed cap_s."""

    seconds: float
    min_repeats: int
    max_repeats: int
    cap_s: float
    copy_mib: int


FULL = Budget(seconds=0.25, min_repeats=5, max_repeats=100, cap_s=2.5, copy_mib=COPY_MIB)
QUICK = Budget(seconds=0.01, min_repeats=3, max_repeats=5, cap_s=0.5, copy_mib=QUICK_COPY_MIB)


@dataclass
class Timed:
    median_s: float
    repeats: int
    out: Any


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def measure(fns: dict[str, tuple[Callable[[], Any], int]], budget: Budget,
            verify: Callable[[str, Any], None] | None = None) -> dict[str, Timed]:
    """Medians of single calls of each ``name -> (fn, threads)``, interleaved call by call.

    Each fn is called once first (warm-up: first-touch page faults, lazy initialisation); that
    result is verified, and the round's time sizes the repeat count. Then every round calls each
    fn once, rotating the order so neither side always runs right after the other.
    """
    names = list(fns)
    first: dict[str, float] = {}
    outs: dict[str, Any] = {}
    for name in names:
        fn, n = fns[name]
        with _threads(n):
            t0 = time.perf_counter()
            outs[name] = fn()
            first[name] = time.perf_counter() - t0
        if verify is not None:
            verify(name, outs[name])
    round_s = max(sum(first.values()), 1e-9)
    repeats = max(budget.min_repeats, min(budget.max_repeats, int(budget.seconds / round_s)))
    repeats = max(3, min(repeats, int(budget.cap_s / round_s)))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            fn, n = fns[name]
            with _threads(n):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return {name: Timed(statistics.median(samples[name]), repeats, outs[name]) for name in names}


def copy_bandwidth(budget: Budget, fresh: bool = False) -> tuple[float, int, int]:
    """Single-thread ``dst.copy_(src)`` of ``budget.copy_mib`` MiB of float32: (median seconds,
    bytes read + written, repeats). The reference speed of goal 1.

    ``fresh``: ``src.clone()`` instead, i.e. into a new allocation every call. Not a yardstick, a
    fact to read the others by: blocks above glibc's mmap threshold (32 MiB at most) come from the
    kernel zeroed and are faulted in page by page on first write, several times slower than a
    copy, and an op returning a large new tensor (sampling_probs, the loss gradient) pays it."""
    n = budget.copy_mib * 2**20 // 4
    src = torch.arange(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    copy = Budget(budget.seconds * 4, max(budget.min_repeats, 5), 30, budget.cap_s * 4, budget.copy_mib)
    fn = src.clone if fresh else (lambda: dst.copy_(src))
    t = measure({"copy": (fn, 1)}, copy)["copy"]
    assert torch.equal(t.out, src)
    return t.median_s, 2 * n * 4, t.repeats


# ----------------------------------------------------------------------------------------------
# The run


def _passes(ratio: float, target: str) -> bool:
    bound = float(target[2:])
    return ratio <= bound if target.startswith("<=") else ratio >= bound


class Run:
    """The CSV rows of one run, its metadata (date, commit, device, torch, env) and copy bandwidths."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.meta = {"date": datetime.date.today().isoformat(), "commit": record.git_commit(HERE),
                     "device": bench.device_name(DEVICE), "torch": torch.__version__}
        self.env = " ".join(f"{k}={os.environ[k]}" for k in ENV_VARS if os.environ.get(k))
        self.rows: list[dict[str, Any]] = []
        self.copy_gbps: list[float] = []
        self.t0 = time.perf_counter()

    def add(self, goal: int | str, spec: OpSpec | None, B: int | None, V: int | None, threads: int,
            t: Timed | None, nbytes: int | None, baseline: str = "", baseline_s: float | None = None,
            ratio: float | None = None, target: str = "", op: str = "", variant: str = "") -> None:
        med = t.median_s if t else None
        row = {
            **self.meta, "goal": str(goal), "op": spec.op if spec else op,
            "variant": spec.variant if spec else variant, "B": B if B is not None else "",
            "V": V if V is not None else "", "dtype": DTYPE, "threads": threads,
            "median_us": f"{med * 1e6:.3f}" if med else "", "baseline": baseline,
            "baseline_us": f"{baseline_s * 1e6:.3f}" if baseline_s else "",
            "bytes": nbytes if nbytes is not None else "",
            "gbps": f"{nbytes / med / 1e9:.3f}" if nbytes and med else "",
            "copy_gbps": "",  # filled in at the end, from every copy measurement of the run
            "ratio": f"{ratio:.3f}" if ratio is not None else "", "target": target,
            "pass": ("yes" if _passes(ratio, target) else "no") if ratio is not None and target else "",
            "repeats": t.repeats if t else "", "load1": f"{os.getloadavg()[0]:.2f}", "env": self.env,
        }
        self.rows.append(row)
        label = row["op"] + (f"[{row['variant']}]" if row["variant"] else "")
        shape = f" B={B} V={V}" if B is not None else ""
        verdict = f" ratio {ratio:.2f} ({target}: {row['pass']})" if ratio is not None else ""
        gbps = f" {row['gbps']} GB/s" if row["gbps"] else ""
        self.log(f"[goal {goal}] {label}{shape} threads={threads}: {row['median_us']} us{gbps}{verdict} "
                 f"x{row['repeats']} load {row['load1']}")

    def log(self, line: str) -> None:
        """One progress line on stderr, with the seconds since the start of the run."""
        print(f"{time.perf_counter() - self.t0:6.1f}s {line}", file=sys.stderr, flush=True)

    def copy(self, when: str) -> float:
        """A copy measurement (``when`` = "start" or "end"; "clone": into a fresh allocation, not
        part of the copy bandwidth); returns its bytes per second."""
        med, nbytes, reps = copy_bandwidth(self.budget, fresh=when == "clone")
        if when != "clone":
            self.copy_gbps.append(nbytes / med / 1e9)
        self.add("copy", None, None, None, 1, Timed(med, reps, None), nbytes, op="copy",
                 variant=f"{self.budget.copy_mib}MiB,{when}")
        return nbytes / med

    def finish(self) -> None:
        """Goal 1's ratios against the median of the copy measurements (start and end of the run:
        the load of a shared machine drifts), and the copy bandwidth on every row."""
        bw = statistics.median(self.copy_gbps) * 1e9
        for row in self.rows:
            row["copy_gbps"] = f"{bw / 1e9:.3f}"
            if row["goal"] == "1":
                ratio = float(row["median_us"]) * 1e-6 / (int(row["bytes"]) / bw)
                row["ratio"] = f"{ratio:.3f}"
                row["pass"] = "yes" if _passes(ratio, row["target"]) else "no"


def _run_op(run: Run, spec: OpSpec, B: int, V: int, goals: set[int], everywhere: bool,
            copy_bps: float) -> None:
    """Every measurement of one op at one shape (``everywhere``: all goals, else each goal at its
    own shapes). Goal 1's ratio here is provisional (first copy measurement); finish() redoes it."""
    t0 = time.perf_counter()
    prep = spec.prepare(B, V)
    if time.perf_counter() - t0 > 1.0:  # input building shows up in the run time: say where it goes
        run.log(f"{spec.label} B={B} V={V}: inputs and reference in {time.perf_counter() - t0:.1f} s")
    budget = run.budget
    with sk.use_backend("cpu"):
        def verify(_name: str, out: Any) -> None:
            prep.verify(out)

        def op(check: bool = False, threads: int = 1) -> tuple[Callable[[], Any], int]:
            return (lambda: prep.call(check)), threads

        if 1 in goals:
            t = measure({"op": op()}, budget, verify)["op"]
            nbytes = prep.must_move(t.out)
            # provisional ratio against the first copy measurement (progress line); finish() sets it
            run.add(1, spec, B, V, 1, t, nbytes, "copy", nbytes / copy_bps, t.median_s * copy_bps / nbytes,
                    TARGETS[1])
        if 2 in goals and spec.has_check and (everywhere or (B, V) in CHECK_SHAPES):
            ts = measure({"check=True": op(True), "check=False": op(False)}, budget, verify)
            on, off = ts["check=True"], ts["check=False"]
            run.add(2, spec, B, V, 1, on, prep.must_move(on.out), "check=False", off.median_s,
                    on.median_s / off.median_s, TARGETS[2])
        if 3 in goals and prep.baseline is not None and (
                everywhere or (B, V) in BASELINE_SHAPES["sampling_probs"]):
            ts = measure({"op": op(), "softmax": (prep.baseline, 1)}, budget,
                         lambda name, o: prep.verify(o) if name == "op" else None)
            t, base = ts["op"], ts["softmax"]
            run.add(3, spec, B, V, 1, t, prep.must_move(t.out), "torch.softmax", base.median_s,
                    t.median_s / base.median_s, SAMPLING_TARGET)
        if 3 in goals and spec.op in REFERENCE_OPS and (everywhere or (B, V) in BASELINE_SHAPES["default"]):
            def ref_call() -> Any:
                with sk.use_backend("reference"):
                    return prep.call(False)

            ts = measure({"op": op(), "reference": (ref_call, 1)}, budget, verify)
            t, ref = ts["op"], ts["reference"]
            run.add(3, spec, B, V, 1, t, prep.must_move(t.out), "reference", ref.median_s,
                    ref.median_s / t.median_s, TARGETS[3])
        if 4 in goals and (everywhere or (B, V) in SCALING_SHAPES):
            ts = measure({"1 thread": op(threads=1), "2 threads": op(threads=2)}, budget, verify)
            one, two = ts["1 thread"], ts["2 threads"]
            run.add(4, spec, B, V, 2, two, prep.must_move(two.out), "1 thread", one.median_s,
                    one.median_s / two.median_s, TARGETS[4])


def run_all(ops: list[OpSpec], quick: bool, goals: set[int] | None = None,
            shapes: list[tuple[int, int]] | None = None) -> Run:
    """Measure ``ops`` for ``goals`` (default all): on the full grid, each goal at its shapes; or,
    with ``quick`` (one small shape) or explicit ``shapes`` (B, V), every goal at every shape."""
    goals = goals or {1, 2, 3, 4}
    run = Run(QUICK if quick else FULL)
    copy_bps = run.copy("start")
    run.copy("clone")
    everywhere = quick or shapes is not None
    shapes = shapes or ([QUICK_SHAPE] if quick else GRID)
    # Shapes outer, ops inner, grouped by shared inputs: each input set is built once for all goals
    # and freed before the next group (the B = 64, V = 128256 tree inputs alone are ~2 GB).
    for B, V in shapes:
        group = None
        for spec in ops:
            if spec.group != group:
                _free_inputs()
                group = spec.group
            _run_op(run, spec, B, V, goals, everywhere, copy_bps)
        _free_inputs()
    run.copy("end")
    run.finish()
    return run


def default_path(run: Run, out: str | None, quick: bool) -> str:
    """``--out`` as given when it names a .csv file, else cpu-speed-<device>-<date>-<commit>.csv in
    ``--out`` (default: benchmarks/results for a full run, a fresh temporary folder for --quick)."""
    if out and out.endswith(".csv"):
        return out
    folder = out or (tempfile.mkdtemp(prefix="cpu-speed-") if quick else os.path.join(HERE, "results"))
    m = run.meta
    return os.path.join(folder, f"cpu-speed-{record.slug(m['device'])}-{m['date']}-{m['commit']}.csv")


def write_csv(rows: list[dict[str, Any]], path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


# ----------------------------------------------------------------------------------------------
# Markdown summary (from the CSV, so the tables of docs/benchmarks.md are backed by a file)


def _label(r: dict[str, str]) -> str:
    return f"`{r['op']}`" + (f" {r['variant']}" if r["variant"] else "")


def _cell(r: dict[str, str]) -> str:
    return f"{float(r['ratio']):.2f}" + ("" if r["pass"] == "yes" else " ✗")


def _pivot(rows: list[dict[str, str]], key: Callable[[dict[str, str]], tuple[str, ...]], key_cols: list[str],
           col: Callable[[dict[str, str]], str]) -> list[str]:
    cols: list[str] = []
    table: dict[tuple[str, ...], dict[str, str]] = {}
    for r in rows:
        c = col(r)
        if c not in cols:
            cols.append(c)
        table.setdefault(key(r), {})[c] = _cell(r)
    out = ["| " + " | ".join(key_cols + cols) + " |",
           "|" + "|".join(["---"] * len(key_cols) + ["---:"] * len(cols)) + "|"]
    for k, cells in table.items():
        out.append("| " + " | ".join([*k, *(cells.get(c, "") for c in cols)]) + " |")
    return out


def _tally(rows: list[dict[str, str]]) -> str:
    ok = sum(r["pass"] == "yes" for r in rows)
    return f"{ok} of {len(rows)} meet the target."


def markdown(csv_path: str) -> str:
    """The summary tables of a cpu-speed CSV, one per goal (ratios; ✗ marks a missed target)."""
    rows = record.read_rows(csv_path)
    m = rows[0]
    copies = [r for r in rows if r["goal"] == "copy" and not r["variant"].endswith(",clone")]
    clones = [r for r in rows if r["goal"] == "copy" and r["variant"].endswith(",clone")]
    loads = [float(r["load1"]) for r in rows if r["load1"]]
    fresh = f" (into a fresh allocation: {float(clones[0]['gbps']):.2f} GB/s)" if clones else ""
    out = [f"_{m['device']} · torch {m['torch']} · commit {m['commit']} · {m['date']} · {m['dtype']} · "
           f"single-thread copy {float(m['copy_gbps']):.2f} GB/s (median of "
           f"{', '.join(r['gbps'] for r in copies)} GB/s, {copies[0]['variant'].split(',')[0]}){fresh} · "
           f"1-min load {min(loads):.2f}–{max(loads):.2f}" + (f" · {m['env']}" if m.get("env") else "") + "_",
           ""]
    by_goal = {g: [r for r in rows if r["goal"] == g] for g in ("1", "2", "3", "4")}
    if by_goal["1"]:
        out += ["**Goal 1** — op time / (must-move bytes at the copy bandwidth), 1 thread; target ≤ 4", ""]
        out += _pivot(by_goal["1"], lambda r: (_label(r), r["B"]), ["op", "B"], lambda r: f"V={r['V']}")
        out += ["", _tally(by_goal["1"]), ""]
    if by_goal["2"]:
        out += ["**Goal 2** — time with check=True / check=False, 1 thread; target ≤ 1.25", ""]
        out += _pivot(by_goal["2"], lambda r: (_label(r),), ["op"], lambda r: f"B={r['B']} V={r['V']}")
        out += ["", _tally(by_goal["2"]), ""]
    if by_goal["3"]:
        out += ["**Goal 3** — against torch.softmax (op / softmax, target ≤ 2) and the reference "
                "(reference / op, target ≥ 10), 1 thread", "",
                "| op | B | V | µs | baseline | baseline µs | ratio | target |",
                "|---|---:|---:|---:|---|---:|---:|---|"]
        for r in by_goal["3"]:
            out.append(f"| {_label(r)} | {r['B']} | {r['V']} | {float(r['median_us']):,.1f} | "
                       f"{r['baseline']} | {float(r['baseline_us']):,.1f} | {_cell(r)} | {r['target']} |")
        out += ["", _tally(by_goal["3"]), ""]
    if by_goal["4"]:
        out += ["**Goal 4** — speed-up of 2 threads over 1; target ≥ 1.7", ""]
        out += _pivot(by_goal["4"], lambda r: (_label(r),), ["op"], lambda r: f"B={r['B']} V={r['V']}")
        out += ["", _tally(by_goal["4"]), ""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------


def select_ops(names: str | None) -> list[OpSpec]:
    if not names:
        return list(OPS)
    want = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in want if n not in OP_NAMES]
    if unknown:
        raise SystemExit(f"--ops: unknown op(s) {', '.join(unknown)}; known: {', '.join(OP_NAMES)}")
    return [s for s in OPS if s.op in want]


def main(argv: list[str] | None = None) -> int:
    """Run the yardstick and print its summary (or print a CSV's summary); the CSV path goes to stderr."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="one small shape per op, few repeats (a smoke test; not written to results/)")
    ap.add_argument("--ops", help=f"comma list of ops to run (default all: {', '.join(OP_NAMES)})")
    ap.add_argument("--goals", default="1,2,3,4", help="comma list of goals to measure (default all)")
    ap.add_argument("--shapes", help="comma list of BxV (e.g. 8x32000,64x128256) measured for every goal "
                    "instead of the grid (a targeted re-measurement)")
    ap.add_argument("--out", help="CSV file (*.csv) or folder (default: benchmarks/results, or a temporary "
                    "folder with --quick)")
    ap.add_argument("--markdown", metavar="CSV", help="print the summary tables of a cpu-speed CSV")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(args.markdown), end="")
        return 0
    try:
        goals = {int(g) for g in args.goals.split(",") if g.strip()}
    except ValueError:
        ap.error("--goals: comma list of 1, 2, 3, 4")
    if not goals <= {1, 2, 3, 4}:
        ap.error("--goals: comma list of 1, 2, 3, 4")
    shapes = None
    if args.shapes:
        try:
            shapes = [(int(b), int(v)) for b, v in (x.lower().split("x") for x in args.shapes.split(","))]
        except ValueError:
            ap.error("--shapes: comma list of BxV, e.g. 8x32000,64x128256")
    ops = select_ops(args.ops)
    t0 = time.perf_counter()
    run = run_all(ops, args.quick, goals, shapes)
    path = write_csv(run.rows, default_path(run, args.out, args.quick))
    print(f"{len(run.rows)} measurements in {time.perf_counter() - t0:.0f} s -> {path}", file=sys.stderr)
    print(markdown(path), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
