"""Plain-PyTorch ground truth for the tree ops (docs/algorithms.md §4-5): the arithmetic spec in code.

Tree format (every tree op): ``parents`` int64 [B, N], ``parents[b, 0] = -1`` (node 0 is the root:
the last committed token), ``0 <= parents[b, i] < i`` for ``1 <= i < num_nodes[b]``; nodes at or
beyond ``num_nodes[b]`` are padding. The children of a node are the valid nodes whose parent it is,
in increasing index order (= draw order). Every backend walks only to LATER indices (children of
node n are searched among n+1..num_nodes-1), so even an invalid tree passed with check=False ends.

verify_tree, per request (recursive rejection sampling, docs/algorithms.md §4). Randomness: Philox
draw ``offset`` (slot 0) gives child node i its acceptance uniform u_i at element i - 1 (each node
is tested at most once); draw ``offset + 1`` (slot 1) gives the one final sample its uniforms at
element = vocabulary index. Streams as verify_chain (``VERIFY_TREE_OFFSET_STRIDE`` = 2). With
those choices a one-child-per-node tree gives exactly verify_chain's draws and decisions.

At node n with target row p and (stochastic drafts) draft row q, the residual after k rejected
children is kept in closed form, never stored: with a float32 scale C_k,

    r_k(x) = fl32(max(0, p(x) - C_k * q(x)))        (products and differences in float64;
                                                     C_k * q(x) is exact there, so an FMA or not
                                                     gives the same bits on every backend)
    r_k(x) = 0 for x in S_k                         (tokens already rejected, when excluded)

because max(0, max(0, p - a q) - b q) = max(0, p - (a + b) q). Its mass R_k is a float64. R_0 = 1
(target rows are distributions; with one child per node this is verify_chain's test). After a
stochastic rejection R_{k+1} is the EXACT sum of r_{k+1} in 2^-64 fixed point (two int64 words
per element, summed as integers): integer sums do not depend on the order of the reduction, so
sequential and parallel backends get the same bits, and the truncation error is below V * 2^-64.

Child k of n (token x = tokens[i], uniform u = u_i):
    stochastic:  a = fl32(u * q(x));  accept iff  a * R_k < r_k(x) * (1 - Q_k)   (float64)
                 Q_k = sum of q over S_k (float64, in sibling order); with replacement Q_k := 0.
    one-hot q:   accept iff  u * R_k < r_k(x)                                      (float64)
On rejection:
    without replacement:  C_{k+1} = fl32(min(C_k + R_k / (1 - Q_k), FLT_MAX)) (FLT_MAX if
                          1 - Q_k <= 0), Q_{k+1} = Q_k + q(x), S_{k+1} = S_k + {x}
    with replacement:     C_{k+1} = fl32(min(C_k + R_k, FLT_MAX)); nothing excluded
    one-hot q (either):   S_{k+1} = S_k + {x}, R_{k+1} = R_k - r_k(x)   (no pass over V)
A child whose token is out of range, or already in S_k (duplicates: only with check=False), is
rejected without changing the state. The first accepted child is descended into; when every child
is rejected the correction is the exponential race over r_m (slot-1 uniforms; if r_m is all zero,
the race over p; if p is all zero too, token 0); at a leaf the bonus is the race over p.

verify_tree(rule="block"): Traversal Verification (docs/algorithms.md §9, "Trees"), the tree form of
block verification. The same draws: node i's test uses u_i (slot 0, element i - 1; every node is
tested at most once, the root never), the final token the race (slot 1). The tree is walked in
post-order, children in draw order, each child's whole subtree before the next child; a node is
tested as a leaf once all its children's subtrees are deleted. Per node n on the walk's stack, the
same closed-form residual as above, r(x) = fl32(max(0, p(x) - C q(x))) (p(x) for one-hot drafts), 0
on S, plus its float64 weight w (the root: 1) and mass R (1 at the start):

    child c of n (token x), in draw order; skipped with its whole subtree, state unchanged, if x is
    out of range or already in S (duplicates: check=False only):
        w_c = 0 if num <= 0, else num / den if num < den, else 1                      (float64)
              stochastic:  num = (w * r(x)) * (1 - Q_S),  den = R * q(x)   (with replacement 1 - Q_S := 1)
              one-hot q:   num = w * r(x),                den = R
              (w_c = 0 without evaluating when w <= 0 or R <= 0)
        w_c > 0: walk c's subtree with weight w_c; if a node of it is accepted, stop.
        w_c = 0: the subtree is deleted untested (every weight below is 0).
        c's subtree deleted:  if w <= 0 or R <= 0: w = 0.  Else the residual moves on:
            stochastic:   C' = fl32(min(C + R / (w * (1 - Q_S)), FLT_MAX)) (FLT_MAX if w (1 - Q_S) <= 0;
                          with replacement R / w); without replacement Q_S += q(x), S += {x}
                          R' = the exact fixed-point sum of r' (one pass over p_n and q_n), computed
                          when next needed (the next child's weight, n's own test), never for
                          the root's last child
            one-hot q:    S += {x},  R' = R - r(x)
            m = (w * R') / R,  den = m + (1 - w),  w = m / den if den > 0 else 0,  R = R'
    then n itself: the root is accepted; another node is accepted iff u_n < w. Accepted: emit the
    path root -> n, then the race over r of n (over p itself when no deletion moved n's residual; if
    r is all zero, the race over p; if p is all zero too, token 0). Otherwise n's subtree is deleted
    (in its parent's loop).

Each weight is the probability that the subtree below accepts, given what was deleted before
(w_c = min(1, w P(x) / Q(x)) with P = r / R and Q the law x was drawn from); on a chain this is §9's
rule, scanning down from the last draft. Rows read: the scalars of every child reached, then one
row pair per deletion at a node whose weight must move on, then the one raced row.
"""

