"""Shared inputs and checks of the tree op tests (test_tree_*.py, test_tree_block.py): tree shapes,
random verify_tree inputs, the result invariants, the equality grid and variants with their
seed / offset forms, the tree drawn on paper, the Markov "language model" and chi-square harness
of the law tests, and the brute-force attention mask."""

from __future__ import annotations

import math

import torch
from helpers import pooled_cells, to_device
from scipy import stats

# The tree ops by module: ``T.verify_tree`` is the public op (backend dispatch). (Kept in one place:
# the public names can replace ``T`` once they are exported.)
from specdec_kernels.ops import tree as T

STRIDE = T.VERIFY_TREE_OFFSET_STRIDE


# ----------------------------------------------------------------------------------------------
# Tree shapes (one row: a parent list in topological order)
# ----------------------------------------------------------------------------------------------


def chain_shape(n):
    """n nodes, one child each: root -> 1 -> 2 -> ... -> n-1."""
    return [-1] + list(range(n - 1))


def star_shape(m, cap):
    """The root with min(m, cap) children."""
    return [-1] + [0] * min(m, cap)


def rsdc_shape(branching, cap):
    """RSD-C: every node at depth l gets branching[l] children (at most cap), level by level."""
    parents, level = [-1], [0]
    for b in branching:
        nxt = []
        for node in level:
            for _ in range(min(b, cap)):
                parents.append(node)
                nxt.append(len(parents) - 1)
        level = nxt
    return parents


def sbs_shape(W, L, cap, g):
    """Stochastic-Beam-Search-like: W nodes per level; the parents of level l+1 are drawn among the
    level-l nodes (some get several children, some none) in random order, so siblings need not be
    contiguous."""
    parents, level = [-1], [0]
    for _ in range(L):
        count = {n: 0 for n in level}
        nxt = []
        for _ in range(W):
            open_ = [n for n in level if count[n] < cap]
            if not open_:
                break
            n = open_[int(torch.randint(len(open_), (1,), generator=g))]
            count[n] += 1
            parents.append(n)
            nxt.append(len(parents) - 1)
        level = nxt
    return parents


def random_shape(n, cap, g):
    """Random recursive tree: node i's parent is uniform among the earlier nodes with room left."""
    parents, count = [-1], [0]
    for _ in range(1, n):
        open_ = [j for j, c in enumerate(count) if c < cap]
        j = open_[int(torch.randint(len(open_), (1,), generator=g))]
        count[j] += 1
        parents.append(j)
        count.append(0)
    return parents


SHAPES = {
    "root": lambda cap, g: [-1],
    "chain": lambda cap, g: chain_shape(6),
    "star": lambda cap, g: star_shape(5, cap),
    "rsdc22": lambda cap, g: rsdc_shape((2, 2), cap),
    "rsdc222": lambda cap, g: rsdc_shape((2, 2, 2), cap),
    "rsdc31": lambda cap, g: rsdc_shape((3, 1), cap),
    "sbs": lambda cap, g: sbs_shape(3, 3, cap, g),
    "random": lambda cap, g: random_shape(12, cap, g),
}


def children_lists(parents):
    kids = [[] for _ in parents]
    for i, p in enumerate(parents):
        if i > 0:
            kids[p].append(i)
    return kids


# ----------------------------------------------------------------------------------------------
# Random verification inputs
# ----------------------------------------------------------------------------------------------


NOISE = 1.0  # draft logits = target logits + NOISE * N(0, 1): close-ish, rejections are common


