"""Block verification in the decoder and the CLI (``SpeculativeDecoder(verify="block")``,
``specdec generate --verify block``; docs/algorithms.md §9).

* greedy: nothing changes at temperature 0 (block verification of one-hot targets is the argmax
  rule): the output equals HF greedy and ``verify="token"``, and no sampling verification runs;
* sampling: the decoder really passes ``rule="block"`` to ``specdec_kernels.verify_chain`` (with
  every draft-length policy and with prompt lookup), the stats report the rule, a chain of one
  draft gives the token rule's output bit for bit, and the first two tokens follow the target's law
  (the chi-square harness of test_decoder_sampling.py);
* bad values: ``verify`` outside ("token", "block"), "block" with a tree method or "ar", and the
  CLI's ``--verify`` with another method than sd, are refused with a message naming them;
* the CLI flag reaches the decoder and is shown in the stats table and the JSON.
"""

from __future__ import annotations

import json

import pytest
import tiny_models as tm
import torch
from test_decoder_greedy import N_NEW, _make_ref, assert_same
from test_decoder_sampling import N_FAST, N_SLOW, Case, _check_law

import specdec_kernels as sk

specdec = pytest.importorskip("specdec")
from specdec import cli  # noqa: E402
from specdec.compare import System  # noqa: E402
from specdec.prompt_lookup import PromptLookup  # noqa: E402

# the last token (7) occurred twice before: prompt lookup drafts from the first round on
REPEAT_PROMPT = (3, 7, 5, 7, 2, 7)


def _kw(name: str) -> tuple[dict, str]:
    """Decoder keyword arguments of a chain configuration, and which drafter it takes ("model" or
    "lookup": prompt lookup alone)."""
    return {
        "static": ({"method": "sd", "gamma": 3}, "model"),
        "adaedl": ({"method": "sd", "gamma": 4, "policy": "adaedl"}, "model"),
        "confidence": ({"method": "sd", "gamma": 4, "policy": "confidence"}, "model"),
        "lookup": ({"method": "sd", "gamma": 4}, "lookup"),
        "model+lookup": ({"method": "sd", "gamma": 3, "lookup": PromptLookup()}, "model"),
        "model+lookup-adaedl": ({"method": "sd", "gamma": 4, "policy": "adaedl",
                                 "lookup": PromptLookup(), "lookup_gamma": 6}, "model"),
    }[name]


CONFIGS = ["static", "adaedl", "confidence", "lookup", "model+lookup", "model+lookup-adaedl"]


@pytest.fixture
def rules(monkeypatch) -> list[str]:
    """The ``rule`` of every specdec_kernels.verify_chain call (the decoder calls ``sk.verify_chain``)."""
    seen: list[str] = []
    real = sk.verify_chain

    def spy(*args, **kwargs):
        seen.append(kwargs.get("rule", "token"))
        return real(*args, **kwargs)

    monkeypatch.setattr(sk, "verify_chain", spy)
    return seen


# ---------------------------------------------------------------------------------------------
# greedy: the same output as HF greedy and as verify="token"
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def greedy_ref():
    # the prompt repeats itself so that prompt lookup copies from the first round on
    prompt = tm.GREEDY_PROMPT + tm.GREEDY_PROMPT[:4]
    return _make_ref(tm.greedy_target(), tm.greedy_drafter(), torch.tensor([prompt]), None)


