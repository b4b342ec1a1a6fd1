"""Plain-PyTorch references: the spec every backend is tested against (never on the fast path)."""

from .attention import tree_attention
from .chain import verify_chain, verify_chain_greedy
from .entropy import adaedl_stop, draft_entropy
from .gumbel import gumbel_topk, stochastic_beam_step
from .kv_cache import compact_tree_kv
from .losses import kl_loss, tvd_loss, tvdpp_loss
from .sampling import sampling_probs
from .tree import tree_attention_mask, tree_position_ids, verify_tree, verify_tree_greedy

__all__ = [
    "adaedl_stop", "compact_tree_kv", "draft_entropy", "gumbel_topk", "sampling_probs",
    "stochastic_beam_step",
    "tree_attention", "tree_attention_mask", "tree_position_ids", "verify_chain", "verify_chain_greedy",
    "verify_tree",
    "verify_tree_greedy", "kl_loss", "tvd_loss", "tvdpp_loss",
]
