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

from .decoder import METHODS, POLICIES, GenerationResult, GenerationStats, SpeculativeDecoder
from .models import CompactLlavaDrafter, SequenceCache, load_drafter, load_target
from .prompt_lookup import PromptLookup

__version__ = "0.1.0"

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
