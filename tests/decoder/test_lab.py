"""The miniature lab: its data is deterministic, its training learns, its shipped weights load and
reproduce the recorded block efficiency."""

from __future__ import annotations

import csv
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from specdec.lab import models as lab_models
from specdec.lab import scenes, train


def _digest(exs) -> str:
    text = "\n".join(f"{e.scene}|{e.question}|{e.answer}" for e in exs)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_examples_are_deterministic_by_seed():
    a, b = scenes.examples(3, 40), scenes.examples(3, 40)
    assert a == b
    assert _digest(scenes.examples(4, 40)) != _digest(a)
    for x, y in zip(a[:8], b[:8], strict=True):
        assert np.array_equal(scenes.render(x.scene), scenes.render(y.scene))
    ba, bb = scenes.batch(a[:8]), scenes.batch(b[:8])
    for k in ba:
        assert torch.equal(ba[k], bb[k]), k


def test_examples_are_the_recorded_ones():
    """numpy's PCG64 stream is stable across versions: the same seed must give the same task text
    on every machine (the shipped weights and the recorded demo figures depend on it)."""
    assert _digest(scenes.examples(0, 200)) == RECORDED_DIGEST


RECORDED_DIGEST = "b43648712dc97429"


def test_task_content_and_tokenizer_round_trip():
    tok = scenes.Tokenizer()
    for e in scenes.examples(0, 300):
        for text in (e.question, e.answer):
            ids = tok.encode(text)
            assert scenes.UNK_ID not in ids, text
            assert tok.decode(ids) == text
        objs = e.scene.objects
        assert 1 <= len(objs) <= 3 and len({o.cell for o in objs}) == len(objs)
        if e.question == "describe the image .":
            assert e.answer == e.scene.describe()
            assert all(o.colour in e.answer and o.position in e.answer for o in objs)
    assert len(scenes.prompt_ids("describe the image .")) == 1 + scenes.NUM_IMAGE_TOKENS + 4 + 1


