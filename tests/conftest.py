"""Shared test configuration: Triton interpreter switch, backend parametrisation, markers.

Every op test that takes the ``backend`` fixture runs once per backend that can execute on the
tensors of a device here: ``specdec_kernels.backends("cpu")`` (reference, cpu, triton under the
interpreter) and, when CUDA exists, ``specdec_kernels.backends("cuda")``. The fixture forces the
backend with ``specdec_kernels.use_backend`` for the duration of the test and says which device
the inputs must live on; ground truth always comes from ``specdec_kernels.reference``.
"""

from __future__ import annotations

import importlib
import os
from typing import NamedTuple

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

# Triton decides at decoration time (``@triton.jit``) whether kernels are interpreted, so the
# variable must be set before anything imports triton. ``import torch`` does not import triton, and
# this conftest is imported before any test module, so this is early enough. Only without CUDA:
# on a GPU machine the Triton kernels must be compiled for the device, not interpreted.
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

import specdec_kernels as sk  # noqa: E402  (must come after TRITON_INTERPRET is set)

# The Triton modules of each op family. Test modules say which family they exercise with a
# module-level ``TRITON_FAMILY = "chain"`` (or "sampling"); without it every family is required.
TRITON_MODULES = {
    "chain": "specdec_kernels.triton.chain",
    "sampling": "specdec_kernels.triton.sampling",
    "gumbel": "specdec_kernels.triton.gumbel",
    "tree": "specdec_kernels.triton.tree",
    "entropy": "specdec_kernels.triton.entropy",
    "losses": "specdec_kernels.triton.losses",
    "attention": "specdec_kernels.triton.attention",
}


class Backend(NamedTuple):
    """The backend a test runs on and the device its inputs must be on (and, for the cpu backend,
    the vector level of its C++ kernels: None = the best this CPU has)."""

    name: str
    device: torch.device
    simd: int | None = None

    @property
    def interpreted(self) -> bool:
        """Triton on CPU tensors: every op runs in Python, so tests use fewer/smaller inputs."""
        return self.name == "triton" and self.device.type == "cpu"


# The cpu backend's C++ kernels pick AVX-512, AVX2 or scalar code at run time (csrc/cpu/simd.h);
# every test of the cpu backend also runs with the lower levels this CPU has, so each code path is
# checked against the reference, not only the one this machine would pick.
def _simd_levels() -> list[int]:
    if "cpu" not in sk.backends("cpu"):
        return []
    best = sk.cpu_simd_level(supported=True)
    return list(range(best))


def _params(devices, exclude=()):
    params = []
    for dev in devices:
        if dev == "cuda" and not HAS_CUDA:
            continue
        for name in sk.backends(dev):
            if name in exclude:
                continue
            marks = [pytest.mark.cuda] if dev == "cuda" else []
            params.append(pytest.param((name, dev, None), id=f"{dev}-{name}", marks=marks))
            if dev == "cpu" and name == "cpu":
                for level in reversed(_simd_levels()):
                    level_name = sk._backend.CPU_SIMD_LEVELS[level]
                    params.append(pytest.param((name, dev, level), id=f"{dev}-{name}@{level_name}"))
    return params


_ALL_PARAMS = _params(["cpu", "cuda"])
# CUDA-graph capture needs ops without host syncs: the reference (a Python loop over .cpu()
# tensors) can never be captured, so it is excluded there. Without CUDA one placeholder param keeps
# the test visible as a skip ("needs CUDA") instead of an empty parametrisation.
_CUDA_PARAMS = _params(["cuda"], exclude=("reference",)) or [
    pytest.param(("none", "cuda", None), id="no-cuda", marks=pytest.mark.cuda)
]


def _require_triton_modules(request) -> None:
    family = getattr(request.module, "TRITON_FAMILY", None)
    names = [TRITON_MODULES[family]] if family else list(TRITON_MODULES.values())
    for mod in names:
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001  (missing or half-written module: skip, do not error)
            pytest.skip(f"triton backend module {mod} cannot be imported yet: {type(e).__name__}: {e}")


def _enter(request):
    name, dev, simd = request.param
    if dev == "cuda" and not HAS_CUDA:
        pytest.skip("needs CUDA")
    if name == "triton":
        _require_triton_modules(request)
    return name, torch.device(dev), simd


@pytest.fixture(params=_ALL_PARAMS)
def backend(request):
    """Each backend available here (CPU tensors, and CUDA tensors when CUDA exists), forced; the
    cpu backend once per vector level of its kernels."""
    name, dev, simd = _enter(request)
    with sk.use_backend(name), sk.use_cpu_simd(simd):
        yield Backend(name, dev, simd)


@pytest.fixture(params=_CUDA_PARAMS)
def cuda_backend(request):
    """Each capturable backend for CUDA tensors (skips without CUDA)."""
    name, dev, _ = _enter(request)
    with sk.use_backend(name):
        yield Backend(name, dev)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (long statistical tests)")


def pytest_collection_modifyitems(config, items):
    # Slow tests run with --runslow, or whenever the user selects by marker (e.g. `-m slow`,
    # `-m "slow or not slow"`): an explicit -m expression is taken to mean what it says.
    run_slow = config.getoption("--runslow") or bool(config.getoption("markexpr"))
    skip_slow = pytest.mark.skip(reason="slow statistical test: run with --runslow or -m slow")
    skip_cuda = pytest.mark.skip(reason="needs CUDA")
    skip_lower_simd = pytest.mark.skip(
        reason="slow statistical test: run at the best vector level only (every level gives the "
               "same tokens, which the fast tests check against the reference)")
    for item in items:
        if item.get_closest_marker("slow") and not run_slow:
            item.add_marker(skip_slow)
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("backend") if callspec is not None else None
        if item.get_closest_marker("slow") and isinstance(param, tuple) and len(param) == 3 \
                and param[2] is not None:
            item.add_marker(skip_lower_simd)
        if item.get_closest_marker("cuda") and not HAS_CUDA:
            item.add_marker(skip_cuda)
