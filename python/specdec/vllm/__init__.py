"""A vLLM plugin: vLLM's speculative verification runs through specdec_kernels.

Select it and vLLM's V1 rejection sampler verifies drafts with :func:`specdec_kernels.verify_chain`
(exact, Philox draws keyed by each request's seed, the same on every specdec backend) and
:func:`specdec_kernels.verify_chain_greedy`, by the standard rule or by block verification
(docs/algorithms.md §9), which vLLM's V1 runner does not implement:

    VLLM_PLUGINS=specdec python serve.py                      # the standard rule
    VLLM_PLUGINS=specdec SPECDEC_VLLM_RULE=block python ...   # block verification

or ``speculative_config={..., "rejection_sample_method": "block", "draft_sample_method":
"probabilistic"}``, or from Python, before the engine starts: ``specdec.vllm.activate(rule=...)``.

How it is wired: the package declares an entry point in vLLM's ``vllm.general_plugins`` group, which
vLLM runs in every process it starts (front end, engine core, workers) before any model is built.
vLLM runs every installed general plugin when ``VLLM_PLUGINS`` is unset, so :func:`register`
does nothing unless this plugin was selected: ``specdec`` listed in ``VLLM_PLUGINS``, or
``SPECDEC_VLLM=1`` (which :func:`activate` sets, so that the processes vLLM starts later follow).

Once active it replaces vLLM's module function ``rejection_sample`` (everything around it, the
bonus token's sampling, penalties, temperature, top-k/top-p and logprobs, stays vLLM's) and, for the
block rule with ``draft_sample_method="probabilistic"``, lets the drafter keep its probabilities
(vLLM 0.32 keeps them only for the standard rule; block verification needs q). It checks the vLLM
version and the functions it replaces first, and raises instead of leaving vLLM's sampler in place.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import os
from typing import Any

__all__ = ["SUPPORTED_VLLM", "activate", "calls", "is_active", "is_selected", "register", "rule"]

#: vLLM releases this plugin was written and tested against (major.minor).
SUPPORTED_VLLM = ("0.32",)
RULES = ("token", "block")
PLUGIN_NAME = "specdec"

_log = logging.getLogger("specdec.vllm")
# The rule of the RejectionSampler whose forward is running (its engine's speculative config).
_current_rule: contextvars.ContextVar[str | None] = contextvars.ContextVar("specdec_vllm_rule", default=None)
_state: dict[str, Any] = {"active": False, "rule": None, "calls": {"token": 0, "block": 0, "greedy": 0}}

# The parameters of vLLM's rejection_sample we take over, in order: a change there is a change of
# contract, and we refuse to run rather than guess.
_EXPECTED_PARAMS = (
    "draft_token_ids", "num_draft_tokens", "max_spec_len", "cu_num_draft_tokens", "draft_probs",
    "target_logits", "bonus_token_ids", "sampling_metadata", "synthetic_mode",
    "synthetic_conditional_rates", "use_fp64_gumbel",
)


def is_selected(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment selects this plugin: ``specdec`` in ``VLLM_PLUGINS``, or ``SPECDEC_VLLM=1``."""
    env = os.environ if environ is None else environ
    # Split exactly as vLLM does (no stripping): " specdec" would not run our entry point there.
    listed = env.get("VLLM_PLUGINS", "").split(",")
    return PLUGIN_NAME in listed or env.get("SPECDEC_VLLM", "0") not in ("", "0")


def is_active() -> bool:
    """Whether this process's vLLM verifies through specdec_kernels."""
    return bool(_state["active"])


def rule() -> str | None:
    """The rule chosen at activation (``SPECDEC_VLLM_RULE`` or ``activate(rule=)``); vLLM's
    ``rejection_sample_method="block"`` selects block for its engine whatever this says."""
    return _state["rule"]


def calls() -> dict[str, int]:
    """How many verification calls this process ran, by path: "greedy" (all rows greedy), "token"
    and "block" (rule used for the sampled rows). Counts this process only: with vLLM's default
    multiprocessing the engine runs in a child process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps
    it in this one)."""
    return dict(_state["calls"])


def register() -> None:
    """vLLM's general-plugin entry point: activate if selected, else do nothing."""
    if is_selected():
        activate()


def _check_version(version: str) -> None:
    if not any(version == v or version.startswith(v + ".") for v in SUPPORTED_VLLM):
        raise RuntimeError(
            f"specdec.vllm supports vLLM {', '.join(SUPPORTED_VLLM)}.x; this is vLLM {version}. "
            "Its rejection sampler may have changed, so the plugin refuses to patch it. Deselect the "
            "plugin (remove 'specdec' from VLLM_PLUGINS, unset SPECDEC_VLLM) or install a supported vLLM."
        )


def _resolve_rule(requested: str | None) -> str:
    value = requested if requested is not None else os.environ.get("SPECDEC_VLLM_RULE", "token")
    value = {"standard": "token"}.get(value.strip().lower(), value.strip().lower())
    if value not in RULES:
        raise ValueError(f"specdec.vllm: rule must be 'token' (alias 'standard') or 'block', got {value!r}")
    return value


