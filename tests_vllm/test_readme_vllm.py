"""The README's vLLM code runs as written, in this venv.

tests/test_readme.py runs the README's other blocks in the test venv and leaves the blocks that
import vLLM to this file: each runs in a fresh interpreter (``-P``, in a temporary directory, with
none of the plugin's variables that conftest set in this process) and must exit 0 and print text.
The ``specdec.vllm.run`` commands of the "Serving with vLLM" section are parsed by the module's own
parser (``--help``); the engines they start are what tests_vllm/test_e2e.py runs.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)
BLOCKS = [(lang, code) for lang, code in FENCE.findall(README)]
VLLM_BLOCKS = [code for lang, code in BLOCKS
               if lang == "python" and re.search(r"^\s*(from vllm\b|import vllm\b)", code, re.M)]
RUN_COMMANDS = [line.strip() for lang, code in BLOCKS if lang == "bash" for line in code.splitlines()
                if " -m specdec.vllm.run" in line]  # fmt: skip


def _env() -> dict[str, str]:
    plugin_vars = ("SPECDEC_VLLM", "SPECDEC_VLLM_RULE", "VLLM_PLUGINS")
    env = {k: v for k, v in os.environ.items() if k not in plugin_vars}
    env.pop("TRITON_INTERPRET", None)
    return env


def test_readme_has_vllm_code() -> None:
    # Fewer means a block lost its fence or stopped importing vLLM: the tests below would then pass
    # by running nothing.
    assert len(VLLM_BLOCKS) >= 1 and len(RUN_COMMANDS) >= 2, (len(VLLM_BLOCKS), RUN_COMMANDS)


@pytest.mark.e2e
@pytest.mark.parametrize("code", VLLM_BLOCKS, ids=[f"block{i}" for i in range(len(VLLM_BLOCKS))])
def test_readme_vllm_block_runs(code: str, tmp_path: Path) -> None:
    script = tmp_path / "readme_block.py"  # a file, not -c: vLLM's spawned workers re-import __main__
    script.write_text(code)
    proc = subprocess.run([sys.executable, "-P", str(script)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.stdout.strip(), f"printed nothing\nstderr:\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_readme_run_command_parses(command: str) -> None:
    words = shlex.split(command)
    args = words[words.index("specdec.vllm.run") + 1:]
    from specdec.vllm.run import _parser

    parsed = _parser().parse_args(args)  # exits (SystemExit) on an unknown or malformed flag
    assert parsed.plugin in ("token", "block")