def make_tree(B, V, *, seed, shape="mixed", drafts="stochastic", replacement=False,
              dtype=torch.float32, ragged=False):
    """Random verify_tree inputs on the CPU where accept and reject paths both run.

    p = softmax(z), q = softmax(z + NOISE * noise) per node (close-ish: drafts are often, not
    always, accepted). The children of node n are drawn from q[b, n]: without replacement (Gumbel-top-k,
    distinct siblings in draw order) when ``replacement`` is False, i.i.d. (duplicates possible)
    when True. ``drafts="deterministic"``: the children are the top-k of node n's noisy logits
    (draft_probs None); ``"deterministic_dups"``: random picks among that top 3, duplicates allowed
    (replacement=True). ``shape``: a key of SHAPES for every row, or "mixed" (a random one per
    row). Rows shorter than the longest get num_nodes and -1 padding; ``ragged`` also prunes a
    random number of trailing nodes of every row (the tree stays valid).
    """
    g = torch.Generator().manual_seed(seed)
    distinct = drafts == "deterministic" or (drafts == "stochastic" and not replacement)
    cap = V if distinct else 10**9
    names = list(SHAPES)
    rows = []
    for _ in range(B):
        kind = names[int(torch.randint(len(names), (1,), generator=g))] if shape == "mixed" else shape
        rows.append(SHAPES[kind](cap, g))
    N = max(len(r) for r in rows)
    z = 3.0 * torch.randn(B, N, V, generator=g)
    zq = z + NOISE * torch.randn(B, N, V, generator=g)
    p, q = torch.softmax(z, -1), torch.softmax(zq, -1)
    parents = torch.full((B, N), -1, dtype=torch.long)
    tokens = torch.full((B, N), -1, dtype=torch.long)
    counts = torch.tensor([len(r) for r in rows])
    for b, par in enumerate(rows):
        parents[b, :len(par)] = torch.tensor(par)
        tokens[b, 0] = int(torch.randint(V, (1,), generator=g))  # the root's token (ignored)
        for n, kids in enumerate(children_lists(par)):
            k = len(kids)
            if not k:
                continue
            if drafts == "stochastic" and not replacement:
                gumbel = -torch.log(-torch.log(torch.rand(V, generator=g).clamp(1e-12, 1 - 1e-7)))
                pick = (q[b, n].log() + gumbel).topk(k).indices
            elif drafts == "stochastic":
                pick = torch.multinomial(q[b, n], k, replacement=True, generator=g)
            elif drafts == "deterministic":
                pick = zq[b, n].topk(k).indices
            else:
                top = zq[b, n].topk(min(3, V)).indices
                pick = top[torch.randint(len(top), (k,), generator=g)]
            tokens[b, kids] = pick
    if ragged:
        counts = (torch.rand(B, generator=g) * counts).long() + 1  # in [1, len(row)]
    nn = None
    if ragged or bool((counts < N).any()):
        nn = counts
        pad = torch.arange(N)[None, :] >= nn[:, None]
        parents = parents.masked_fill(pad, -1)
        tokens = tokens.masked_fill(pad, -1)
    stochastic = drafts == "stochastic"
    return dict(tokens=tokens, parents=parents, target_probs=p.to(dtype),
                draft_probs=q.to(dtype) if stochastic else None, num_nodes=nn,
                replacement=replacement)


def node_counts(inputs):
    B, N = inputs["parents"].shape
    nn = inputs.get("num_nodes")
    return torch.full((B,), N) if nn is None else nn.cpu().long().clamp(1, N)


def stop_nodes(res):
    """The node whose row produced the emitted (correction or bonus) token: the last accepted node,
    or the root."""
    n = res.num_accepted.cpu()
    last = res.accepted_nodes.cpu().gather(1, (n - 1).clamp(min=0)[:, None]).squeeze(1)
    return torch.where(n > 0, last, 0)


def check_structure(res, inputs):
    """Invariants of a TreeResult whatever the randomness: the accepted nodes form a root path of
    valid nodes whose tokens are the accepted tokens; one emitted token in range after them; -1
    after that (both outputs)."""
    par, tok = inputs["parents"].cpu(), inputs["tokens"].cpu()
    B, N = par.shape
    V = (inputs.get("target_probs") if inputs.get("target_probs") is not None
         else inputs["target_logits"]).shape[-1]
    nn = node_counts(inputs)
    tokens, n, nodes = res.tokens.cpu(), res.num_accepted.cpu(), res.accepted_nodes.cpu()
    assert tokens.shape == (B, N) and tokens.dtype == torch.long
    assert n.shape == (B,) and n.dtype == torch.long
    assert nodes.shape == (B, N) and nodes.dtype == torch.long
    for b in range(B):
        a = int(n[b])
        assert 0 <= a < int(nn[b]), (b, a)
        prev = 0
        for j in range(a):
            i = int(nodes[b, j])
            assert prev < i < int(nn[b]) and int(par[b, i]) == prev, (b, j, i, prev)
            assert int(tokens[b, j]) == int(tok[b, i]), (b, j)
            prev = i
        assert 0 <= int(tokens[b, a]) < V, (b, tokens[b])
        assert bool((tokens[b, a + 1:] == -1).all()) and bool((nodes[b, a:] == -1).all()), b


