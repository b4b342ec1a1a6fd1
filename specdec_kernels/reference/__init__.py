"""Plain-PyTorch references: the spec every backend is tested against (never on the fast path)."""

from .chain import verify_chain, verify_chain_greedy
from .sampling import sampling_probs

__all__ = ["sampling_probs", "verify_chain", "verify_chain_greedy"]
