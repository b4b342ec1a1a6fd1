"""Build specdec_kernels._C: C++ CPU kernels always, CUDA kernels when torch and nvcc allow.

Environment:
  SPECDEC_CUDA_ARCHS  ";"-separated compute capabilities for the CUDA kernels (default "80;90")
  SPECDEC_NO_CUDA=1   build the CPU kernels only, even with a CUDA torch and nvcc
  MAX_JOBS            parallel compile jobs (torch's own variable)
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

# torch.utils.cpp_extension reads CUDA_HOME once, at import. With torch's CUDA wheels and no
# CUDA_HOME it guesses a toolkit root inside site-packages and links fail (cannot find -lcudart).
if "CUDA_HOME" not in os.environ:
    for root in ("/usr/local/cuda", os.path.dirname(os.path.dirname(shutil.which("nvcc") or "/x/x"))):
        if os.path.exists(os.path.join(root, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = root
            break

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _log(msg: str) -> None:
    print(f"specdec_kernels setup: {msg}", file=sys.stderr)


def _cuda_wanted() -> tuple[bool, str]:
    if os.environ.get("SPECDEC_NO_CUDA", "0") not in ("", "0"):
        return False, "SPECDEC_NO_CUDA is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if cpp_extension.CUDA_HOME is None or not os.path.exists(
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    ):
        return False, "nvcc was not found (set CUDA_HOME)"
    return True, f"CUDA {torch.version.cuda}, nvcc from {cpp_extension.CUDA_HOME}"


def _nvidia_include_dirs() -> list[str]:
    # torch's CUDA 13 wheels ship cuBLAS/cuSPARSE headers only under site-packages/nvidia/cu13.
    dirs = []
    for p in sys.path:
        dirs += glob.glob(os.path.join(p, "nvidia", "cu1*", "include"))
        dirs += glob.glob(os.path.join(p, "nvidia", "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def _write_build_info(with_cuda: bool, archs: list[str]) -> None:
    path = os.path.join(HERE, "specdec_kernels", "_build_info.py")
    with open(path, "w") as f:
        f.write("# Written by setup.py at build time.\n")
        f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"TORCH_CUDA = {torch.version.cuda!r}\n")
        f.write(f"WITH_CUDA = {with_cuda!r}\n")
        f.write(f"CUDA_ARCHS = {archs!r}\n")


def _extensions():
    with_cuda, why = _cuda_wanted()
    archs = [a.strip() for a in os.environ.get("SPECDEC_CUDA_ARCHS", "80;90").split(";") if a.strip()]
    sources = ["csrc/registration.cpp"] + sorted(glob.glob("csrc/common/*.cpp"))
    sources += sorted(glob.glob("csrc/cpu/*.cpp"))
    # no -std: torch.utils.cpp_extension adds the standard its headers need (C++17 for torch 2.11,
    # C++20 for 2.14)
    cxx = ["-O3", "-fvisibility=hidden"]
    if with_cuda:
        _log(f"building CPU and CUDA kernels ({why}; archs {';'.join(archs)})")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
        for a in archs:
            nvcc.append(f"-gencode=arch=compute_{a},code=sm_{a}")
        ext = cpp_extension.CUDAExtension(
            "specdec_kernels._C",
            sources,
            include_dirs=[os.path.join(HERE, "csrc")] + _nvidia_include_dirs(),
            extra_compile_args={"cxx": cxx + ["-DSPECDEC_WITH_CUDA"], "nvcc": nvcc},
        )
    else:
        _log(f"building the CPU kernels only: {why}")
        ext = cpp_extension.CppExtension(
            "specdec_kernels._C",
            sources,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx},
        )
    _write_build_info(with_cuda, archs if with_cuda else [])
    return [ext]


setup(
    name="specdec_kernels",
    version="0.1.0",
    description="Exact speculative-decoding kernels for chains and trees (CPU, Triton, CUDA)",
    packages=find_packages(include=["specdec_kernels", "specdec_kernels.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "scipy", "hypothesis", "ruff"],
        "llava": ["transformers>=4.45", "pillow"],
    },
    ext_modules=_extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
