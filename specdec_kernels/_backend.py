"""Which backends exist here, and which one runs an op.

Backends: ``reference`` (plain PyTorch, everywhere), ``cpu`` (C++ in ``_C``, CPU tensors),
``triton`` (CUDA tensors; CPU tensors too under ``TRITON_INTERPRET=1``), ``cuda`` (C++/CUDA in
``_C``, CUDA tensors). ``SPECDEC_BACKEND`` or :func:`use_backend` forces one; otherwise CPU tensors
go to ``cpu`` and CUDA tensors to the backend measured fastest for that op (``CUDA_DEFAULTS``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import warnings

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")

# Fastest measured backend per op on CUDA tensors (H100, benchmarks/results/
# nvidia-h100-80gb-hbm3-2026-11-22-a073ef5.csv; numbers in docs/benchmarks.md):
#   verify_chain         cuda   (7.6 vs 9.1 us at B=16 K=5 V=32000; 44 vs 76 us at B=64 K=8 V=128256)
#   verify_chain_greedy  triton (5.9 vs 9.1 us at B=16 K=5 V=32000; 100 vs 111 us at B=64 K=8 V=128256)
#   sampling_probs       cuda   (top-k 44 vs 84 us, temperature-only equal or faster; triton is 2x
#                                faster with top-p at V=32000, equal at V=128256)
#   gumbel_topk,         triton (not measured yet: the CUDA kernels compile in CI but have not
#   stochastic_beam_step         run on a GPU; Triton's have run through the interpreter)
#   verify_tree, verify_tree_greedy, tree_attention_mask, tree_position_ids
#                        triton (same reason: csrc/cuda/tree.cu compiles but has not run)
#   draft_entropy        triton (same reason: csrc/cuda/entropy.cu)
#   divergence           triton (the distillation losses have Triton kernels only; "cuda" runs them too)
#   tree_attention       triton (no CUDA kernel; "cuda" runs the Triton one too)
# An op missing here defaults to "cuda" when compiled, else "triton".
CUDA_DEFAULTS: dict[str, str] = {
    "verify_chain": "cuda",
    "verify_chain_greedy": "triton",
    "sampling_probs": "cuda",
    "gumbel_topk": "triton",
    "stochastic_beam_step": "triton",
    "verify_tree": "triton",
    "verify_tree_greedy": "triton",
    "tree_attention_mask": "triton",
    "tree_position_ids": "triton",
    "draft_entropy": "triton",
    "divergence": "triton",
    "tree_attention": "triton",
}

_override: str | None = None


@functools.cache
def cpp_status() -> tuple[bool, bool, str]:
    """(compiled extension loaded, built with CUDA kernels, message)."""
    if importlib.util.find_spec(f"{__package__}._C") is None:
        return False, False, ("specdec_kernels._C is not built (pip install --no-build-isolation -e .); "
                              "only the reference and Triton backends are available")
    try:
        from . import _C  # noqa: F401
    except ImportError as e:  # built, but against another torch or missing a library
        return False, False, f"specdec_kernels._C failed to load: {e}"
    try:
        from . import _build_info as info
    except ImportError:
        return True, False, "specdec_kernels._C loaded (no build info)"
    msg = f"built against torch {info.TORCH_VERSION}"
    if info.TORCH_VERSION.split("+")[0] != torch.__version__.split("+")[0]:
        warnings.warn(
            f"specdec_kernels._C was built against torch {info.TORCH_VERSION} but torch "
            f"{torch.__version__} is loaded; rebuild (pip install --no-build-isolation .) if ops fail",
            RuntimeWarning,
            stacklevel=2,
        )
        msg += f" (loaded: {torch.__version__})"
    if info.WITH_CUDA:
        msg += f"; CUDA kernels for sm_{', sm_'.join(info.CUDA_ARCHS)}"
    else:
        msg += f"; CPU kernels only ({getattr(info, 'CUDA_REASON', 'built without CUDA')})"
    return True, bool(info.WITH_CUDA), msg


@functools.cache
def triton_importable() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # a broken triton install must not break the library
        return False
    return True


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(device: torch.device | str) -> list[str]:
    """Backends that can run ops on tensors of ``device``."""
    device = torch.device(device)
    have_cpp, have_cuda_kernels, _ = cpp_status()
    out = ["reference"]
    if device.type == "cpu":
        if have_cpp:
            out.append("cpu")
        if triton_importable() and triton_interpret():
            out.append("triton")
    elif device.type == "cuda":
        if triton_importable() and not triton_interpret():
            out.append("triton")
        if have_cpp and have_cuda_kernels:
            out.append("cuda")
    return out


def forced() -> str | None:
    """The backend forced by use_backend() or SPECDEC_BACKEND, if any."""
    if _override is not None:
        return _override
    env = os.environ.get("SPECDEC_BACKEND", "").strip().lower()
    if not env:
        return None
    if env not in BACKENDS:
        raise ValueError(f"SPECDEC_BACKEND must be one of {', '.join(BACKENDS)}, got {env!r}")
    return env


def select(op: str, device: torch.device) -> str:
    """The backend that runs ``op`` on tensors of ``device``."""
    if _override is None and device.type == "cpu" and not os.environ.get("SPECDEC_BACKEND"):
        # The common case, without building the list of available backends: a CPU op call costs
        # a few microseconds in all, and this was a third of them.
        return "cpu" if cpp_status()[0] else "reference"
    avail = available(device)
    want = forced()
    if want is not None:
        if want not in avail:
            hint = ""
            if want == "triton" and device.type == "cpu":
                hint = " (Triton runs on CPU tensors only with TRITON_INTERPRET=1 set before import)"
            elif want in ("cpu", "cuda") and not cpp_status()[0]:
                hint = f" ({cpp_status()[2]})"
            raise ValueError(
                f"backend {want!r} cannot run {op} on {device.type} tensors here{hint}; "
                f"available: {', '.join(avail)}"
            )
        return want
    if device.type == "cpu":
        return "cpu" if "cpu" in avail else "reference"
    pref = CUDA_DEFAULTS.get(op)
    for b in ([pref] if pref else []) + ["cuda", "triton", "reference"]:
        if b in avail:
            return b
    return "reference"


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force a backend inside a ``with`` block (``None`` restores automatic selection)."""
    global _override
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    old, _override = _override, name
    try:
        yield
    finally:
        _override = old


