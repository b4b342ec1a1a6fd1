"""Shared machinery of the specdec_kernels microbenchmarks (pytest-benchmark).

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
import math
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
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
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
        if d not in _DTYPES:
            raise pytest.UsageError(f"SPECDEC_BENCH_DTYPES: unknown dtype {d!r} (use {', '.join(_DTYPES)})")
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
# Inputs


@dataclass
class Inputs:
    """Chain inputs of one shape: drafts x [B,K], target probs p [B,K+1,V], draft probs q [B,K,V],
    target logits z [B,K+1,V] (p = softmax(z)), per-row seed tensor [B], offset tensor []."""

    x: torch.Tensor
    p: torch.Tensor
    q: torch.Tensor
    z: torch.Tensor
    seed: torch.Tensor
    offset: torch.Tensor


_INPUT_CACHE: dict[tuple, Inputs] = {}
# Inputs are kept across benchmarks (each test function walks the whole grid, so an input set is
# needed once per op) up to this many bytes; the oldest go first.
INPUT_CACHE_BYTES = 4 * 2**30 if torch.cuda.is_available() else 2 * 2**30


def _nbytes(inp: Any) -> int:
    return sum(t.numel() * t.element_size() for t in vars(inp).values() if isinstance(t, torch.Tensor))


def make_inputs(device: str, B: int, K: int, V: int, dtype: str, seed: int = 0) -> Inputs:
    """Realistic chain inputs, cached (see ``INPUT_CACHE_BYTES``).

    Target rows look like a language model's: a flat background (2 * N(0,1) logits) plus one mode
    whose probability is spread over about [0.1, 0.98] across rows. The draft is the target with
    N(0,1) logit noise, and drafts are sampled from it. Acceptance then varies per request, so
    rejections land at every position and some requests accept everything (bonus row).
    """
    key = (device, B, K, V, dtype, seed)
    if key in _INPUT_CACHE:
        return _INPUT_CACHE[key]
    need = 4 * B * (K + 1) * V * 4  # about what the new set and its temporaries take
    while _INPUT_CACHE and sum(map(_nbytes, _INPUT_CACHE.values())) + need > INPUT_CACHE_BYTES:
        del _INPUT_CACHE[next(iter(_INPUT_CACHE))]
    g = torch.Generator(device=device).manual_seed(seed)
    z = 2.0 * torch.randn(B, K + 1, V, generator=g, device=device)
    mode = torch.randint(0, V, (B, K + 1, 1), generator=g, device=device)
    # background mass is about V * e^2, so a mode logit of log(V) + 2 + c gets probability ~sigmoid(c)
    c = torch.rand(B, K + 1, 1, generator=g, device=device) * 6.0 - 2.0
    z.scatter_add_(-1, mode, math.log(V) + 2.0 + c)
    p = torch.softmax(z, -1)
    q = torch.softmax(z[:, :K] + torch.randn(B, K, V, generator=g, device=device), -1)
    x = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, K)
    dt = _DTYPES[dtype]
    inp = Inputs(
        x=x,
        p=p.to(dt),
        q=q.to(dt),
        z=z.to(dt),
        seed=torch.arange(B, dtype=torch.int64, device=device) + 1234,
        offset=torch.zeros((), dtype=torch.int64, device=device),
    )
    _INPUT_CACHE[key] = inp
    return inp


# ----------------------------------------------------------------------------------------------
# Bytes that must move


def elt(dtype: str) -> int:
    return torch.empty((), dtype=_DTYPES[dtype]).element_size()


def chain_bytes(num_accepted: torch.Tensor, K: int, V: int, dtype: str, draft_probs: bool) -> int:
    """Bytes verify_chain must move, from its actual result.

    Per request with n accepted drafts: the drafts read until the first rejection (min(n+1, K)
    int64), seed and offset (2 int64), two scalars p(x), q(x) per accepted draft (one without
    draft_probs), then ONE full row: the rejected row of p, plus the same row of q when the
    residual max(0, p - q) needs it, or the bonus row of p when everything was accepted; finally
    the outputs (K+1 tokens and num_accepted, int64).
    """
    e = elt(dtype)
    total = 0
    for n in num_accepted.tolist():
        total += min(n + 1, K) * 8 + 2 * 8
        total += n * (2 if draft_probs else 1) * e
        rows = 2 if (draft_probs and n < K) else 1
        total += rows * V * e
        total += (K + 1) * 8 + 8
    return total


def greedy_bytes(num_accepted: torch.Tensor, K: int, V: int, dtype: str) -> int:
    """Bytes verify_chain_greedy must move: an argmax needs the full row, so the n+1 rows up to the
    first mismatch (or the bonus row), the drafts compared (min(n+1, K)), and the outputs."""
    e = elt(dtype)
    return sum((n + 1) * V * e + min(n + 1, K) * 8 + (K + 1) * 8 + 8 for n in num_accepted.tolist())


def make_logits(device: str, shape: tuple[int, ...], dtype: str, seed: int = 0) -> torch.Tensor:
    """Drafter-like logits: 2 * N(0, 1) plus a few strong modes per row (top-k has real winners)."""
    g = torch.Generator(device=device).manual_seed(seed)
    z = 2.0 * torch.randn(*shape, generator=g, device=device)
    V = shape[-1]
    modes = torch.randint(0, V, (*shape[:-1], 4), generator=g, device=device)
    z.scatter_add_(-1, modes, torch.full(modes.shape, math.log(V), device=device))
    return z.to(_DTYPES[dtype])


def row_k_bytes(rows: int, V: int, k: int, dtype: str, outputs: int) -> int:
    """Sampling without replacement: every row read once; ``outputs`` [*, k] tensors of 8 or 4
    bytes written (tokens int64, log_probs and scores float32; parents int64 for SBS)."""
    return rows * V * elt(dtype) + outputs


def check_same_samples(out: tuple, ref: tuple, int_fields: int) -> None:
    """The first ``int_fields`` fields (tokens, parents) equal to the reference on its rows, the
    float fields close (float32 log-sum-exp rounding)."""
    m = ref[0].shape[0]
    for i, (o, r) in enumerate(zip(out, ref, strict=True)):
        o = o[:m].cpu()
        if i < int_fields:
            assert torch.equal(o, r.cpu()), f"field {i} differs from the reference"
        else:
            torch.testing.assert_close(o, r.cpu(), rtol=1e-5, atol=1e-4)


@dataclass
class TreeInputs:
    """Tree inputs of one shape: a complete binary tree in BFS order (parents[i] = (i-1) // 2)
    whose siblings are distinct tokens drawn WITHOUT replacement (Gumbel-top-2) from the draft row
    of their parent; target probs p, draft probs q and target logits z [B, N, V]; seed tensor [B]."""

    tokens: torch.Tensor
    parents: torch.Tensor
    p: torch.Tensor
    q: torch.Tensor
    z: torch.Tensor
    seed: torch.Tensor
    offset: torch.Tensor


def make_tree_inputs(device: str, B: int, N: int, V: int, dtype: str) -> TreeInputs:
    """Realistic tree inputs: rows as in :func:`make_inputs` (one node per row), cached with it."""
    key = ("tree", device, B, N, V, dtype)
    if key in _INPUT_CACHE:
        return _INPUT_CACHE[key]
    base = make_inputs(device, B, N - 1, V, dtype, seed=7)  # p, z: [B, N, V]; q: [B, N-1, V]
    z = base.z.float()
    g = torch.Generator(device=device).manual_seed(8)
    q = torch.softmax(z + torch.randn(B, N, V, generator=g, device=device), -1)
    parents = ((torch.arange(N, device=device) - 1) // 2).expand(B, N).contiguous()
    parents[:, 0] = -1
    tokens = torch.zeros(B, N, dtype=torch.long, device=device)
    for n in range((N - 1 + 1) // 2):  # internal nodes: children 2n+1, 2n+2
        kids = [c for c in (2 * n + 1, 2 * n + 2) if c < N]
        if not kids:
            continue
        u = torch.rand(B, V, generator=g, device=device).clamp_min(1e-20)
        tokens[:, kids] = torch.topk(torch.log(q[:, n]) - torch.log(-torch.log(u)), len(kids), -1).indices
    dt = _DTYPES[dtype]
    inp = TreeInputs(tokens=tokens, parents=parents, p=base.p, q=q.to(dt), z=base.z,
                     seed=torch.arange(B, dtype=torch.int64, device=device) + 99,
                     offset=torch.zeros((), dtype=torch.int64, device=device))
    _INPUT_CACHE[key] = inp
    return inp


def tree_bytes(out: sk.TreeResult, parents: torch.Tensor, V: int, dtype: str, draft_probs: bool) -> int:
    """Bytes tree verification must move, from its actual result (a lower bound for every method).

    Per request: the tree (parents and tokens, int64), seed and offset, the scalars p(x) (and q(x))
    of each child tested on the accepted path, ONE full row for the final token (the row of p
    where it stopped, plus that row of q for a correction from the residual; the bonus at a leaf
    needs p only), and the outputs (2N + 1 int64). The residual-mass passes RSD needs after a
    rejection followed by a sibling are extra work of the method, not counted.
    """
    e = elt(dtype)
    B, N = parents.shape
    par = parents.cpu()
    nacc = out.num_accepted.cpu().tolist()
    nodes = out.accepted_nodes.cpu()
    total = 0
    for b in range(B):
        n = nacc[b]
        last = int(nodes[b, n - 1]) if n > 0 else 0
        path = [0] + nodes[b, :n].tolist()
        tested = sum(int((par[b] == v).sum()) for v in path)
        has_kids = bool((par[b] == last).any())
        total += 2 * N * 8 + 2 * 8 + tested * (2 if draft_probs else 1) * e
        total += (2 if (draft_probs and has_kids) else 1) * V * e
        total += (2 * N + 1) * 8
    return total


def tree_greedy_bytes(out: sk.TreeResult, N: int, V: int, dtype: str) -> int:
    """Greedy tree verification: the argmax of every row on the accepted path (n + 1 rows), the
    tree (parents and tokens), and the outputs."""
    e = elt(dtype)
    return sum((n + 1) * V * e + 2 * N * 8 + (2 * N + 1) * 8 for n in out.num_accepted.tolist())


def check_tree(out: sk.TreeResult, ref: sk.TreeResult) -> None:
    """Equal to the reference on the rows it was computed for (all three fields)."""
    m = ref.tokens.shape[0]
    for name, o, r in zip(out._fields, out, ref, strict=True):
        assert torch.equal(o[:m].cpu(), r.cpu()), f"{name} differs from the reference"


def sampling_bytes(rows: int, V: int, dtype: str) -> int:
    """sampling_probs: the logits read once, the float32 probabilities written once."""
    return rows * V * (elt(dtype) + 4)


# ----------------------------------------------------------------------------------------------
# Correctness before timing

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



def check_chain(out: sk.ChainResult, ref: sk.ChainResult, K: int, V: int) -> None:
    """Well-formed on every row; equal to the reference on the rows it was computed for."""
    n = out.num_accepted
    assert out.tokens.shape[1] == K + 1
    assert bool(((n >= 0) & (n <= K)).all()), "num_accepted out of [0, K]"
    pos = torch.arange(K + 1, device=n.device)[None, :]
    emitted = pos <= n[:, None]
    t = out.tokens
    assert bool(((t >= 0) & (t < V) | ~emitted).all()), "an emitted token is out of [0, V)"
    assert bool(((t == -1) | emitted).all()), "tokens after the emitted ones must be -1"
    m = ref.tokens.shape[0]
    assert torch.equal(out.tokens[:m].cpu(), ref.tokens.cpu()), "tokens differ from the reference"
    assert torch.equal(out.num_accepted[:m].cpu(), ref.num_accepted.cpu()), "num_accepted differs"


def check_probs(out: torch.Tensor, ref: torch.Tensor, scaled: torch.Tensor, top_p: float = 1.0) -> None:
    """Rows sum to 1 everywhere; the first rows match the reference.

    ``scaled``: the float32 logits / temperature of the reference's rows. The tolerance is 1e-5
    or twice what PyTorch's own float32 softmax loses against float64 on those rows, whichever is
    larger: the reference is computed in float64, and a kernel that accumulates in float32 (as
    torch.softmax does) is legitimately ~5e-5 off at V=128256.

    For the same reason top-p (without top-k) may keep a token the reference drops, or the
    reverse, when the token's preceding mass is within that rounding of top_p. Such a flip is
    accepted only for tokens whose float64 preceding mass is within 1e-4 of top_p; the kept
    probabilities are then compared after renormalising both rows on the tokens both keep.
    """
    flat = out.reshape(-1, out.shape[-1])
    assert out.dtype == torch.float32
    sums = flat.sum(-1, dtype=torch.float64)
    assert bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3)), "rows do not sum to 1"
    x = scaled.detach().cpu()
    p64 = torch.softmax(x.double(), -1)
    torch_err = (torch.softmax(x, -1).double() - p64).abs().max().item()
    tol = max(1e-5, 2 * torch_err)
    got = flat[: ref.shape[0]].cpu()
    ref = ref.cpu()
    flips = (got > 0) != (ref > 0)
    if bool(flips.any()) and top_p < 1.0:
        for r, i in flips.nonzero().tolist():
            preceding = p64[r][p64[r] > p64[r, i]].sum().item()
            assert abs(preceding - top_p) < 1e-4, (
                f"row {r}: token {i} kept by one of kernel/reference only, but its preceding mass "
                f"{preceding:.6f} is not at the top_p={top_p} boundary"
            )
        both = (got > 0) & (ref > 0)
        got = torch.where(both, got, 0.0)
        ref = torch.where(both, ref, 0.0)
        got = got / got.sum(-1, keepdim=True)
        ref = ref / ref.sum(-1, keepdim=True)
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------------
# Timing


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _graph(fn: Callable[[], Any], calls: int) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Capture ``calls`` calls of fn in one CUDA graph (after a warm-up on a side stream, as
    torch.cuda.graphs requires); returns the graph and the output of the last captured call."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            out = fn()
    return g, out


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
            g, out = _graph(fn, calls)
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
            _sync(case.device)
            check(out)
            timing = "not timed (--benchmark-disable)"
        else:
            t0 = time.perf_counter()
            out = fn()  # warm-up, and the result that is checked before timing
            _sync(case.device)
            first_s = time.perf_counter() - t0
            check(out)
            if case.backend == "reference":
                # A slow Python loop: a few rounds, sized from the first call, keep runs short.
                rounds = max(3, min(50, int(1.0 / max(first_s, 1e-6))))

                def timed_ref() -> Any:
                    r = fn()
                    _sync(case.device)
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
