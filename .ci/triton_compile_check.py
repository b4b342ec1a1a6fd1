"""Compile every Triton kernel of specdec_kernels for sm_90, without a GPU.

Each module under ``specdec_kernels/triton/`` lists ``COMPILE_CHECKS``: tuples
``(jit_function, signature, constexprs)`` describing one representative specialisation of each of
its kernels (signature: argument name -> Triton type string such as ``"*fp32"`` or ``"i32"``;
constexprs: argument name -> value). This script builds an ``ASTSource`` for each and runs
``triton.compile`` for ``GPUTarget("cuda", 90, 32)`` down to a cubin (ptxas ships with Triton), so
type errors, unsupported ops and layout failures surface in CI machines that have no GPU. It prints
one line per kernel and exits non-zero if any failed.

Run it WITHOUT ``TRITON_INTERPRET`` (interpreted kernels are not JITFunctions and cannot compile):

    python .ci/triton_compile_check.py
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import time
import traceback
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    # Must be unset before triton is imported; the kernels' decorators read it at import time.
    os.environ.pop("TRITON_INTERPRET")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


def _ast_source(fn, signature: dict, constexprs: dict):
    # Since Triton 3.2 the signature names every argument, constexprs with the type "constexpr",
    # and constants are passed as `constexprs` keyed by name. Older releases took `constants`.
    sig = dict(signature)
    for name in constexprs:
        sig.setdefault(name, "constexpr")
    try:
        return triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=dict(constexprs))
    except TypeError:
        return triton.compiler.ASTSource(fn=fn, signature=sig, constants=dict(constexprs))


def _modules():
    import specdec_kernels.triton as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        yield importlib.import_module(f"{pkg.__name__}.{info.name}")


def main() -> int:
    failures = 0
    count = 0
    print(f"triton {triton.__version__}, target {TARGET}")
    for mod in _modules():
        checks = getattr(mod, "COMPILE_CHECKS", None)
        if checks is None:
            continue
        for entry in checks:
            fn, signature, constexprs = entry[:3]
            options = entry[3] if len(entry) > 3 else {}
            name = f"{mod.__name__}.{getattr(fn, '__name__', fn)}"
            consts = ", ".join(f"{k}={v}" for k, v in constexprs.items())
            count += 1
            t0 = time.perf_counter()
            try:
                if not isinstance(fn, triton.runtime.JITFunction):
                    raise TypeError(f"{type(fn).__name__} is not a JITFunction (is TRITON_INTERPRET set?)")
                kernel = triton.compile(_ast_source(fn, signature, constexprs), target=TARGET,
                                        options=options or None)
                meta = kernel.metadata
                shared = getattr(meta, "shared", "?")
                regs = getattr(kernel, "n_regs", None)
                print(f"OK    {name} [{consts}] num_warps={meta.num_warps} shared={shared}"
                      f"{'' if regs is None else f' regs={regs}'} ({time.perf_counter() - t0:.1f}s)")
            except Exception:  # noqa: BLE001  (report every kernel, then fail)
                failures += 1
                print(f"FAIL  {name} [{consts}]")
                traceback.print_exc()
    if count == 0:
        print("FAIL  no COMPILE_CHECKS found under specdec_kernels/triton/")
        return 1
    print(f"{count - failures}/{count} kernels compiled for sm_90")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
