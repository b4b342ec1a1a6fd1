"""Plain-PyTorch references: the spec every backend is tested against (never on the fast path)."""

from .chain import verify_chain, verify_chain_greedy
from .gumbel import gumbel_topk, stochastic_beam_step
from .sampling import sampling_probs

__all__ = ["gumbel_topk", "sampling_probs", "stochastic_beam_step", "verify_chain", "verify_chain_greedy"]