def first_rows(inputs, kw, n):
    """The first n requests of a case (valid for every seed kind: an int seed gives row r stream r,
    a generator draws one int seed)."""
    B = inputs["parents"].shape[0]

    def cut(v):
        return v[:n] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == B else v

    return {k: cut(v) for k, v in inputs.items()}, {k: cut(v) for k, v in kw.items()}


def head(res, n):
    return T.TreeResult(*(t[:n] for t in res))


# V = 32000 only with small B: the reference is a Python loop.
GRID = [(V, B) for V in (1, 7, 111, 32000) for B in (1, 3, 33) if not (V == 32000 and B == 33)]


# Variants on top of the base case; each is (name, V, B, options).
VARIANTS = [(f"shape_{s}", 111, 33, dict(shape=s)) for s in SHAPES] + [
    ("shape_rsdc22_V1", 1, 3, dict(shape="rsdc22")),  # V = 1: at most one distinct child
    ("replacement", 111, 33, dict(replacement=True)),
    ("replacement_V7", 7, 33, dict(replacement=True)),  # duplicated siblings are frequent
    ("replacement_ragged_star", 7, 33, dict(replacement=True, shape="star", ragged=True)),
    ("deterministic", 111, 33, dict(drafts="deterministic")),
    ("deterministic_V7_ragged", 7, 33, dict(drafts="deterministic", ragged=True)),
    ("deterministic_dups", 7, 33, dict(drafts="deterministic_dups", replacement=True)),
    ("ragged", 111, 33, dict(ragged=True)),
    ("ragged_int32", 111, 33, dict(ragged=True, nn_dtype=torch.int32)),
    ("fp16", 111, 33, dict(dtype=torch.float16)),
    ("bf16", 111, 33, dict(dtype=torch.bfloat16)),
    ("fp16_replacement", 111, 33, dict(dtype=torch.float16, replacement=True)),
    ("bf16_deterministic_ragged", 111, 33, dict(dtype=torch.bfloat16, drafts="deterministic",
                                                 ragged=True)),
    ("seed_tensor", 111, 33, dict(seed="tensor")),
    ("seed_0d_tensor", 111, 33, dict(seed="0d")),
    ("offset_int", 111, 33, dict(offset=6)),
    ("offset_tensor", 111, 33, dict(offset="tensor")),
    ("offset_0d_tensor", 111, 33, dict(offset="0d")),
    ("seed_and_offset_tensor_ragged", 111, 33, dict(seed="tensor", offset="tensor", ragged=True)),
    ("big_seed_offset", 111, 33, dict(seed=2**63 - 1, offset=2**40 + 6)),
    ("generator", 111, 33, dict(seed="generator")),
    ("strided", 111, 33, dict(strided=True)),
    ("replacement_V32000", 32000, 3, dict(replacement=True, shape="rsdc22")),
    ("deterministic_V32000", 32000, 3, dict(drafts="deterministic", shape="sbs")),
    ("bf16_seed_tensor_V32000", 32000, 2, dict(dtype=torch.bfloat16, seed="tensor", shape="rsdc31")),
]
VARIANTS_BY_NAME = {name: (V, B, opts) for name, V, B, opts in VARIANTS}


def _strided(t):
    """The same values as a non-contiguous view (a slice of a larger buffer along N and V)."""
    B, N, V = t.shape
    big = torch.zeros(B, N + 2, V + 3, dtype=t.dtype)
    big[:, 1:N + 1, 2:V + 2] = t
    out = big[:, 1:N + 1, 2:V + 2]
    assert not out.is_contiguous()
    return out


