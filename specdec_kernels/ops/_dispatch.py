"""The one registration mechanism: every op is ``torch.ops.specdec.<name>``, with one schema
(csrc/registration.cpp), one fake (from its contract) and one implementation per backend.

How a call is routed:
- The dispatcher routes by device. Its CPU kernel is the C++ cpu kernel; its CUDA kernel is the op's
  chosen GPU implementation: the C++ CUDA kernel, or the Triton launcher where Triton is the chosen one
  (``_backend.CUDA_DEFAULTS``) or the only one. :func:`install` registers the Triton launchers as CUDA
  kernels of the same ops, so torch.compile and CUDA graphs see one opaque op either way.
- ``use_backend`` / ``SPECDEC_BACKEND`` (tests and benchmarks compare backends) may ask for an
  implementation the dispatcher does not hold for that device: the reference, Triton under the
  interpreter on CPU tensors, or a compiled CUDA kernel shadowed by Triton. :func:`call` then runs
  that implementation directly, with the same canonical arguments.

Implementations are named lazily ("module:function" under specdec_kernels) so that importing the
package does not import triton (about a second) until an op runs on it.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from .. import _backend

#: The implementation is the C++ kernel the extension registers with torch's dispatcher.
COMPILED = "compiled"


@dataclass(frozen=True)
class Op:
    """One op: its contract (fake, value check) and where each backend's implementation lives.

    ``reference`` / ``triton`` / ``cpu`` / ``cuda``: "module:function" relative to specdec_kernels,
    :data:`COMPILED`, or None (no such implementation). Python implementations take the canonical
    arguments without ``check``; compiled ones take ``check`` last (``has_check``) and validate the
    values they read themselves (the cpu kernels; the CUDA kernels ignore it).
    ``select_as``: the name ``_backend.select`` knows the op by (both rules of an op share one).
    """

    name: str
    fake: Callable[..., Any]
    reference: str
    triton: str | None = None
    cpu: str | None = COMPILED
    cuda: str | None = COMPILED
    check_values: Callable[..., None] | None = None
    has_check: bool = True
    select_as: str = ""
    device_arg: int = 1

    def impl(self, backend: str) -> str | None:
        return getattr(self, backend)


OPS: dict[str, Op] = {}
_kernels: dict[tuple[str, str, str], Callable[..., Any]] = {}
_compiled_cuda: dict[str, Any] = {}  # op -> the C++ CUDA kernel, captured before Triton shadows it
_triton_on_cuda: set[str] = set()  # ops whose dispatcher CUDA kernel is the Triton launcher
_library: torch.library.Library | None = None


def register(op: Op) -> Op:
    if op.name in OPS:
        raise RuntimeError(f"op {op.name} is registered twice")
    OPS[op.name] = op if op.select_as else _with_select_name(op)
    return OPS[op.name]


def _with_select_name(op: Op) -> Op:
    return replace(op, select_as=op.name)


def _resolve(target: str) -> Callable[..., Any]:
    module, _, fn = target.partition(":")
    return getattr(importlib.import_module(f"{__package__.rpartition('.')[0]}.{module}"), fn)


def _has_schema(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"specdec::{name}", "")
    except RuntimeError:
        return False
    return True


def _lazy_launcher(target: str, drop_check: bool) -> Callable[..., Any]:
    """A dispatcher kernel that imports its Triton module on first call (importing triton costs
    about a second, which a CPU-only user should not pay at ``import specdec_kernels``)."""
    resolved: list[Callable[..., Any]] = []

    def kernel(*args):
        if not resolved:
            resolved.append(_resolve(target))
        return resolved[0](*args[:-1]) if drop_check else resolved[0](*args)

    return kernel


def gpu_choice(op: Op) -> str:
    """The implementation the dispatcher's CUDA kernel of ``op`` is: "cuda" or "triton"."""
    have_cuda = op.cuda == COMPILED and op.name in _compiled_cuda
    pref = _backend.CUDA_DEFAULTS.get(op.select_as, "cuda")
    # find_spec, not an import: triton loads on the first CUDA call that needs it, not at import time
    if op.triton is not None and (pref == "triton" or not have_cuda) and \
            importlib.util.find_spec("triton") is not None:
        return "triton"
    return "cuda"