from __future__ import annotations

import torch

from ..contract import tree as contract
from ..contract._common import SeedLike, TreeResult, row_stream_ids
from ._fixed_point import fixed_point_sum
from ._philox import draw_uniform
from .chain import sample_race

_FLT_MAX = float(torch.finfo(torch.float32).max)
def residual_row(p: torch.Tensor, q: torch.Tensor | None, scale: float,
                 removed: torch.Tensor) -> torch.Tensor:
    """r(x) = fl32(max(0, p - scale * q)) in float64 arithmetic (p with no q), 0 where removed."""
    if q is None:
        r = p.clone()
    else:
        r = torch.clamp(p.double() - float(scale) * q.double(), min=0.0).to(torch.float32)
    r[removed] = 0.0
    return r


def _f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float64).to(torch.float32))


def _children(par: list[int], node: int, n_valid: int) -> list[int]:
    return [i for i in range(node + 1, n_valid) if par[i] == node]


def _valid_count(num_nodes: torch.Tensor | None, b: int, N: int) -> int:
    return N if num_nodes is None else min(max(int(num_nodes[b]), 1), N)


def _tree_block_row(P, Q, tok, par, b, n_valid, replacement, u_accept):
    """(accepted nodes in depth order, node n, row to race) of rule="block" for request b: the module
    docstring's arithmetic, recursively."""
    V = P.shape[2]

    def visit(node: int, w: float, is_root: bool):
        p = P[b, node]
        q = None if Q is None else Q[b, node]
        scale, mass, q_sum = 0.0, 1.0, 0.0
        removed = torch.zeros(V, dtype=torch.bool)
        pending = None  # (w, R) of a deletion whose R' is not computed yet (stochastic drafts)
        moved = False  # a deletion moved the residual: else the race is over p itself

        def resolve(w, mass, pending):
            if pending is None:
                return w, mass
            w0, mass0 = pending
            mass1 = fixed_point_sum(residual_row(p, q, scale, removed))
            m = (w0 * mass1) / mass0
            den = m + (1.0 - w0)
            return (m / den if den > 0 else 0.0), mass1

        for i in _children(par[b], node, n_valid):
            x = tok[b][i]
            if not 0 <= x < V or bool(removed[x]):
                continue  # skipped with its subtree, state unchanged
            w, mass = resolve(w, mass, pending)
            pending = None
            r_x = float(residual_row(p[x:x + 1], None if q is None else q[x:x + 1], scale,
                                     torch.zeros(1, dtype=torch.bool)))
            w_c = 0.0
            if w > 0 and mass > 0:
                if q is None:
                    num, den = w * r_x, mass
                else:
                    num, den = (w * r_x) * (1.0 if replacement else 1.0 - q_sum), mass * float(q[x])
                # num <= 0 only from rounding (earlier siblings' q summing past 1) or invalid rows
                w_c = 0.0 if not num > 0 else num / den if num < den else 1.0
            if w_c > 0:
                found = visit(i, w_c, False)
                if found is not None:
                    return [i] + found[0], found[1], found[2]
            if w <= 0 or mass <= 0:
                w = 0.0
                continue
            moved = True
            if q is None:
                removed[x] = True
                mass1 = mass - r_x
                m = (w * mass1) / mass
                den = m + (1.0 - w)
                w, mass = (m / den if den > 0 else 0.0), mass1
                continue
            den = w if replacement else w * (1.0 - q_sum)
            scale = _f32(min(scale + mass / den, _FLT_MAX)) if den > 0 else _FLT_MAX
            if not replacement:
                q_sum = q_sum + float(q[x])
                removed[x] = True
            pending = (w, mass)
        if not is_root:
            w, mass = resolve(w, mass, pending)
            if not u_accept[node - 1] < w:
                return None
        return [], node, (residual_row(p, q, scale, removed) if moved else p)

    return visit(0, 1.0, True)


