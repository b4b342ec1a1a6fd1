"""specdec: the thin speculative decoder built on specdec_kernels.

Runs every method of the seed papers on Hugging Face LLaVA models and plain causal LMs: "ar" (the
target alone), "sd" (chains, with static / AdaEDL / max-confidence draft lengths), "specinfer"
(i.i.d. trees), "rsd_c" (Gumbel-Top-k trees) and "rsd_s" (Stochastic Beam Search trees), with a
text-only drafter or a compact LLaVA drafter. Every method is exact: the output follows the target's
law (and equals its greedy decoding at temperature 0).

    >>> from specdec import SpeculativeDecoder, load_target, load_drafter   # doctest: +SKIP
    >>> dec = SpeculativeDecoder(load_target(path), load_drafter(dpath), method="rsd_c", branching=(2, 2, 2))
    >>> dec.generate(input_ids, pixel_values=pixels, temperature=0.7, seed=0).sequences
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The names below load on first use (PEP 562), not at `import specdec`: vLLM imports the plugin
# `specdec.vllm` in each of its processes, and an import error there would be logged and skipped by
# vLLM (its sampler left in place); the plugin imports what it needs when it activates, where a
# failure is raised. It also keeps transformers out of processes that never decode with specdec.
_LAZY = {
    "METHODS": "decoder", "POLICIES": "decoder", "GenerationResult": "decoder",
    "GenerationStats": "decoder", "SpeculativeDecoder": "decoder",
    "CompactLlavaDrafter": "models", "SequenceCache": "models", "load_drafter": "models",
    "load_target": "models", "PromptLookup": "prompt_lookup",
}  # fmt: skip

if TYPE_CHECKING:
    from .decoder import METHODS, POLICIES, GenerationResult, GenerationStats, SpeculativeDecoder
    from .models import CompactLlavaDrafter, SequenceCache, load_drafter, load_target
    from .prompt_lookup import PromptLookup


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'specdec' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "METHODS",
    "POLICIES",
    "CompactLlavaDrafter",
    "GenerationResult",
    "GenerationStats",
    "PromptLookup",
    "SequenceCache",
    "SpeculativeDecoder",
    "load_drafter",
    "load_target",
]