def install() -> None:
    """Register every op's fake and, where Triton is the chosen GPU implementation, its launcher as
    the op's CUDA kernel. Runs once, after the compiled extension (which holds the schemas) loaded;
    an op missing from an extension built from an older checkout is reported once."""
    global _library
    if _library is not None:
        return
    _library = torch.library.Library("specdec", "IMPL")
    missing = []
    for op in OPS.values():
        if not _has_schema(op.name):
            missing.append(op.name)
            continue
        qual = f"specdec::{op.name}"
        torch.library.register_fake(qual)(op.fake)
        if torch._C._dispatch_has_kernel_for_dispatch_key(qual, "CUDA"):
            _compiled_cuda[op.name] = torch.library.get_kernel(qual, "CUDA")
        if gpu_choice(op) == "triton":
            _library.impl(op.name, _lazy_launcher(op.triton, op.has_check), "CUDA")
            _triton_on_cuda.add(op.name)
    if missing:
        warnings.warn(
            f"specdec_kernels._C does not define {', '.join(missing)}: it was built from an older "
            "checkout; rebuild it (pip install --no-build-isolation -e .). Until then those ops "
            "fail on the cpu/cuda backends (use_backend('reference') or 'triton' still work).",
            RuntimeWarning, stacklevel=3)


def _dispatcher_op(op: Op) -> Callable[..., Any]:
    return getattr(torch.ops.specdec, op.name).default


def _python(target: str, op: Op) -> Callable[..., Any]:
    # Looked up at each call, not bound once: tests replace implementations with monkeypatch.
    module, _, name = target.partition(":")
    mod = importlib.import_module(f"{__package__.rpartition('.')[0]}.{module}")
    if op.has_check:
        return lambda *a: getattr(mod, name)(*a[:-1])
    return lambda *a: getattr(mod, name)(*a)


def _kernel(op: Op, backend: str, device_type: str) -> Callable[..., Any]:
    """The callable that runs ``op`` on ``backend`` for tensors of ``device_type``; it takes the
    canonical arguments plus ``check`` when the schema has one."""
    key = (op.name, backend, device_type)
    fn = _kernels.get(key)
    if fn is not None:
        return fn
    on_cuda = device_type == "cuda"
    target = op.impl(backend)
    if backend == "reference":
        fn = _python(op.reference, op)
    elif backend == "triton":
        fn = _dispatcher_op(op) if on_cuda and op.name in _triton_on_cuda else _python(op.triton, op)
    elif backend == "cuda" and target == COMPILED and op.name in _compiled_cuda:
        if op.name in _triton_on_cuda:  # the dispatcher holds Triton: call the shadowed C++ kernel
            compiled, keys = _compiled_cuda[op.name], torch._C._dispatch_keyset_full()
            fn = (lambda *a: compiled.call_boxed(keys, *a))
        else:
            fn = _dispatcher_op(op)
    elif backend == "cuda":  # no compiled CUDA kernel for this op: Triton serves CUDA tensors
        fn = _dispatcher_op(op) if op.name in _triton_on_cuda else _python(op.triton, op)
    elif target == COMPILED:
        fn = _dispatcher_op(op)
    else:
        fn = _python(target, op)
    _kernels[key] = fn
    return fn


def call(name: str, args: tuple, check: bool = False, backend: str | None = None):
    """Run op ``name`` on canonical ``args`` with the backend ``_backend.select`` picks (or
    ``backend``, for an op that must run one implementation, e.g. float64 losses on the reference).

    ``check``: run the value checks; the cpu kernels do them as they read (the C++ twin of the
    Python checks, csrc/common/checks.cpp), every other backend gets them here first."""
    op = OPS[name]
    device = args[op.device_arg].device
    backend = backend or _backend.select(op.select_as, device)
    kernel_checks = backend == "cpu" and op.cpu == COMPILED
    if check and not kernel_checks and op.check_values is not None:
        op.check_values(*args)
    fn = _kernels.get((name, backend, device.type)) or _kernel(op, backend, device.type)
    if op.has_check:
        return fn(*args, check and kernel_checks)
    return fn(*args)
