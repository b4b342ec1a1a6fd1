"""``specdec demo`` (specdec.lab.demo) on seconds-long quick lab weights built once per module: the
files it writes, the sanity of its numbers, the grid, and the CLI subcommand (exit 0 / one-line exit 2)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("PIL")

from PIL import Image  # noqa: E402
from specdec import SpeculativeDecoder, cli  # noqa: E402
from specdec.lab import demo, train  # noqa: E402
from specdec.lab import models as lab_models  # noqa: E402

pytestmark = pytest.mark.usefixtures("restore_offline_mode")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("lab_weights"))
    train.train_all(out, train.Schedule.quick(), log=lambda *_: None)
    return out


def _pick(method: str, drafter: str | None, **kw) -> demo.DemoConfig:
    hits = [
        c
        for c in demo.CONFIGS
        if c.method == method and c.drafter == drafter and all(getattr(c, k) == v for k, v in kw.items())
    ]
    assert len(hits) == 1, (method, drafter, kw)
    return hits[0]


SUBSET = [
    _pick("ar", None),
    _pick("sd", "text", gamma=3, policy="static"),
    _pick("rsd_s", "image", width=3, depth=2),
]


def test_grid_shapes_and_prompt_set():
    assert len(demo.CONFIGS) == 19 and len(set(demo.CONFIGS)) == 19  # ar + 9 shapes x 2 drafters
    shapes = {(c.method, c.shape) for c in demo.CONFIGS}
    assert shapes == {
        ("ar", "-"),
        ("sd", "γ=3"),
        ("sd", "γ=5"),
        ("specinfer", "2x2"),
        ("rsd_c", "2-2"),
        ("rsd_c", "2-2-2"),
        ("rsd_s", "W3L2"),
        ("rsd_s", "W4L3"),
    }
    assert {c.policy for c in demo.CONFIGS if c.method == "sd"} == {"static", "adaedl"}
    assert all(c.drafter in ("text", "image") for c in demo.CONFIGS if c.method != "ar")
    exs = demo.prompt_set(8)
    assert exs[:5] == demo.prompt_set(5)  # prefix-stable, fixed
    assert exs[0].question == "describe the image ."
    assert sum(e.question == "describe the image ." for e in exs) == 6


def test_text_drafter_name(weights, tmp_path):
    with open(os.path.join(weights, "metrics.json")) as f:
        assert demo.text_drafter_name(weights) == json.load(f)["image_loss_kind"]
    assert demo.text_drafter_name(str(tmp_path)) == demo.FALLBACK_TEXT_DRAFTER


def test_decoder_kwargs_are_valid(weights):
    target = lab_models.load("target", path=weights)
    drafter = lab_models.load("image", path=weights)
    for c in demo.CONFIGS:
        SpeculativeDecoder(target, None if c.method == "ar" else drafter, **c.decoder_kwargs())


def test_run_demo_subset_writes_files_and_sane_rows(weights, tmp_path):
    lines: list[str] = []
    out = str(tmp_path / "demo")
    rows = demo.run_demo(
        weights,
        out,
        prompts=1,
        max_new_tokens=12,
        configs=SUBSET,
        progress=False,
        log=lambda *a: lines.append(" ".join(map(str, a))),
    )
    assert len(rows) == len(SUBSET) * 2
    assert [r["temperature"] for r in rows] == [0.0] * 3 + [0.7] * 3
    for r in rows:
        assert list(r) == list(demo.COLUMNS)
        assert r["prompts"] == 1 and 1 <= r["new_tokens"] <= 12 and r["rounds"] >= 1
        assert r["tau"] >= 1.0 and r["mbsu"] > 0 and r["tokens_per_s"] > 0
        ar = next(a for a in rows if a["method"] == "ar" and a["temperature"] == r["temperature"])
        assert r["speedup"] == pytest.approx(r["tokens_per_s"] / ar["tokens_per_s"])
        if r["method"] == "ar":
            assert r["tau"] == 1.0 and r["mbsu"] == 1.0 and r["drafter"] == "-"
            assert r["rounds"] == r["new_tokens"]
            assert r["acceptance_rate"] is None and r["speedup"] == 1.0  # nothing is drafted
        else:
            assert r["mbsu"] <= r["tau"] and 0 < r["param_ratio"] < 1
            assert 0.0 <= r["acceptance_rate"] <= 1.0
    assert [(r["shape"], r["drafter"], r["policy"]) for r in rows[:3]] == [
        ("-", "-", "-"),
        ("γ=3", "text", "static"),
        ("W3L2", "image", "-"),
    ]

    with open(os.path.join(out, "demo.csv"), encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and list(table[0]) == list(demo.COLUMNS)
    assert float(table[1]["tau"]) == pytest.approx(rows[1]["tau"], rel=1e-5)
    assert table[0]["acceptance_rate"] == "n/a" and float(table[0]["speedup"]) == 1.0
    assert float(table[1]["speedup"]) == pytest.approx(rows[1]["speedup"], rel=1e-5)
    with Image.open(os.path.join(out, "demo.png")) as im:
        im.load()
        assert im.width > 400 and im.height > 200
    with Image.open(os.path.join(out, "scene.png")) as im:
        assert im.size == (144, 144)

    text = "\n".join(lines)
    ar_line = next(ln for ln in text.splitlines() if ln.startswith("ar "))
    assert " n/a " in ar_line and "1.00x" in ar_line  # accept does not apply; speed-up is the baseline
    truth = demo.prompt_set(1)[0].scene.describe()
    assert truth in text and "rsd_s" in text and "greedy" in text
    assert "identical" in text  # every greedy run decodes the target's greedy answer


def test_run_demo_without_greedy_runs_still_shows_an_answer(weights, tmp_path):
    lines: list[str] = []
    rows = demo.run_demo(
        weights,
        str(tmp_path),
        prompts=1,
        max_new_tokens=6,
        temperatures=(0.7,),
        configs=SUBSET[1:2],
        progress=False,
        log=lambda *a: lines.append(str(a)),
    )
    assert len(rows) == 1 and rows[0]["temperature"] == 0.7
    assert rows[0]["speedup"] is None  # no ar row to compare with
    assert any("greedy:" in ln for ln in lines)
    assert any("n/a" in ln for ln in lines)  # the table says so, and the chart was drawn without one
    assert os.path.isfile(tmp_path / "demo.png")


def test_cli_demo_full_grid_json(weights, tmp_path, capsys):
    out = str(tmp_path / "cli_out")
    rc = cli.main(
        [
            "demo",
            "--no-real",
            "--weights",
            weights,
            "--out",
            out,
            "--prompts",
            "1",
            "--max-new-tokens",
            "8",
            "--no-progress",
            "--json",
        ]
    )
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    obj = json.loads(stdout)
    assert len(obj["rows"]) == 2 * len(demo.CONFIGS)
    assert all(r["tau"] >= 1 for r in obj["rows"])
    for path in obj["files"].values():
        assert os.path.isfile(path)


def test_cli_demo_prints_table(weights, tmp_path, capsys):
    rc = cli.main(
        [
            "demo",
            "--no-real",
            "--weights",
            weights,
            "--out",
            str(tmp_path),
            "--prompts",
            "1",
            "--max-new-tokens",
            "6",
            "--no-progress",
        ]
    )
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "tau" in stdout and "rsd_c" in stdout and "2-2-2" in stdout and "ground truth" in stdout
    assert os.path.isfile(tmp_path / "demo.csv")


def test_cli_demo_missing_weights_exits_2(tmp_path, capsys):
    missing = str(tmp_path / "no_such_weights")
    out = tmp_path / "never_created"
    rc = cli.main(["demo", "--no-real", "--weights", missing, "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 2 and stdout == ""
    assert err.count("\n") == 1 and missing in err and err.startswith("specdec demo: error:")
    assert not out.exists()


def test_cli_demo_incomplete_weights_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty_weights"
    empty.mkdir()
    rc = cli.main(["demo", "--no-real", "--weights", str(empty), "--out", str(tmp_path / "o")])
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and str(empty / "target") in err


def test_python_m_specdec_demo_help():
    res = subprocess.run(
        [sys.executable, "-m", "specdec", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr
    assert "--weights" in res.stdout and "--no-progress" in res.stdout


def test_cli_demo_temperatures(weights, tmp_path, capsys):
    rc = cli.main(["demo", "--no-real", "--weights", weights, "--out", str(tmp_path), "--prompts", "1",
                   "--max-new-tokens", "4", "--temperatures", "1.0", "--no-progress", "--json"])  # fmt: skip
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert {r["temperature"] for r in json.loads(stdout)["rows"]} == {1.0}
    for bad in ("-1", "nan", "hot"):
        rc = cli.main(["demo", "--no-real", "--weights", weights, "--out", str(tmp_path),
                       "--temperatures", bad])
        _, err = capsys.readouterr()
        assert rc == 2 and "--temperatures" in err and err.count("\n") == 1, (bad, err)
