"""The plugin stays out of vLLM unless selected, and refuses loudly what it was not written for.

vLLM runs every installed ``vllm.general_plugins`` entry point when ``VLLM_PLUGINS`` is unset, so
``specdec.vllm.register`` must do nothing unless ``specdec`` is listed in ``VLLM_PLUGINS`` or
``SPECDEC_VLLM=1``. Activation patches vLLM's modules for good, and this session's plugin is active
(conftest.py), so each check runs in a fresh interpreter (``sys.executable -P``) with an environment built
explicitly: SPECDEC_VLLM, SPECDEC_VLLM_RULE and VLLM_PLUGINS removed, then set per case; PYTHONPATH kept (it
selects this tree's ``specdec``). Importing vLLM costs seconds, so one interpreter runs a sequence of cases
that leave vLLM untouched (resetting vLLM's ``plugins_loaded`` flag between them) and prints JSON:

- unset: VLLM_PLUGINS and SPECDEC_VLLM unset: vLLM calls ``register`` and vLLM's sampler stays its own;
- other: VLLM_PLUGINS=some_other: ``register`` is not even called;
- version: an unsupported vLLM version (``vllm.__version__ = "0.31.0"``): RuntimeError naming it,
  propagated by ``load_general_plugins`` (vLLM catches errors loading an entry point, not calling it);
- signature: a changed ``rejection_sample`` signature: RuntimeError, nothing patched;
- bad rule: ``SPECDEC_VLLM_RULE=bogus`` / ``activate(rule="nope")``: ValueError naming the value;
- selected: VLLM_PLUGINS=specdec: active, vLLM's function kept as ``_specdec_original_rejection_sample``;
- environment: ``activate`` sets SPECDEC_VLLM=1 and the rule, adds ``specdec`` to an existing VLLM_PLUGINS
  list (once), and a child process started with that environment (as vLLM starts its engine core and
  workers) selects the plugin with the same rule.

A second interpreter checks SPECDEC_VLLM=1 alone (VLLM_PLUGINS unset, and left unset).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import specdec.vllm

_CONTROLLED = ("SPECDEC_VLLM", "SPECDEC_VLLM_RULE", "VLLM_PLUGINS")

# Shared by the scripts: load vLLM's general plugins under an environment, report what happened.
_PRELUDE = r'''
import json, os, subprocess, sys
import vllm
import vllm.plugins as plugins
from vllm.v1.sample import rejection_sampler as rs
import specdec.vllm as sv

ORIGINAL, ORIGINAL_INIT = rs.rejection_sample, rs.RejectionSampler.__init__
VERSION = vllm.__version__
registered = []
real_register = sv.register


def counting_register():  # the entry point resolves specdec.vllm:register when vLLM loads it
    registered.append(1)
    return real_register()


sv.register = counting_register


def untouched():
    return (rs.rejection_sample is ORIGINAL and rs.RejectionSampler.__init__ is ORIGINAL_INIT
            and not hasattr(rs, "_specdec_original_rejection_sample") and not sv.is_active())


def load(env):
    for key in ("SPECDEC_VLLM", "SPECDEC_VLLM_RULE", "VLLM_PLUGINS"):
        os.environ.pop(key, None)
    os.environ.update(env)
    plugins.plugins_loaded = False
    del registered[:]
    try:
        plugins.load_general_plugins()
        error = None
    except Exception as e:  # noqa: BLE001
        error = [type(e).__name__, str(e)]
    return {"error": error, "registered": len(registered), "untouched": untouched(),
            "active": sv.is_active(), "selected": sv.is_selected(),
            "env": {k: os.environ.get(k) for k in ("SPECDEC_VLLM", "SPECDEC_VLLM_RULE", "VLLM_PLUGINS")}}


out = {}
'''

_SEQUENCE = r'''
out["unset"] = load({})
out["other"] = load({"VLLM_PLUGINS": "some_other"})
out["bad_rule_env"] = load({"SPECDEC_VLLM": "1", "SPECDEC_VLLM_RULE": "bogus"})

vllm.__version__ = "0.31.0"
out["version"] = load({"VLLM_PLUGINS": "specdec"})
vllm.__version__ = VERSION


def rejection_sample(draft_token_ids, num_draft_tokens, target_logits, sampling_metadata):
    raise AssertionError("not called")


rs.rejection_sample = rejection_sample
out["signature"] = load({"VLLM_PLUGINS": "specdec"})
out["signature"]["kept_changed"] = rs.rejection_sample is rejection_sample
rs.rejection_sample = ORIGINAL

try:
    sv.activate(rule="nope")
    out["bad_rule_call"] = None
except ValueError as e:
    out["bad_rule_call"] = str(e)
out["bad_rule_call_untouched"] = untouched()

out["selected"] = load({"VLLM_PLUGINS": "specdec"})
out["selected"].update(
    replaced=rs.rejection_sample is not ORIGINAL,
    original_kept=getattr(rs, "_specdec_original_rejection_sample", None) is ORIGINAL,
    expand_replaced=rs.expand_batch_to_tokens.__module__ == "specdec.vllm.verify",
    rule=sv.rule(),
)
patched = rs.rejection_sample

os.environ["VLLM_PLUGINS"] = "foo, bar"
sv.activate(rule="standard")
sv.activate(rule="block")
env = {k: os.environ.get(k) for k in ("SPECDEC_VLLM", "SPECDEC_VLLM_RULE", "VLLM_PLUGINS")}
out["reactivated"] = {"env": env, "rule": sv.rule(), "patched_once": rs.rejection_sample is patched}

child = (
    "import json, vllm.plugins, specdec.vllm as sv; vllm.plugins.load_general_plugins(); "
    "print(json.dumps({'active': sv.is_active(), 'rule': sv.rule()}))"
)
res = subprocess.run([sys.executable, "-P", "-c", child], env=dict(os.environ), capture_output=True,
                     text=True, timeout=300)
out["child"] = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else res.stderr[-2000:]
print(json.dumps(out))
'''

_SPECDEC_VLLM_ONLY = r'''
out["specdec_vllm"] = load({"SPECDEC_VLLM": "1", "SPECDEC_VLLM_RULE": " Block "})
out["specdec_vllm"]["rule"] = sv.rule()
print(json.dumps(out))
'''


def _run(script: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _CONTROLLED}
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    res = subprocess.run([sys.executable, "-P", "-c", _PRELUDE + script], env=env, capture_output=True,
                         text=True, timeout=600, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sequence() -> dict:
    return _run(_SEQUENCE)


ENV_NONE = {"SPECDEC_VLLM": None, "SPECDEC_VLLM_RULE": None, "VLLM_PLUGINS": None}


def test_inactive_when_not_selected(sequence):
    # (a) VLLM_PLUGINS unset: vLLM runs every general plugin, ours included, which does nothing.
    r = sequence["unset"]
    assert r["error"] is None and r["registered"] == 1, r
    assert r["untouched"] and not r["active"] and not r["selected"], r
    assert r["env"] == ENV_NONE, r


def test_inactive_when_another_plugin_is_listed(sequence):
    # (d) VLLM_PLUGINS lists another plugin: vLLM does not load ours at all.
    r = sequence["other"]
    assert r["error"] is None and r["registered"] == 0 and r["untouched"], r
    assert r["env"] == {**ENV_NONE, "VLLM_PLUGINS": "some_other"}, r


def test_unsupported_version_raises(sequence):
    # (e) The version check runs before any patch, and vLLM lets the error through load_general_plugins.
    r = sequence["version"]
    assert r["error"] is not None and r["error"][0] == "RuntimeError", r
    assert "0.31.0" in r["error"][1] and "0.32" in r["error"][1], r
    assert r["registered"] == 1 and r["untouched"], r
    assert r["env"] == {**ENV_NONE, "VLLM_PLUGINS": "specdec"}, r  # activate changed nothing


def test_changed_signature_raises(sequence):
    # (f) A rejection_sample with other parameters: refused, the function left as it was.
    r = sequence["signature"]
    assert r["error"] is not None and r["error"][0] == "RuntimeError", r
    assert "rejection_sample takes" in r["error"][1] and "refusing" in r["error"][1], r
    assert r["kept_changed"] and not r["active"], r


def test_unknown_rule_raises(sequence):
    # (g) From the environment (through load_general_plugins) and from activate(rule=...).
    r = sequence["bad_rule_env"]
    assert r["error"] is not None and r["error"][0] == "ValueError" and "'bogus'" in r["error"][1], r
    assert r["untouched"], r
    assert "'nope'" in sequence["bad_rule_call"] and sequence["bad_rule_call_untouched"], sequence


def test_selected_by_vllm_plugins(sequence):
    # (b) VLLM_PLUGINS=specdec: active, vLLM's function kept; the environment says so for child processes.
    r = sequence["selected"]
    assert r["error"] is None and r["registered"] == 1 and r["active"], r
    assert r["replaced"] and r["original_kept"] and r["expand_replaced"] and r["rule"] == "token", r
    assert r["env"] == {"SPECDEC_VLLM": "1", "SPECDEC_VLLM_RULE": "token", "VLLM_PLUGINS": "specdec"}, r


def test_activate_sets_the_environment_for_child_processes(sequence):
    # (h) activate() adds specdec to an existing VLLM_PLUGINS list (vLLM's child processes would not load
    # the plugin otherwise) and records the rule; a second activation re-patches nothing. A process started
    # with that environment selects the plugin with the same rule.
    r = sequence["reactivated"]
    expected = {"SPECDEC_VLLM": "1", "SPECDEC_VLLM_RULE": "block", "VLLM_PLUGINS": "foo, bar,specdec"}
    assert r["env"] == expected, r
    assert r["rule"] == "block" and r["patched_once"], r
    assert sequence["child"] == {"active": True, "rule": "block"}, sequence["child"]


def test_selected_by_specdec_vllm():
    # (c) SPECDEC_VLLM=1 alone selects it (VLLM_PLUGINS stays unset: every plugin keeps loading); the rule
    # from SPECDEC_VLLM_RULE is normalised.
    r = _run(_SPECDEC_VLLM_ONLY)["specdec_vllm"]
    assert r["error"] is None and r["registered"] == 1 and r["active"] and r["rule"] == "block", r
    assert r["env"] == {"SPECDEC_VLLM": "1", "SPECDEC_VLLM_RULE": "block", "VLLM_PLUGINS": None}, r


@pytest.mark.parametrize("environ,selected", [
    ({}, False),
    ({"VLLM_PLUGINS": "specdec"}, True),
    ({"VLLM_PLUGINS": "foo,specdec"}, True),
    ({"VLLM_PLUGINS": "specdecx,foo"}, False),
    ({"VLLM_PLUGINS": ""}, False),
    ({"SPECDEC_VLLM": "1"}, True),
    ({"SPECDEC_VLLM": "0"}, False),
    ({"SPECDEC_VLLM": ""}, False),
    ({"SPECDEC_VLLM": "0", "VLLM_PLUGINS": "specdec"}, True),
])
def test_is_selected(environ, selected):
    assert specdec.vllm.is_selected(environ) is selected


def test_v2_runner_sampler_is_refused_not_left_in_place():
    """vLLM's v2 GPU runner has its own rejection sampler, which the plugin does not replace: with the
    plugin active (conftest), building it raises and says how to get the V1 runner."""
    from vllm.v1.worker.gpu.spec_decode import rejection_sampler as v2

    with pytest.raises(RuntimeError, match="VLLM_USE_V2_MODEL_RUNNER=0"):
        v2.RejectionSampler(None, None, None)