@pytest.mark.parametrize("name", ["static", "adaedl", "lookup", "model+lookup-adaedl"])
def test_greedy_block_equals_hf_and_token(greedy_ref, rules, name):
    ref = greedy_ref
    kw, drafter = _kw(name)
    d = PromptLookup() if drafter == "lookup" else ref.drafter
    block = specdec.SpeculativeDecoder(ref.target, d, verify="block", **kw)
    res = block.generate(ref.ids, max_new_tokens=N_NEW, temperature=0.0)
    assert_same(res, ref.out, ref, f"{name} verify=block")
    tok = specdec.SpeculativeDecoder(ref.target, d, **kw).generate(ref.ids, max_new_tokens=N_NEW,
                                                                   temperature=0.0)
    assert torch.equal(res.sequences, tok.sequences)
    st = res.stats
    assert st.verify == "block" and st.as_dict()["verify"] == "block" and tok.stats.verify == "token"
    assert st.drafted > 0 and 0 < st.accepted < st.drafted, st.as_dict()  # accepts and rejects
    if "lookup" in name:
        assert st.copied > 0, st.as_dict()
    assert rules == []  # greedy verification throughout: verify_chain_greedy, never verify_chain
    res = block.generate(ref.ids, max_new_tokens=N_NEW, temperature=0.0, eos_token_id=ref.eos)
    assert_same(res, ref.eos_out, ref, f"{name} verify=block eos")


# ---------------------------------------------------------------------------------------------
# sampling: rule="block" reaches verify_chain; the law is the target's
# ---------------------------------------------------------------------------------------------


def _law_decoder(name: str, verify: str):
    kw, drafter = _kw(name)
    d = PromptLookup() if drafter == "lookup" else tm.law_drafter()
    return specdec.SpeculativeDecoder(tm.law_target(), d, verify=verify, **kw)


@pytest.mark.parametrize("name", CONFIGS)
def test_sampling_passes_rule_block(rules, name):
    ids = torch.tensor([REPEAT_PROMPT])
    dec = _law_decoder(name, "block")
    res = dec.generate(ids, max_new_tokens=16, temperature=1.0, seed=0)
    assert res.sequences.shape == (1, len(REPEAT_PROMPT) + 16)
    st = res.stats
    assert st.verify == "block" and st.as_dict()["verify"] == "block", st.as_dict()
    assert st.drafted > 0, st.as_dict()
    assert rules and set(rules) == {"block"}, rules
    if "lookup" in name:
        assert st.copied > 0, st.as_dict()  # copied drafts (point masses / q = None) went through it too
    # reproducible for a seed
    again = dec.generate(ids, max_new_tokens=16, temperature=1.0, seed=0)
    assert torch.equal(res.sequences, again.sequences)
    rules.clear()
    res = _law_decoder(name, "token").generate(ids, max_new_tokens=16, temperature=1.0, seed=0)
    assert res.stats.verify == "token" and rules and set(rules) == {"token"}, rules


def test_tree_lookup_tries_keep_the_token_rule(rules, monkeypatch):
    """A tree method's prompt-lookup tries (single paths included) go through verify_tree, never
    through the block rule of chains."""
    trees: list[str] = []
    real = sk.verify_tree
    monkeypatch.setattr(sk, "verify_tree",
                        lambda *a, **k: trees.append(k.get("rule", "token")) or real(*a, **k))
    dec = specdec.SpeculativeDecoder(tm.law_target(), PromptLookup(), method="rsd_c", branching=(1, 1))
    res = dec.generate(torch.tensor([REPEAT_PROMPT]), max_new_tokens=8, temperature=1.0, seed=0)
    assert res.stats.verify == "token" and not rules and trees and set(trees) == {"token"}, (rules, trees)
    assert res.stats.copied > 0


def test_one_draft_block_equals_token_bit_for_bit():
    """With K = 1 both rules decide and sample from the same draws: the same tokens for every seed
    (so the decoder's random stream is the same under both rules)."""
    ids = torch.tensor([tm.LAW_PROMPT])
    block = specdec.SpeculativeDecoder(tm.law_target(), tm.law_drafter(), method="sd", gamma=1,
                                       verify="block")
    token = specdec.SpeculativeDecoder(tm.law_target(), tm.law_drafter(), method="sd", gamma=1)
    for seed in range(8):
        a = block.generate(ids, max_new_tokens=10, temperature=0.8, seed=seed)
        b = token.generate(ids, max_new_tokens=10, temperature=0.8, seed=seed)
        assert torch.equal(a.sequences, b.sequences), seed
        assert a.stats.accepted == b.stats.accepted and a.stats.verify == "block"