#: Names of the cpu backend's vector levels (csrc/cpu/simd.h).
CPU_SIMD_LEVELS = ("scalar", "avx2", "avx512")


def cpu_simd_level(*, supported: bool = False) -> int:
    """The vector level the cpu backend's C++ kernels run at: 0 scalar, 1 AVX2 (+FMA, F16C),
    2 AVX-512 for the Philox draws. ``supported=True`` gives the best level this CPU has instead
    of the current one (``SPECDEC_CPU_SIMD=0|1|2`` caps the starting level). -1 without the
    compiled extension. Every level gives the same tokens; sums and probabilities agree within
    float32 rounding."""
    if not cpp_status()[0]:
        return -1
    return int(torch.ops.specdec.cpu_simd(-2 if supported else -1))


@contextlib.contextmanager
def use_cpu_simd(level: int | str | None):
    """Run the cpu backend's kernels at a lower vector level inside a ``with`` block (tests and
    benchmarks compare the levels); ``None`` leaves the level as it is. A level above what the CPU
    supports is capped."""
    if level is None or not cpp_status()[0]:
        yield
        return
    if isinstance(level, str):
        if level not in CPU_SIMD_LEVELS:
            raise ValueError(f"level must be one of {', '.join(CPU_SIMD_LEVELS)} or 0-2, got {level!r}")
        level = CPU_SIMD_LEVELS.index(level)
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 2:
        raise ValueError(f"level must be 0, 1 or 2 (or a name in {CPU_SIMD_LEVELS}), got {level!r}")
    old = int(torch.ops.specdec.cpu_simd(level))
    try:
        yield
    finally:
        torch.ops.specdec.cpu_simd(old)