def activate(rule: str | None = None) -> None:
    """Make this process's vLLM verify through specdec_kernels, and the processes it starts too.

    Args:
        rule: "token" (alias "standard", the default) or "block"; None reads ``SPECDEC_VLLM_RULE``.
            vLLM's ``rejection_sample_method="block"`` chooses block for its engine either way.

    Raises:
        RuntimeError: vLLM is not a supported release, or the functions replaced are not what this
            plugin was written for.
        ValueError: an unknown rule.
    """
    chosen = _resolve_rule(rule)
    import vllm
    from vllm.v1.sample import rejection_sampler as rs

    _check_version(vllm.__version__)
    original = getattr(rs, "_specdec_original_rejection_sample", rs.rejection_sample)
    params = tuple(inspect.signature(original).parameters)
    if params != _EXPECTED_PARAMS:
        raise RuntimeError(
            f"specdec.vllm: vllm.v1.sample.rejection_sampler.rejection_sample takes {params}, "
            f"not the {_EXPECTED_PARAMS} this plugin replaces; refusing to patch it"
        )
    drafter_cls = _drafter_class()
    from . import verify  # imports specdec_kernels: a failure here is raised before anything changes

    # The processes vLLM starts later (engine core, workers) run the general plugins again: make sure
    # they select this one and use the same rule.
    os.environ["SPECDEC_VLLM"] = "1"
    os.environ["SPECDEC_VLLM_RULE"] = chosen
    listed = os.environ.get("VLLM_PLUGINS")
    if listed is not None and PLUGIN_NAME not in listed.split(","):
        os.environ["VLLM_PLUGINS"] = ",".join([p for p in listed.split(",") if p.strip()] + [PLUGIN_NAME])

    _state["rule"] = chosen
    if _state["active"]:
        return
    _patch_rejection_sampler(rs, original, verify)
    _patch_drafter_probs(drafter_cls)
    _refuse_v2_runner()
    _state["active"] = True
    _log.info("specdec: vLLM %s verifies drafts with specdec_kernels (rule %s)", vllm.__version__, chosen)


def _patch_rejection_sampler(rs: Any, original: Any, verify: Any) -> None:
    cls = rs.RejectionSampler
    init, forward = cls.__init__, cls.forward

    @functools.wraps(init)
    def __init__(self, sampler, spec_config=None, device=None):  # noqa: N807
        method = getattr(spec_config, "rejection_sample_method", "standard")
        if method == "synthetic":
            raise ValueError(
                "specdec.vllm: rejection_sample_method='synthetic' accepts drafts at made-up rates; "
                "specdec verifies exactly. Use 'standard' or 'block', or deselect the plugin."
            )
        init(self, sampler, spec_config, device)
        self._specdec_rule = "block" if method == "block" else _state["rule"]

    @functools.wraps(forward)
    def forward_with_rule(self, *args, **kwargs):
        token = _current_rule.set(getattr(self, "_specdec_rule", _state["rule"]))
        try:
            return forward(self, *args, **kwargs)
        finally:
            _current_rule.reset(token)

    @functools.wraps(original)
    def rejection_sample_specdec(*args, **kwargs):
        chosen = _current_rule.get() or _state["rule"]
        metadata = kwargs.get("sampling_metadata", args[7] if len(args) > 7 else None)
        _state["calls"]["greedy" if metadata.all_greedy else chosen] += 1
        return verify.rejection_sample(*args, rule=chosen, **kwargs)

    rs._specdec_original_rejection_sample = original
    rs.rejection_sample = rejection_sample_specdec
    rs.expand_batch_to_tokens = verify.expand_batch_to_tokens
    cls.__init__ = __init__
    cls.forward = forward_with_rule


def _refuse_v2_runner() -> None:
    """vLLM's "v2" GPU model runner (``VLLM_USE_V2_MODEL_RUNNER``, chosen per model on GPUs) has a
    rejection sampler of its own that this plugin does not replace: building it raises, rather than
    leaving vLLM's verification in place unannounced."""
    try:
        from vllm.v1.worker.gpu.spec_decode import rejection_sampler as v2
    except ImportError:  # a vLLM build without the v2 runner cannot run it either
        return

    def __init__(self, *args, **kwargs):  # noqa: N807
        raise RuntimeError(
            "specdec.vllm replaces the rejection sampler of vLLM's V1 model runner (the CPU runner, and "
            "the GPU runner with VLLM_USE_V2_MODEL_RUNNER=0); this engine chose the v2 runner, whose "
            "sampler the plugin does not replace. Set VLLM_USE_V2_MODEL_RUNNER=0 or deselect the plugin."
        )

    v2.RejectionSampler.__init__ = __init__


def _drafter_class() -> Any:
    from vllm.v1.spec_decode import llm_base_proposer as lbp

    cls = getattr(lbp, "SpecDecodeBaseProposer", None)
    if cls is None or "_enable_probabilistic_draft_probs" not in inspect.getsource(cls.__init__):
        raise RuntimeError(
            "specdec.vllm: vLLM's SpecDecodeBaseProposer no longer sets _enable_probabilistic_draft_probs; "
            "refusing to patch it"
        )
    return cls


def _patch_drafter_probs(cls: Any) -> None:
    """Block verification needs the draft probabilities; vLLM 0.32's drafter keeps them only when the
    method is "standard" (and ``draft_sample_method="probabilistic"``)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):  # noqa: N807
        init(self, *args, **kwargs)
        spec = self.speculative_config
        wants_block = spec.rejection_sample_method == "block" or _state["rule"] == "block"
        if wants_block and spec.draft_sample_method == "probabilistic":
            self._enable_probabilistic_draft_probs = True

    cls.__init__ = __init__