def test_render_draws_each_object_in_its_cell():
    scene = scenes.Scene((scenes.Obj("square", "red", "big", 0), scenes.Obj("circle", "blue", "small", 8)))
    img = scenes.render(scene).astype(int)
    c = scenes.CELL
    assert tuple(img[c // 2, c // 2]) == scenes.COLOURS["red"]
    assert tuple(img[c * 2 + c // 2, c * 2 + c // 2]) == scenes.COLOURS["blue"]
    assert tuple(img[c + c // 2, c + c // 2]) == (30, 30, 30)  # the empty center cell


def test_bad_arguments():
    with pytest.raises(ValueError, match="n must be"):
        scenes.examples(0, -1)
    with pytest.raises(ValueError, match="tasks"):
        scenes.examples(0, 2, tasks=("paint",))
    with pytest.raises(ValueError, match="name must be"):
        lab_models.load("nope")
    with pytest.raises(FileNotFoundError, match="specdec.lab.train"):
        lab_models.load("target", path="/nonexistent/lab/weights")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("lab"))
    metrics = train.train_all(out, train.Schedule.quick(), log=lambda *_: None)
    return out, metrics


def test_short_training_reduces_every_loss(quick_run):
    out, m = quick_run
    for key in ("target_loss", "pretrain_loss", "kl_loss", "tvd_loss", "tvdpp_vocab_loss", "tvdpp_batch_loss",
                "image_loss"):  # fmt: skip
        assert m[key]["last"] < m[key]["first"], (key, m[key])
    assert m["image_loss_kind"] in ("tvdpp_vocab", "tvdpp_batch")
    for name in ("target", *lab_models.DRAFTERS):
        assert os.path.isdir(os.path.join(out, name)), name
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["acceptance"].keys() >= set(lab_models.DRAFTERS)


def test_saved_models_load_and_match_the_task(quick_run):
    out, _ = quick_run
    target = lab_models.load("target", path=out)
    assert target.dtype == torch.float32  # saved float16, loaded float32
    b = scenes.batch(scenes.examples(1, 2))
    logits = target(**{k: v for k, v in b.items() if k != "labels"}).logits
    assert logits.shape == (*b["input_ids"].shape, len(scenes.VOCAB))
    image = lab_models.load("image", path=out)
    assert image.image_token_id == scenes.IMAGE_ID


def test_acceptance_is_one_for_the_teacher_itself(quick_run):
    """The scoring function is the exact acceptance probability: a drafter equal to the target's law
    scores 1 (checked by scoring the teacher's own laws through a stand-in drafter)."""
    out, _ = quick_run
    target = lab_models.load("target", path=out)
    d = train.distillation_set(target, 4, seed=5, log=lambda *_: None)

    class Echo(torch.nn.Module):
        def forward(self, ids, image_features=None, attention_mask=None, use_cache=False):
            rows = [int(torch.nonzero((d.ids == ids[i]).all(-1))[0]) for i in range(ids.shape[0])]
            return type("O", (), {"logits": torch.log(d.teacher[rows].clamp_min(1e-30))})()

    assert train.acceptance(Echo(), d, image=True) == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------------------------
# The shipped weights (python/specdec/lab/weights): present, loadable, and reproducing the block
# efficiency recorded next to them (weights/demo.csv, written by `specdec demo` when they were made).
# ----------------------------------------------------------------------------------------------

SHIPPED = lab_models.weights_dir()


def _recorded(row: dict) -> dict:
    """The row of the recorded demo.csv with ``row``'s configuration and temperature."""
    key = ("method", "shape", "drafter", "policy")
    with open(os.path.join(SHIPPED, "demo.csv"), newline="", encoding="utf-8") as f:
        for ref in csv.DictReader(f):
            if all(str(ref[k]) == str(row[k]) for k in key) and float(ref["temperature"]) == float(
                row["temperature"]
            ):
                return ref
    raise AssertionError(f"{[row[k] for k in key]} is not in the recorded demo.csv")


def test_shipped_weights_are_complete_and_small():
    total = 0
    for name in ("target", *lab_models.DRAFTERS):
        assert os.path.isdir(os.path.join(SHIPPED, name)), f"shipped weights lack {name}"
    for root, _, files in os.walk(SHIPPED):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    assert total < 8 * 2**20, f"the shipped weights are {total / 2**20:.1f} MiB"
    with open(os.path.join(SHIPPED, "metrics.json")) as f:
        m = json.load(f)
    assert m["image_loss_kind"] in ("tvdpp_vocab", "tvdpp_batch")


def test_shipped_weights_reproduce_the_recorded_tau(tmp_path):
    """Greedy decoding is deterministic: the same prompts give the recorded tau (up to float ties)."""
    from specdec.lab import demo

    picks = [c for c in demo.CONFIGS if (c.method, c.shape, c.policy) in
             {("sd", "γ=3", "static"), ("rsd_s", "W3L2", "static"), ("ar", "-", "static")}]  # fmt: skip
    assert len(picks) == 5
    rows = demo.run_demo(SHIPPED, str(tmp_path), configs=picks, temperatures=(0.0,), progress=False,
                         log=lambda *_: None)  # fmt: skip
    for cfg, row in zip(picks, rows, strict=True):
        ref = _recorded(row)
        assert float(row["tau"]) == pytest.approx(float(ref["tau"]), abs=0.05), (cfg, row["tau"], ref["tau"])
        assert int(row["new_tokens"]) == int(ref["new_tokens"]), cfg


@pytest.mark.slow
def test_specdec_demo_finishes_in_two_minutes(tmp_path):
    """The lab part of the main command within its budget on 2 CPU cores (model loading included);
    the real-model part is timed in test_real_model.py."""
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "specdec", "demo", "--no-real", "--out", str(tmp_path),
                           "--no-progress"],
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert os.path.isfile(tmp_path / "demo.csv") and os.path.isfile(tmp_path / "demo.png")
    assert wall < 120, f"specdec demo took {wall:.0f} s"


def test_compact_drafter_argument_errors():
    from specdec import CompactLlavaDrafter

    lm = lab_models.build_text_drafter()
    with pytest.raises(ValueError, match="feature_dim"):
        CompactLlavaDrafter(lm, 0, scenes.IMAGE_ID)
    with pytest.raises(ValueError, match="projector_act"):
        CompactLlavaDrafter(lm, 8, scenes.IMAGE_ID, projector_act="tanh")
    for bad in (0, -3):
        with pytest.raises(ValueError, match="projector_hidden"):
            CompactLlavaDrafter(lm, 8, scenes.IMAGE_ID, projector_hidden=bad)
    assert CompactLlavaDrafter(lm, 8, scenes.IMAGE_ID).projector_hidden == lm.config.hidden_size


def test_image_drafter_adapter_starts_from_the_target_projector_and_round_trips(quick_run, tmp_path):
    out, _ = quick_run
    target = lab_models.load("target", path=out)
    built = lab_models.build_image_drafter(lab_models.build_text_drafter(), target)
    first = target.model.multi_modal_projector.linear_1
    assert torch.equal(built.projector[0].weight, first.weight)
    assert torch.equal(built.projector[0].bias, first.bias)
    built.save_pretrained(str(tmp_path / "d"))
    from specdec import load_drafter

    back = load_drafter(str(tmp_path / "d"))
    assert back.projector_hidden == first.out_features == built.projector_hidden
    for a, b in zip(back.projector.state_dict().values(), built.projector.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_train_all_refuses_a_missing_target_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="target_dir"):
        train.train_all(str(tmp_path / "out"), train.Schedule.quick(), log=lambda *_: None,
                        target_dir=str(tmp_path / "no_target"))  # fmt: skip


# ----------------------------------------------------------------------------------------------
# `specdec generate` on the shipped lab models: the target folder carries a Hugging Face processor
# equivalent to the lab's own tokenizer and pixels, and the lab models have names.
# ----------------------------------------------------------------------------------------------


def _upscaled(img: np.ndarray, k: int = 4) -> np.ndarray:
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)  # what `specdec demo` saves as scene.png


@pytest.mark.parametrize("source", ["built", "shipped"])
def test_lab_processor_equals_the_lab_pipeline(source):
    from PIL import Image
    from transformers import AutoProcessor

    proc = lab_models.build_processor() if source == "built" else AutoProcessor.from_pretrained(
        os.path.join(SHIPPED, "target"), local_files_only=True)  # fmt: skip
    for ex in scenes.examples(21, 6):
        img = scenes.render(ex.scene)
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ex.question}]}]
        text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        for pixels in (img, _upscaled(img)):
            enc = proc(images=Image.fromarray(pixels), text=text, return_tensors="pt")
            assert enc["input_ids"][0].tolist() == scenes.prompt_ids(ex.question), ex.question
            assert torch.equal(enc["pixel_values"], scenes.pixel_values([img]))
        assert proc.tokenizer.decode(scenes.answer_ids(ex.answer), skip_special_tokens=True) == ex.answer
    # what a user types: capitals and punctuation attached to words
    assert proc.tokenizer("Describe the image.")["input_ids"] == [scenes.BOS_ID] + scenes._TOKENIZER.encode(
        "describe the image ."
    )