def _verify_tree(rule: str, tokens, parents, target_probs, draft_probs, num_nodes, replacement, seed, offset,
                 row_streams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, N = parents.shape
    V = target_probs.shape[2]
    seeds, offsets = seed.cpu(), offset.cpu()
    streams = row_stream_ids(B, row_streams)
    out = torch.full((B, N), -1, dtype=torch.long)
    out_nodes = torch.full((B, N), -1, dtype=torch.long)
    num_accepted = torch.zeros(B, dtype=torch.long)
    P = target_probs.detach().cpu().float()
    Q = None if draft_probs is None else draft_probs.detach().cpu().float()
    tok = tokens.cpu().tolist()
    par = parents.cpu().tolist()
    exclude = Q is None or not replacement
    for b in range(B):
        n_valid = _valid_count(num_nodes, b, N)
        s, o, st = seeds[b], offsets[b], streams[b]
        u_accept = draw_uniform(s, o, 0, st, torch.arange(max(N - 1, 1))).tolist()
        u_sample = draw_uniform(s, o, 1, st, torch.arange(V))
        if rule == "block":
            path, node, row = _tree_block_row(P, Q, tok, par, b, n_valid, replacement, u_accept)
            for a, i in enumerate(path):
                out[b, a], out_nodes[b, a] = tok[b][i], i
            y = sample_race(row, u_sample)
            if y < 0:  # residual of zero mass: measure zero for valid inputs
                y = sample_race(P[b, node], u_sample)
            out[b, len(path)] = max(y, 0)
            num_accepted[b] = len(path)
            continue
        node, a = 0, 0
        while True:
            kids = _children(par[b], node, n_valid)
            p = P[b, node]
            if not kids:  # leaf: bonus token from p
                y = sample_race(p, u_sample)
                break
            q = None if Q is None else Q[b, node]
            scale, mass, q_sum, fresh = 0.0, 1.0, 0.0, True
            removed = torch.zeros(V, dtype=torch.bool)
            chosen = -1
            for i in kids:
                x = tok[b][i]
                if not 0 <= x < V or (exclude and bool(removed[x])):
                    continue  # rejected unread, state unchanged
                if not fresh:
                    mass = fixed_point_sum(residual_row(p, q, scale, removed))
                    fresh = True
                r_x = 0.0 if bool(removed[x]) else float(residual_row(p[x:x + 1], None if q is None
                                                                      else q[x:x + 1], scale,
                                                                      torch.zeros(1, dtype=torch.bool)))
                u = u_accept[i - 1]
                if q is None:
                    ok = u * mass < r_x
                else:
                    a32 = _f32(u * float(q[x]))  # float32 product, as verify_chain's u * q
                    ok = a32 * mass < r_x * (1.0 if replacement else 1.0 - q_sum)
                if ok:
                    chosen = i
                    break
                if q is None:
                    removed[x] = True
                    mass = mass - r_x
                elif replacement:
                    scale = _f32(min(scale + mass, _FLT_MAX))
                    fresh = False
                else:
                    den = 1.0 - q_sum
                    scale = _f32(min(scale + mass / den, _FLT_MAX)) if den > 0 else _FLT_MAX
                    q_sum = q_sum + float(q[x])
                    removed[x] = True
                    fresh = False
            if chosen >= 0:
                out[b, a] = tok[b][chosen]
                out_nodes[b, a] = chosen
                a += 1
                node = chosen
                continue
            y = sample_race(residual_row(p, q, scale, removed), u_sample)
            if y < 0:  # residual of zero mass: measure zero for valid inputs
                y = sample_race(p, u_sample)
            break
        out[b, a] = max(y, 0)
        num_accepted[b] = a
    dev = tokens.device
    return out.to(dev), num_accepted.to(dev), out_nodes.to(dev)


def op_verify_tree(*args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """specdec::verify_tree on its canonical arguments (``contract.tree.VerifyTreeArgs``)."""
    return _verify_tree("token", *args)


def op_verify_tree_block(*args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """specdec::verify_tree_block on its canonical arguments."""
    return _verify_tree("block", *args)


def verify_tree(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None = None,
    *,
    num_nodes: torch.Tensor | None = None,
    replacement: bool = False,
    seed: SeedLike = None,
    offset: int | torch.Tensor = 0,
    rule: str = "token",
    check: bool = True,
    generator: torch.Generator | None = None,
) -> TreeResult:
    """Reference of :func:`specdec_kernels.verify_tree` (same arguments, same result)."""
    run = {"token": op_verify_tree, "block": op_verify_tree_block}[contract.check_rule(rule)]
    args = contract.verify_tree_args(tokens, parents, target_probs, draft_probs, num_nodes, replacement, seed,
                                     offset, generator)
    if check:
        contract.check_verify_tree_values(*args)
    return TreeResult(*run(*args))


def op_verify_tree_greedy(tokens, parents, target_logits, num_nodes) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor]:
    """specdec::verify_tree_greedy on its canonical arguments."""
    B, N = parents.shape
    out = torch.full((B, N), -1, dtype=torch.long)
    out_nodes = torch.full((B, N), -1, dtype=torch.long)
    num_accepted = torch.zeros(B, dtype=torch.long)
    L = target_logits.detach().cpu().float()
    tok = tokens.cpu().tolist()
    par = parents.cpu().tolist()
    for b in range(B):
        n_valid = _valid_count(num_nodes, b, N)
        node, a = 0, 0
        while True:
            row = torch.where(torch.isnan(L[b, node]), float("-inf"), L[b, node])
            best = int(torch.argmax(row))  # first maximum
            match = [i for i in _children(par[b], node, n_valid) if tok[b][i] == best]
            if not match:
                break
            out[b, a] = best
            out_nodes[b, a] = match[0]
            a += 1
            node = match[0]
        out[b, a] = best
        num_accepted[b] = a
    dev = tokens.device
    return out.to(dev), num_accepted.to(dev), out_nodes.to(dev)


def verify_tree_greedy(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    target_logits: torch.Tensor,
    *,
    num_nodes: torch.Tensor | None = None,
    check: bool = True,
) -> TreeResult:
    """Reference of :func:`specdec_kernels.verify_tree_greedy`."""
    args = contract.verify_tree_greedy_args(tokens, parents, target_logits, num_nodes)
    if check:
        contract.check_verify_tree_greedy_values(*args)
    return TreeResult(*op_verify_tree_greedy(*args))


def _ancestors(par: list[int], i: int, n_valid: int) -> list[int]:
    """i and its ancestors; an invalid parent link (check=False) ends the walk."""
    if i >= n_valid:
        return [i]
    out = [i]
    while i > 0:
        pi = par[i]
        if not 0 <= pi < i:
            break
        out.append(pi)
        i = pi
    return out


def op_tree_attention_mask(parents, num_nodes, packed) -> torch.Tensor:
    """specdec::tree_attention_mask on its canonical arguments (brute force: walk every node up)."""
    B, N = parents.shape
    par = parents.cpu().tolist()
    mask = torch.zeros(B, N, N, dtype=torch.bool)
    for b in range(B):
        n_valid = _valid_count(num_nodes, b, N)
        for i in range(N):
            mask[b, i, _ancestors(par[b], i, n_valid)] = True
    if packed:
        mask = pack_bits(mask)
    return mask.to(parents.device)


def tree_attention_mask(parents: torch.Tensor, *, num_nodes: torch.Tensor | None = None,
                        packed: bool = False, check: bool = True) -> torch.Tensor:
    """Reference of :func:`specdec_kernels.tree_attention_mask`."""
    return op_tree_attention_mask(*contract.tree_attention_mask_args(parents, num_nodes, packed, check))


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool [..., N] -> int32 [..., ceil(N/32)], bit j % 32 of word j // 32 (little-endian)."""
    N = mask.shape[-1]
    W = (N + 31) // 32
    padded = torch.zeros(*mask.shape[:-1], W * 32, dtype=torch.int64, device=mask.device)
    padded[..., :N] = mask.to(torch.int64)
    words = (padded.reshape(*mask.shape[:-1], W, 32) << torch.arange(32, device=mask.device)).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def op_tree_position_ids(parents, prefix_len, num_nodes) -> torch.Tensor:
    """specdec::tree_position_ids on its canonical arguments."""
    B, N = parents.shape
    prefix = prefix_len.cpu()
    par = parents.cpu().tolist()
    out = torch.zeros(B, N, dtype=torch.long)
    for b in range(B):
        n_valid = _valid_count(num_nodes, b, N)
        for i in range(N):
            out[b, i] = int(prefix[b]) + len(_ancestors(par[b], i, n_valid)) - 1
    return out.to(parents.device)


def tree_position_ids(parents: torch.Tensor, prefix_len: int | torch.Tensor, *,
                      num_nodes: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
    """Reference of :func:`specdec_kernels.tree_position_ids`."""
    return op_tree_position_ids(*contract.tree_position_ids_args(parents, prefix_len, num_nodes, check))