def _rng_kw(opts, B, case_seed):
    seed, offset = opts.get("seed", 1234 + case_seed), opts.get("offset", 0)
    if seed == "tensor":
        seed = torch.arange(B, dtype=torch.long) * 1_000_003 + 17
    elif seed == "0d":
        seed = torch.tensor(99, dtype=torch.long)
    if offset == "tensor":
        offset = torch.arange(B, dtype=torch.long) * STRIDE + 2**33
    elif offset == "0d":
        offset = torch.tensor(4, dtype=torch.long)
    kw = dict(offset=offset)
    if seed == "generator":
        kw["generator"] = 5  # a placeholder: a fresh torch.Generator is made per call
    else:
        kw["seed"] = seed
    return kw


# The Triton interpreter walks trees slowly (~0.1 s per request): interpreted tests use the first
# rows of each case (a program per request: 2 rows cover the per-row streams). So does the reference
# backend, whose result IS the expected one (computed on every row once): its run checks the
# dispatch (seed and offset handling) only.
INTERP_ROWS = 2


# Tree drawn on paper (node: token):            0 (root)
#                                              /        \
#                                          1: 3          2: 5
#                                           |           /     \
#                                          3: 2      4: 1     5: 4
#                                                      |
#                                                    6: 0
PAPER_PARENTS = [-1, 0, 0, 1, 2, 2, 4]
PAPER_TOKENS = [7, 3, 5, 2, 1, 4, 0]
PV = 8


# ----------------------------------------------------------------------------------------------
# Distribution: the emitted sequence has exactly the target's law
# ----------------------------------------------------------------------------------------------
#
# Toy language model on MV = 5 tokens: the target's next-token law depends on the last token
# (a Markov chain P[last]); the drafter is another chain Q[last]. Every round, each trial builds a
# tree from its last token with a fixed shape, drawing the children of each node from Q[token of
# the node] (without replacement, i.i.d., or deterministically as Q's top-k), verifies it, and
# appends the emitted tokens. The first 3 emitted tokens must have the law P[s][y1] P[y1][y2]
# P[y2][y3]. The sharp draft (Q = softmax(4 * logits) against P = softmax(logits)) makes the later
# siblings of a without-replacement draw very unlike Q: verifying them with the i.i.d. rule is
# visibly biased (a negative control).

M_LOGITS = torch.tensor([
    [1.0, 0.5, 0.0, -0.5, -1.0],
    [0.0, 1.2, 0.3, -0.4, 0.6],
    [-0.5, 0.2, 1.0, 0.4, 0.0],
    [0.8, -0.3, 0.1, 0.9, -0.6],
    [0.2, 0.4, -0.8, 0.0, 1.1],
])
M_NOISE = torch.tensor([
    [0.6, -0.4, 0.3, 0.0, -0.2],
    [-0.5, 0.0, 0.7, 0.2, -0.3],
    [0.3, 0.5, -0.6, 0.0, 0.2],
    [-0.4, 0.6, 0.0, -0.5, 0.3],
    [0.0, -0.3, 0.5, 0.4, -0.7],
])
MV = M_LOGITS.shape[0]
M_START = 0
M_TARGET = torch.softmax(M_LOGITS, -1)
M_DRAFTS = {
    "close": torch.softmax(M_LOGITS + M_NOISE, -1),
    "sharp": torch.softmax(4.0 * M_LOGITS, -1),
}
N_EMIT = 3


def markov_law(P, n=N_EMIT, start=M_START):
    """Exact law of the first n tokens, flattened in row-major order over (y1, ..., yn)."""
    P = P.double()
    law = P[start]
    for _ in range(n - 1):
        law = (law[:, None] * P[torch.arange(law.numel()) % MV]).reshape(-1)
    return law


# Shapes of the drafted trees in the law tests (sbs: W = 3 per level, node 2 without children).
LAW_SHAPES = {
    "2-2": rsdc_shape((2, 2), 9),
    "3-2": rsdc_shape((3, 2), 9),
    "2-2-2": rsdc_shape((2, 2, 2), 9),
    "star3": star_shape(3, 9),
    "chain3": chain_shape(4),
    "sbs": [-1, 0, 0, 0, 1, 1, 3, 4, 6, 6],
}