def test_lab_models_have_names():
    from specdec import named_models
    from specdec.lab import demo

    assert named_models.resolve("lab-target") == os.path.join(SHIPPED, "target")
    assert named_models.resolve("lab-drafter") == os.path.join(SHIPPED, "image")
    assert named_models.resolve("lab-text-drafter") == os.path.join(SHIPPED, demo.text_drafter_name(SHIPPED))


@pytest.mark.usefixtures("restore_offline_mode")
@pytest.mark.parametrize("drafter", ["lab-drafter", "lab-text-drafter"])
def test_specdec_generate_runs_the_shipped_lab_models(tmp_path, capsys, drafter):
    """The README's example: a scene from `python -m specdec.lab.scenes`, then `specdec generate` on it;
    the greedy answer is the lab target's own greedy decoding of the lab's prompt."""
    from specdec import SpeculativeDecoder, cli

    png = str(tmp_path / "scene.png")
    assert scenes.main([png, "--seed", "3"]) == 0
    truth = capsys.readouterr().out
    scene = scenes.sample_scene(np.random.default_rng(3))
    assert scene.describe() in truth

    rc = cli.main(["generate", "--target", "lab-target", "--drafter", drafter, "--image", png,
                   "--prompt", "Describe the image.", "--temperature", "0", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    got = json.loads(out)

    target = lab_models.load("target")
    ids = torch.tensor([scenes.prompt_ids("describe the image .")])
    ref = SpeculativeDecoder(target, None, method="ar").generate(
        ids, pixel_values=scenes.pixel_values([scenes.render(scene)]), max_new_tokens=64,
        eos_token_id=scenes.EOS_ID)  # fmt: skip
    expect = scenes.Tokenizer().decode(ref.sequences[0, ids.shape[1]:].tolist())
    assert got["text"] == expect
    assert got["stats"]["accepted"] > 0 and got["stats"]["new_tokens"] >= len(expect.split())


def test_scene_cli_errors(tmp_path):
    with pytest.raises(SystemExit):
        scenes.main([str(tmp_path / "x.png"), "--seed", "-1"])
    with pytest.raises(SystemExit):
        scenes.main([str(tmp_path / "no_such_dir" / "x.png")])