# max_new_tokens=3: the first round drafts 2 (K = 2, where the rules differ), the harness checks the
# first two tokens; deeper chains in the slow cases (max_new_tokens = gamma + 1)
FAST_LAW_CASES = [
    Case("block-sd-g3", {"method": "sd", "gamma": 3, "verify": "block"}),
    Case("block-lookup-sd-g3", {"method": "sd", "gamma": 3, "verify": "block"}, drafter="lookup",
         prompt=REPEAT_PROMPT),
]
SLOW_LAW_CASES = [
    Case("block-sd-g5", {"method": "sd", "gamma": 5, "verify": "block"}, max_new_tokens=6),
    Case("block-sd-adaedl", {"method": "sd", "gamma": 3, "policy": "adaedl", "verify": "block"}),
    Case("block-sd-T0.7-topk8-topp0.9", {"method": "sd", "gamma": 3, "verify": "block"}, temperature=0.7,
         top_k=8, top_p=0.9),
    Case("block-model+lookup-sd-g3",
         {"method": "sd", "gamma": 3, "lookup": PromptLookup(), "verify": "block"}),
    Case("block-llava-sd", {"method": "sd", "gamma": 3, "verify": "block"}, target="llava"),
]


@pytest.mark.parametrize("case", FAST_LAW_CASES, ids=lambda c: c.id)
def test_block_first_two_tokens_follow_target_law(case):
    _check_law(case, N_FAST)


@pytest.mark.slow
@pytest.mark.parametrize("case", FAST_LAW_CASES + SLOW_LAW_CASES, ids=lambda c: c.id)
def test_block_first_two_tokens_follow_target_law_slow(case):
    _check_law(case, N_SLOW)


# ---------------------------------------------------------------------------------------------
# bad values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["bogus", "Block", "", None, 1])
def test_bad_verify_value(bad):
    with pytest.raises(ValueError, match=r"verify must be one of \('token', 'block'\)") as e:
        specdec.SpeculativeDecoder(tm.law_target(), tm.law_drafter(), method="sd", verify=bad)
    assert repr(bad) in str(e.value)


@pytest.mark.parametrize("kw", [
    {"method": "rsd_s", "width": 2, "depth": 2},
    {"method": "rsd_c", "branching": (2, 2)},
    {"method": "specinfer", "branching": (2, 2)},
    {"method": "ar"},
], ids=lambda kw: kw["method"])
def test_block_refused_outside_chains(kw):
    drafter = None if kw["method"] == "ar" else tm.law_drafter()
    with pytest.raises(ValueError, match=r"verify='block' applies to chains \(method 'sd'\)") as e:
        specdec.SpeculativeDecoder(tm.law_target(), drafter, verify="block", **kw)
    assert repr(kw["method"]) in str(e.value)
    # ... and with prompt lookup as the tree's drafter
    if kw["method"] != "ar":
        with pytest.raises(ValueError, match="verify='block'"):
            specdec.SpeculativeDecoder(tm.law_target(), PromptLookup(), verify="block", **kw)
    specdec.SpeculativeDecoder(tm.law_target(), drafter, verify="token", **kw)  # the default is fine


def test_compare_shape_names_the_rule():
    assert System("x", "ours", "sd", "model", {"gamma": 3, "verify": "block"}).shape == "gamma=3 verify=block"
    assert System("x", "ours", "sd", "model", {"gamma": 3, "verify": "token"}).shape == "gamma=3"


# ---------------------------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------------------------

PROMPT = "the cat sat on the"


@pytest.fixture(scope="module")
def cli_paths(tmp_path_factory, restore_offline_mode) -> dict[str, str]:
    import cli_fixtures as F

    root = str(tmp_path_factory.mktemp("cli_block_models"))
    target, drafter = F.save_text_pair(root)
    return {"target": target, "drafter": drafter}