def draft_tree(last, parents, Q, drafting, g):
    """Tokens [M, N] of trees rooted at ``last`` [M]: the children of each node drawn from
    Q[token of the node], without replacement ("wor", Gumbel-top-k), i.i.d. ("iid") or as Q's top-k
    ("det")."""
    M, N = last.shape[0], len(parents)
    tok = torch.zeros(M, N, dtype=torch.long)
    tok[:, 0] = last
    for n, kids in enumerate(children_lists(parents)):
        if not kids:
            continue
        q = Q[tok[:, n]]
        if drafting == "wor":
            gumbel = -torch.log(-torch.log(torch.rand(M, MV, generator=g).clamp(1e-12, 1 - 1e-7)))
            pick = (q.log() + gumbel).topk(len(kids), -1).indices
        elif drafting == "iid":
            pick = torch.multinomial(q, len(kids), replacement=True, generator=g)
        else:
            pick = q.topk(len(kids), -1).indices
        tok[:, kids] = pick
    return tok


def simulate_tree(verify, *, trials, shape, drafting="wor", draft="close", replacement=None,
                  ragged=False, seed_mode="int", gen_seed=0, device="cpu"):
    """Run ``trials`` independent decodings in one batch; return ([trials, N_EMIT] tokens, stats).

    verify(tokens, parents, p, q, num_nodes, replacement, seed, offset) -> TreeResult, on ``device``.
    replacement: the flag passed to the verifier (default: True for i.i.d. drafts).
    seed_mode "int": one int seed per call, offset advanced by the stride each round; "tensor": a
    seed per trial that follows it across rounds (and batch positions).
    """
    if replacement is None:
        replacement = drafting == "iid"
    Q = M_DRAFTS[draft]
    par_list = LAW_SHAPES[shape]
    N = len(par_list)
    g = torch.Generator().manual_seed(gen_seed)
    out = torch.full((trials, N_EMIT), -1, dtype=torch.long)
    filled = torch.zeros(trials, dtype=torch.long)
    last = torch.full((trials,), M_START, dtype=torch.long)
    trial_seed = torch.arange(trials, dtype=torch.long) * 7919 + 1000 * gen_seed + 1
    rows = torch.arange(trials)
    info = dict(rounds=0, accepted=0, deep=0, all_rejected=0, leaves=0)
    while rows.numel():
        M = rows.numel()
        tok = draft_tree(last[rows], par_list, Q, drafting, g)
        parents = torch.tensor(par_list).expand(M, N).contiguous()
        nn = None
        if ragged:  # prune a random number of trailing nodes: a prefix of the draw order stays valid
            nn = torch.randint(1, N + 1, (M,), generator=g)
            pad = torch.arange(N)[None, :] >= nn[:, None]
            tok, parents = tok.masked_fill(pad, -1), parents.masked_fill(pad, -1)
        p = M_TARGET[tok.clamp(min=0)]
        q = Q[tok.clamp(min=0)] if drafting != "det" else None
        if seed_mode == "int":
            seed, offset = 1000 + gen_seed, info["rounds"] * STRIDE
        else:
            seed, offset = trial_seed[rows], torch.full((M,), info["rounds"] * STRIDE, dtype=torch.long)
        res = verify(*to_device((tok, parents, p, q, nn, replacement, seed, offset), device))
        tokens, nacc = res.tokens.cpu(), res.num_accepted.cpu()
        info["accepted"] += int(nacc.sum())
        info["deep"] += int((nacc >= 2).sum())
        stop = stop_nodes(res)
        n_kids = torch.tensor([len(k) for k in children_lists(par_list)])[stop]
        if nn is not None:
            n_kids = ((parents == stop[:, None]) & (torch.arange(N)[None, :] > 0)).sum(1)
        info["all_rejected"] += int((n_kids >= 2).sum())
        info["leaves"] += int((n_kids == 0).sum())
        emitted = nacc + 1
        for j in range(N):
            m = (j < emitted) & (filled[rows] + j < N_EMIT)
            out[rows[m], filled[rows[m]] + j] = tokens[m, j]
        filled[rows] += emitted
        last[rows] = tokens.gather(1, nacc[:, None]).squeeze(1)
        rows = rows[filled[rows] < N_EMIT]
        info["rounds"] += 1
    assert bool((out >= 0).all() and (out < MV).all())
    return out, info


