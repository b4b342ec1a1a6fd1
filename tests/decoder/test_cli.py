"""The ``specdec`` command line (specdec.cli) end to end on tiny local models (cli_fixtures.py):
every method prints text and stats, --json, LLaVA prompts with an image (chat template, prepended
image token, explicit placeholder), streaming, greedy equality with the target's own generate, several
prompts batched in one call (each row's text equal to its single-prompt run), and one-line errors with
exit status 2. The CLI runs in-process through ``cli.main`` except for one
``python -m specdec`` subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("PIL")

import cli_fixtures as F  # noqa: E402  (tests/decoder is on sys.path: pytest's rootdir import mode)
from specdec import cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("restore_offline_mode")

STATS_KEYS = ("rounds", "target_calls", "drafted", "accepted", "new_tokens", "block_efficiency",
              "acceptance_rate", "mbsu", "param_ratio", "tokens_per_s", "wall_s", "draft_s", "target_s",
              "verify_s", "cache_s")
PROMPT = "the cat sat on the"


@pytest.fixture(scope="session")
def paths(tmp_path_factory) -> dict[str, str]:
    root = str(tmp_path_factory.mktemp("cli_models"))
    target, drafter = F.save_text_pair(root)
    llava = F.save_llava(root)
    compact = F.save_compact_drafter(root, llava)
    png = F.write_png(os.path.join(root, "picture.png"))
    png2 = F.write_png(os.path.join(root, "tall.png"), size=(9, 16))
    fake = os.path.join(root, "x.png")
    with open(fake, "w") as f:
        f.write("this is not an image\n")
    blank = os.path.join(root, "blank_prompts.txt")
    with open(blank, "w") as f:
        f.write("\n   \n\n")
    return {"target": target, "drafter": drafter, "llava": llava, "compact": compact, "png": png,
            "png2": png2, "fake_png": fake, "blank_prompts": blank, "root": root}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def text_args(paths, *extra: str) -> list[str]:
    return ["generate", "--target", paths["target"], "--drafter", paths["drafter"], "--prompt", PROMPT,
            "--device", "cpu", *extra]


def stats_table(out: str) -> dict[str, str]:
    """The table after the streamed text: 'key   value' rows after the last blank line."""
    rows = out.rstrip("\n").split("\n\n")[-1].splitlines()
    return dict(r.split(None, 1) for r in rows)


# ----------------------------------------------------------------------------------------------
# parser


def test_help_version_and_no_command(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and "generate" in out
    rc, out, _ = run(capsys, "generate", "--help")
    assert rc == 0
    for opt in ("--target", "--drafter", "--image", "--prompt", "--prompts-file", "--method", "--width",
                "--depth", "--gamma", "--branching", "--policy", "--lam", "--temperature", "--top-k",
                "--top-p", "--seed", "--max-new-tokens", "--dtype", "--device", "--no-chat-template",
                "--json", "--ignore-eos", "--progress"):
        assert opt in out, opt
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.startswith("specdec ")
    rc, _, err = run(capsys)
    assert rc == 2 and "generate" in err


# ----------------------------------------------------------------------------------------------
# text target


METHOD_ARGS = {
    "ar": ["--method", "ar"],
    "sd": ["--method", "sd", "--gamma", "3"],
    "specinfer": ["--method", "specinfer", "--branching", "2,2"],
    "rsd_c": ["--method", "rsd_c", "--branching", "2,2,2"],
    "rsd_s": ["--method", "rsd_s", "--width", "3", "--depth", "2"],
    "sd-adaedl": ["--method", "sd", "--policy", "adaedl", "--lam", "0.3"],
}


@pytest.mark.parametrize("name", list(METHOD_ARGS))
def test_method_prints_text_and_stats(capsys, paths, name):
    rc, out, err = run(capsys, *text_args(paths, *METHOD_ARGS[name], "--temperature", "0.7", "--seed", "0",
                                          "--max-new-tokens", "10", "--ignore-eos"))
    assert rc == 0, err
    assert err == ""
    text = out.split("\n\n")[0]
    assert text.strip(), out
    table = stats_table(out)
    assert table["method"] == METHOD_ARGS[name][1]
    assert table["new_tokens"] == "10"  # --ignore-eos: the whole budget
    for k in STATS_KEYS:
        assert k in table, k
    if name != "ar":
        assert int(table["drafted"]) > 0


def test_json_output(capsys, paths, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(PROMPT))  # --prompt - reads stdin
    argv = text_args(paths, "--method", "rsd_s", "--width", "2", "--depth", "2", "--temperature", "0.7",
                     "--seed", "3", "--max-new-tokens", "8", "--json")
    argv[argv.index(PROMPT)] = "-"
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    assert out.count("\n") == 1  # one object, nothing streamed
    obj = json.loads(out)
    assert set(obj) == {"text", "texts", "stats", "args"}
    assert isinstance(obj["text"], str) and obj["text"] and obj["texts"] == [obj["text"]]
    for k in STATS_KEYS:
        assert k in obj["stats"], k
    assert 1 <= obj["stats"]["new_tokens"] <= 8
    assert obj["args"]["method"] == "rsd_s" and obj["args"]["width"] == 2 and obj["args"]["seed"] == 3


class _Recorder(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


def test_streamed_text_equals_final_text(capsys, paths, monkeypatch):
    common = ["--method", "sd", "--gamma", "2", "--temperature", "0.7", "--seed", "5",
              "--max-new-tokens", "16"]
    rc, out, err = run(capsys, *text_args(paths, *common, "--json"))
    assert rc == 0, err
    final = json.loads(out)["text"]
    rec = _Recorder()
    monkeypatch.setattr(sys, "stdout", rec)
    assert cli.main(text_args(paths, *common)) == 0
    streamed = rec.getvalue().split("\n\n")[0]
    assert streamed.rstrip("\n") == final
    # it streamed: the text arrived over several rounds, before the table
    assert sum(1 for w in rec.writes if w.strip() and "rounds" not in w) >= 2


def test_streamer_renders_multibyte_characters_whole():
    """A byte-level tokenizer splits characters over tokens: nothing printed may hold U+FFFD and the
    concatenated output equals the final decoding."""

    class ByteTok:
        def decode(self, ids, skip_special_tokens=True):
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    text = "héllo 日本 ok ✓"
    ids = list(text.encode())
    out = _Recorder()
    s = cli.TextStreamer(ByteTok(), out, eos_token_id=None)
    for i in range(0, len(ids), 2):  # rounds of 2 bytes: splits every multi-byte character
        s(ids[i:i + 2])
    s.finish(ByteTok().decode(ids))
    assert out.getvalue() == text + "\n"
    assert not any("\ufffd" in w for w in out.writes)


def test_streamer_stops_at_eos():
    class WordTok:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(str(i) for i in ids if not (skip_special_tokens and i == 0))

    out = io.StringIO()
    s = cli.TextStreamer(WordTok(), out, eos_token_id=0)
    s([5, 6]), s([7, 0, 8]), s([9])
    assert s.ids == [5, 6, 7, 0] and s.done


GREEDY_TOKENS = 24  # long enough for the tree methods to accept non-first siblings several times


@pytest.mark.parametrize("method", ["sd", "sd+lookup", "sd+draft-vocab", "specinfer", "rsd_c", "rsd_s"])
def test_greedy_equals_target_generate(capsys, paths, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shape = {"sd": ["--gamma", "4"], "sd+lookup": ["--gamma", "4", "--lookup", "1"],
             "sd+draft-vocab": ["--gamma", "4", "--draft-vocab", "30"],
             "specinfer": ["--branching", "3"], "rsd_c": ["--branching", "2,2"],
             "rsd_s": ["--width", "3", "--depth", "2"]}[method]
    method = method.split("+")[0]
    rc, out, err = run(capsys, *text_args(paths, "--method", method, *shape, "--temperature", "0",
                                          "--max-new-tokens", str(GREEDY_TOKENS), "--json"))
    assert rc == 0, err
    got = json.loads(out)["text"]
    tok = AutoTokenizer.from_pretrained(paths["target"])
    model = AutoModelForCausalLM.from_pretrained(paths["target"]).eval()
    enc = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(**enc, max_new_tokens=GREEDY_TOKENS, do_sample=False,
                             eos_token_id=tok.eos_token_id)
    assert got == tok.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------
# several prompts: one batch


PROMPTS = [PROMPT, "hello world , where is the big red dog ? the dog was", "a"]  # 6, 13 and 2 tokens


def texts_of(capsys, argv: list[str]) -> list[str]:
    rc, out, err = run(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)["texts"]


def single_texts(capsys, make, prompts, *extra: str, seeds=None) -> list[str]:
    """Each prompt decoded alone (with its row's seed) by the argv ``make(prompt, seed)`` builds."""
    return [texts_of(capsys, make(p, None if seeds is None else seeds[i]) + list(extra))[0]
            for i, p in enumerate(prompts)]


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_prompts_batched_equal_single_runs_greedy(capsys, paths, tmp_path, ignore_eos):
    """--prompt and --prompts-file (flags first, blank lines skipped), rows of different lengths
    left-padded: each row's greedy text equals the prompt decoded alone."""
    extra = ["--method", "sd", "--gamma", "3", "--temperature", "0", "--max-new-tokens", "12"]
    extra += ["--ignore-eos"] if ignore_eos else []
    pfile = tmp_path / "prompts.txt"
    pfile.write_text(f"{PROMPTS[1]}\n\n  \n{PROMPTS[2]}\n")
    argv = text_args(paths, *extra) + ["--prompts-file", str(pfile)]  # text_args gives --prompt PROMPT
    rc, out, err = run(capsys, *argv, "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert set(obj) == {"texts", "stats", "args"}  # no "text" for several prompts
    assert obj["args"]["prompt"] == [PROMPT] and obj["args"]["prompts_file"] == str(pfile)
    texts = obj["texts"]
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)

    def alone(prompt, seed):
        argv = text_args(paths, *extra)
        argv[argv.index(PROMPT)] = prompt
        return argv

    assert texts == single_texts(capsys, alone, PROMPTS)
    if ignore_eos:
        assert obj["stats"]["new_tokens"] == 3 * 12


def test_prompts_batched_sampled_rows_use_seed_plus_row(capsys, paths):
    extra = ["--method", "rsd_s", "--width", "2", "--depth", "2", "--temperature", "0.7",
             "--max-new-tokens", "8", "--ignore-eos"]
    texts = texts_of(capsys, text_args(paths, *extra, "--seed", "3", "--prompt", PROMPTS[1]))

    def alone(prompt, seed):
        argv = text_args(paths, *extra, "--seed", str(seed))
        argv[argv.index(PROMPT)] = prompt
        return argv

    assert texts == single_texts(capsys, alone, PROMPTS[:2], seeds=[3, 4])


def test_prompts_batched_text_output(capsys, paths):
    long = "the big red dog sat on the mat in the box under the old tree near the sea and the sky ."
    rc, out, err = run(capsys, *text_args(paths, "--method", "sd", "--temperature", "0", "--max-new-tokens",
                                          "6", "--ignore-eos", "--prompt", long))
    assert rc == 0, err
    blocks = out.rstrip("\n").split("\n\n")
    assert len(blocks) == 3  # two prompts' blocks, then the table
    head0, text0 = blocks[0].split("\n")
    head1, text1 = blocks[1].split("\n")
    assert head0 == f"[1/2] {PROMPT}"
    assert head1.startswith("[2/2] the big red dog") and head1.endswith("...") and len(head1) < 75
    assert text0.strip() and text1.strip()
    table = stats_table(out)
    assert table["rows"] == "2" and table["new_tokens"] == "12"
    assert table["prompt_tokens"] == f"6,{len(long.split()) + 1}"


def test_batch_inputs_left_pads_and_masks():
    rows = [{"input_ids": torch.tensor([[1, 7, 8]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "pixel_values": torch.zeros(1, 3, 8, 8)},
            {"input_ids": torch.tensor([[1, 9]]), "attention_mask": None,
             "pixel_values": torch.ones(1, 3, 8, 8)}]
    out = cli.batch_inputs(rows, pad_id=4)
    assert out["input_ids"].tolist() == [[1, 7, 8], [4, 1, 9]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert out["pixel_values"].shape == (2, 3, 8, 8) and out["pixel_values"][1].eq(1).all()

    class Tok:
        pad_token_id = None

    assert cli._pad_id(Tok(), 2) == 2 and cli._pad_id(Tok(), None) == 0
    Tok.pad_token_id = 4
    assert cli._pad_id(Tok(), 2) == 4


def test_llava_batch_with_two_images(capsys, paths):
    """One image per prompt (different sizes: the processor resizes both to 8x8), and one image shared
    by every prompt: each row equals its prompt and image decoded alone (greedy)."""
    prompts = ["what is this ?", "describe the picture ."]
    extra = ["--temperature", "0", "--json"]
    argv = llava_args(paths, "--image", paths["png"], "--image", paths["png2"], "--prompt", prompts[1],
                      *extra, prompt=prompts[0])
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    texts = json.loads(out)["texts"]
    alone = [texts_of(capsys, llava_args(paths, "--image", img, "--temperature", "0", prompt=p))[0]
             for p, img in zip(prompts, (paths["png"], paths["png2"]), strict=True)]
    assert texts == alone
    shared = texts_of(capsys, llava_args(paths, "--image", paths["png"], "--prompt", prompts[1],
                                         "--temperature", "0", prompt=prompts[0]))
    assert shared[0] == alone[0]
    assert shared[1] == texts_of(capsys, llava_args(paths, "--image", paths["png"], "--temperature", "0",
                                                    prompt=prompts[1]))[0]


# ----------------------------------------------------------------------------------------------
# LLaVA target


def llava_args(paths, *extra: str, prompt: str = "what is this ?") -> list[str]:
    return ["generate", "--target", paths["llava"], "--drafter", paths["drafter"], "--prompt", prompt,
            "--device", "cpu", "--method", "rsd_s", "--width", "2", "--depth", "2", "--max-new-tokens", "6",
            *extra]


def test_llava_image_chat_template_equals_target_greedy(capsys, paths):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    rc, out, err = run(capsys, *llava_args(paths, "--image", paths["png"], "--temperature", "0", "--json"))
    assert rc == 0, err
    got = json.loads(out)["text"]
    proc = AutoProcessor.from_pretrained(paths["llava"])
    model = LlavaForConditionalGeneration.from_pretrained(paths["llava"]).eval()
    text = "USER: <image> what is this ? ASSISTANT:"  # the fixture's chat template
    enc = proc(images=Image.open(paths["png"]), text=text, return_tensors="pt")
    assert (enc["input_ids"] == F.IMAGE_ID).sum() == 4
    with torch.no_grad():
        ref = model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert got == proc.tokenizer.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("variant, prompt_tokens", [
    ("template", 1 + 1 + 4 + 4 + 1),     # <s> USER: <image>x4 what is this ? ASSISTANT:
    ("no-template", 1 + 4 + 4),          # <s> <image>x4 what is this ?
    ("placeholder", 1 + 4 + 1 + 4),      # <s> <image>x4 describe ... (prompt used verbatim)
    ("no-image", 1 + 4),                 # <s> what is this ? (plain text on a LLaVA target)
])
def test_llava_prompts(capsys, paths, variant, prompt_tokens):
    extra = [] if variant == "no-image" else ["--image", paths["png"]]
    if variant == "no-template":
        extra.append("--no-chat-template")
    prompt = "<image> describe what is this ?" if variant == "placeholder" else "what is this ?"
    rc, out, err = run(capsys, *llava_args(paths, *extra, "--temperature", "0.7", "--seed", "1",
                                           prompt=prompt))
    assert rc == 0, err
    assert int(stats_table(out)["prompt_tokens"]) == prompt_tokens


def test_llava_with_compact_drafter(capsys, paths):
    argv = llava_args(paths, "--image", paths["png"], "--temperature", "0.7", "--seed", "2", "--json")
    argv[argv.index(paths["drafter"])] = paths["compact"]
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["stats"]["new_tokens"] >= 1 and obj["stats"]["drafted"] > 0


def test_progress_bar_on_request(capsys, paths):
    rc, out, err = run(capsys, *text_args(paths, "--method", "ar", "--max-new-tokens", "4", "--ignore-eos",
                                          "--progress"))
    assert rc == 0
    assert "0/4" in err and "tok/s" in err  # drawn (leave=False clears it at the end)
    rc, out, err = run(capsys, *text_args(paths, "--method", "ar", "--max-new-tokens", "4", "--ignore-eos",
                                          "--progress", "--prompt", "hello"))
    assert rc == 0
    assert "0/8" in err  # the tokens of both rows


# ----------------------------------------------------------------------------------------------
# errors: exit status 2, one line on stderr naming the problem, no traceback


ERRORS = {
    "missing-target": (lambda p: text_args(p, "--max-new-tokens", "2") + ["--target", p["root"] + "/nope"],
                       ["target", "nope"]),
    "hub-name-not-cached": (lambda p: text_args(p) + ["--target", "specdec-test/not-a-cached-model"],
                            ["target", "not found", "specdec-test/not-a-cached-model"]),
    "missing-drafter": (lambda p: text_args(p) + ["--drafter", p["root"] + "/no_drafter"],
                        ["drafter", "no_drafter"]),
    "missing-image": (lambda p: llava_args(p, "--image", p["root"] + "/missing.png"),
                      ["--image", "missing.png"]),
    "text-as-png": (lambda p: llava_args(p, "--image", p["fake_png"]), ["--image", "x.png", "image"]),
    "image-is-dir": (lambda p: llava_args(p, "--image", p["root"]), ["--image", "not a file"]),
    "image-to-text-target": (lambda p: text_args(p, "--image", p["png"]), ["--image", "text-only"]),
    "placeholder-without-image": (lambda p: llava_args(p, prompt="<image> hello"), ["<image>", "--image"]),
    "bad-method": (lambda p: text_args(p, "--method", "beam"), ["--method", "beam"]),
    "rsd_c-without-branching": (lambda p: text_args(p, "--method", "rsd_c"), ["branching"]),
    "policy-on-tree": (lambda p: text_args(p, "--method", "rsd_s", "--width", "2", "--depth", "2", "--policy",
                                           "adaedl"), ["policy", "adaedl"]),
    "bad-policy-arg": (lambda p: text_args(p, "--policy", "adaedl", "--policy-arg", "nonsense=1"),
                       ["nonsense"]),
    "no-drafter": (lambda p: ["generate", "--target", p["target"], "--prompt", "hi", "--device", "cpu"],
                   ["--drafter"]),
    "bad-branching": (lambda p: text_args(p, "--method", "rsd_c", "--branching", "2,x"), ["--branching"]),
    "bad-top-p": (lambda p: text_args(p, "--top-p", "0", "--max-new-tokens", "2"), ["--top-p"]),
    "top-p-above-1": (lambda p: text_args(p, "--top-p", "1.5"), ["--top-p", "1.5"]),
    "bad-top-k": (lambda p: text_args(p, "--top-k", "-1"), ["--top-k"]),
    "empty-prompt": (lambda p: text_args(p) + ["--prompt", "  "], ["--prompt", "empty", "prompt 2 of 2"]),
    "no-prompt": (lambda p: ["generate", "--target", p["target"], "--drafter", p["drafter"]],
                  ["--prompt", "--prompts-file"]),
    "blank-prompts-file": (lambda p: text_args(p) + ["--prompts-file", p["blank_prompts"]],
                           ["--prompts-file", "blank_prompts.txt", "no prompt"]),
    "missing-prompts-file": (lambda p: text_args(p) + ["--prompts-file", p["root"] + "/nope.txt"],
                             ["--prompts-file", "nope.txt", "no such file"]),
    "stdin-twice": (lambda p: text_args(p) + ["--prompt", "-", "--prompts-file", "-"], ["stdin", "once"]),
    "image-count-mismatch": (lambda p: llava_args(p, "--prompt", "hi", "--prompt", "yes", "--image", p["png"],
                                                  "--image", p["png"]),
                             ["--image", "2 times for 3 prompts", "one per prompt"]),
    "specinfer-without-branching": (lambda p: text_args(p, "--method", "specinfer"),
                                    ["--branching", "specinfer"]),
    "rsd_s-without-depth": (lambda p: text_args(p, "--method", "rsd_s", "--width", "2"),
                            ["--width", "--depth"]),
    "lookup-on-tree": (lambda p: text_args(p, "--method", "rsd_c", "--branching", "2", "--lookup", "2"),
                       ["--lookup", "--method sd", "rsd_c"]),
    "lookup-on-lookup": (lambda p: text_args(p, "--lookup", "2") + ["--drafter", "prompt-lookup"],
                         ["--lookup", "prompt-lookup"]),
    "bad-lookup": (lambda p: text_args(p, "--lookup", "0"), ["--lookup"]),
    "bad-draft-vocab": (lambda p: text_args(p, "--draft-vocab", "-1"), ["--draft-vocab"]),
    "folder-not-a-model": (lambda p: text_args(p) + ["--drafter", p["root"]], ["drafter", "config.json"]),
    "drafter-hub-name-not-cached": (lambda p: text_args(p) + ["--drafter", "nobody/no-such-model-xyz"],
                            ["drafter", "nobody/no-such-model-xyz", "--download"]),
    "image-to-named-text-target": (lambda p: ["generate", "--target", "smollm2-135m", "--drafter",
                                              "smollm2-drafter", "--prompt", "hi", "--image", p["png"]],
                                   ["--image", "text-only", "smollm2-135m"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_exit_2_with_one_line(capsys, paths, case):
    make, words = ERRORS[case]
    rc, out, err = run(capsys, *make(paths))
    assert rc == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error" in lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert out == ""


# judged from the arguments alone: none of these may wait for a model to load
BEFORE_LOADING = ["missing-target", "missing-drafter", "bad-top-p", "top-p-above-1", "bad-top-k",
                  "empty-prompt", "rsd_c-without-branching", "specinfer-without-branching",
                  "rsd_s-without-depth", "policy-on-tree", "lookup-on-tree", "lookup-on-lookup",
                  "folder-not-a-model", "hub-name-not-cached", "drafter-hub-name-not-cached",
                  "image-to-text-target",
                  "image-to-named-text-target", "no-prompt", "blank-prompts-file", "missing-prompts-file",
                  "stdin-twice", "image-count-mismatch"]


@pytest.mark.parametrize("case", BEFORE_LOADING)
def test_argument_errors_come_before_any_model_loads(capsys, paths, case, monkeypatch):
    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "_load_model", no_loading)
    make, words = ERRORS[case]
    rc, out, err = run(capsys, *make(paths))
    assert rc == 2 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_device_without_cuda(capsys, paths):
    rc, _, err = run(capsys, *text_args(paths, "--device", "cuda"))
    assert rc == 2 and "CUDA is not available" in err


# ----------------------------------------------------------------------------------------------
# the module entry point, once in a subprocess


def test_python_dash_m_specdec(paths):
    cmd = [sys.executable, "-m", "specdec", "generate", "--target", paths["target"],
           "--drafter", paths["drafter"], "--prompt", PROMPT, "--method", "specinfer", "--branching", "2,2",
           "--temperature", "0.7", "--seed", "0", "--max-new-tokens", "6", "--device", "cpu", "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert obj["args"]["method"] == "specinfer" and obj["stats"]["new_tokens"] >= 1