def _cli(capsys, paths, *extra: str) -> tuple[int, str, str]:
    rc = cli.main(["generate", "--target", paths["target"], "--drafter", paths["drafter"], "--prompt", PROMPT,
                   "--device", "cpu", *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def _table(out: str) -> dict[str, str]:
    rows = out.rstrip("\n").split("\n\n")[-1].splitlines()
    return dict(r.split(None, 1) for r in rows)


@pytest.fixture
def decoder_kwargs(monkeypatch) -> list[dict]:
    """The keyword arguments of every SpeculativeDecoder the CLI builds."""
    seen: list[dict] = []
    real = specdec.SpeculativeDecoder

    def spy(target, drafter, **kw):
        seen.append(kw)
        return real(target, drafter, **kw)

    monkeypatch.setattr(specdec, "SpeculativeDecoder", spy)
    return seen


def test_cli_help_mentions_verify(capsys):
    assert cli.main(["generate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--verify {token,block}" in out and "block" in out


@pytest.mark.parametrize("verify", ["block", "token", None])
def test_cli_verify_reaches_decoder(capsys, cli_paths, decoder_kwargs, rules, verify):
    flag = [] if verify is None else ["--verify", verify]
    want = verify or "token"
    common = ["--method", "sd", "--gamma", "3", "--temperature", "0.7", "--seed", "0",
              "--max-new-tokens", "10", "--ignore-eos"]
    rc, out, err = _cli(capsys, cli_paths, *common, *flag)
    assert rc == 0, err
    assert [kw["verify"] for kw in decoder_kwargs] == [want]
    assert rules and set(rules) == {want}, rules
    table = _table(out)
    assert table["verify"] == want
    assert table["draft"] == ("gamma=3, verify=block" if want == "block" else "gamma=3"), table["draft"]
    rc, out, err = _cli(capsys, cli_paths, *common, *flag, "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["stats"]["verify"] == want and obj["args"]["verify"] == want


def test_cli_greedy_block_equals_token(capsys, cli_paths):
    texts = []
    for v in ("token", "block"):
        rc, out, err = _cli(capsys, cli_paths, "--method", "sd", "--gamma", "4", "--policy", "adaedl",
                            "--lookup", "1", "--temperature", "0", "--max-new-tokens", "20", "--json",
                            "--verify", v)
        assert rc == 0, err
        obj = json.loads(out)
        assert obj["stats"]["verify"] == v and obj["stats"]["drafted"] > 0
        texts.append(obj["text"])
    assert texts[0] == texts[1] and texts[0]


@pytest.mark.parametrize("method_args, words", [
    (["--method", "ar"], ["--verify block", "--method sd", "ar"]),
    (["--method", "rsd_s", "--width", "2", "--depth", "2"], ["--verify block", "--method sd", "rsd_s"]),
    (["--method", "rsd_c", "--branching", "2,2"], ["--verify block", "rsd_c"]),
], ids=["ar", "rsd_s", "rsd_c"])
def test_cli_block_with_other_methods_is_a_usage_error(capsys, cli_paths, monkeypatch, method_args, words):
    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "_load_model", no_loading)
    rc, out, err = _cli(capsys, cli_paths, *method_args, "--verify", "block")
    assert rc == 2 and out == "", (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "error" in lines[0], err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_cli_bad_verify_values(capsys, cli_paths):
    rc, out, err = _cli(capsys, cli_paths, "--verify", "bogus")
    assert rc == 2 and "--verify" in err and "bogus" in err and err.count("\n") == 1, err
    rc, out, err = _cli(capsys, cli_paths, "--policy", "adaedl", "--policy-arg", "verify=block",
                        "--max-new-tokens", "2")
    assert rc == 2 and "--verify" in err and "Traceback" not in err, err