def chi2_pvalue(samples, law):
    """Chi-square p-value of the samples [n, N_EMIT] against ``law``; cells with expected count
    < 5 are pooled."""
    idx = torch.zeros(samples.shape[0], dtype=torch.long)
    for j in range(samples.shape[1]):
        idx = idx * MV + samples[:, j]
    counts = torch.bincount(idx, minlength=law.numel()).double()
    expected = samples.shape[0] * law
    o, e = pooled_cells(counts, expected)
    e = e * (o.sum() / e.sum())  # chisquare wants equal totals
    return float(stats.chisquare(o.numpy(), e.numpy()).pvalue)


# Trials per law test. The reference costs ~6 ms per tree (a Python loop), the Triton interpreter
# is slower than compiled kernels by orders of magnitude, the compiled kernels take microseconds.
# The negative controls run at the size of the backend they run on, so every size has the power to
# reject a biased law.
N_DEFAULT = {"reference": 500, "compiled": 20_000}  # the Triton interpreter: in the slow tests only
N_SLOW = {"reference": 2000, "interpreted": 300, "compiled": 200_000}
P_MIN = 1e-6  # fixed seeds: a correct implementation passes at every size, deterministically


def _size(backend):
    if backend.name == "reference":
        return "reference"
    return "interpreted" if backend.interpreted else "compiled"


def _trials(backend, table):
    return table[_size(backend)]


LAW_CASES = [
    # name, options of simulate_tree
    ("wor_2-2", dict(shape="2-2")),
    ("wor_3-2_sharp", dict(shape="3-2", draft="sharp")),
    ("iid_3-2_sharp", dict(shape="3-2", drafting="iid", draft="sharp")),
    ("iid_2-2", dict(shape="2-2", drafting="iid")),
    ("det_3-2", dict(shape="3-2", drafting="det")),
    ("det_2-2-2_sharp_replacement_flag",
     dict(shape="2-2-2", drafting="det", draft="sharp", replacement=True)),
    ("wor_star3_sharp_seed_tensor", dict(shape="star3", draft="sharp", seed_mode="tensor")),
    ("wor_chain3", dict(shape="chain3")),
    ("wor_sbs_ragged_sharp", dict(shape="sbs", draft="sharp", ragged=True, seed_mode="tensor")),
    ("iid_sbs_ragged", dict(shape="sbs", drafting="iid", ragged=True)),
    ("det_sbs_ragged", dict(shape="sbs", drafting="det", ragged=True)),
]
LAW_BY_NAME = dict(LAW_CASES)


# The attention mask by an independent brute force (and the packed words unpacked).
def brute_mask(parents, num_nodes=None):
    """Ancestor-or-self closure by repeated boolean matrix products of the parent adjacency; padding
    rows see only themselves."""
    parents = parents.cpu()
    B, N = parents.shape
    nn = torch.full((B,), N) if num_nodes is None else num_nodes.cpu().long()
    idx = torch.arange(N)
    valid = idx[None, :] < nn[:, None]
    adj = torch.zeros(B, N, N)
    link = valid & (idx[None, :] > 0)
    b_i, i_i = link.nonzero(as_tuple=True)
    adj[b_i, i_i, parents[b_i, i_i]] = 1.0  # adj[b, i, j] = 1: j is the parent of i
    reach = torch.eye(N).expand(B, N, N) + adj
    for _ in range(max(1, math.ceil(math.log2(max(N, 2)))) + 1):
        reach = ((reach @ reach) > 0).float()
    return reach > 0


def unpack_bits(words, N):
    """int32 [..., W] -> bool [..., N]: bit j % 32 of word j // 32."""
    w = words.cpu().long() & 0xFFFFFFFF
    bits = (w[..., None] >> torch.arange(32)) & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :N].bool()
