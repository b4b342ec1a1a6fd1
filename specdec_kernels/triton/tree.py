"""Tree ops (docs/algorithms.md §4-5) in Triton: exact tree verification, greedy verification, tree
attention masks and position ids.

Bit-identical to ``specdec_kernels.reference.tree`` (the arithmetic spec) and csrc/cpu/tree.cpp:
the same Philox draws, the same float32/float64 formulas and the same exact fixed-point masses.

Design of verify_tree: one program per request walks the tree from the root. The tree itself
(parents and tokens, N int64 each) lives in registers as two [NP] tiles, so finding the next child
of a node is a masked min over them, not a memory round trip. A child that is accepted costs two
scalar loads (p(x), q(x)) and one Philox block. Passes over V happen only where the math needs
them: the exact mass of the residual after a stochastic rejection that another sibling follows,
and the one final race (correction or bonus). The residual is recomputed from p and q in each pass
(closed form max(0, p - C q)), so there is no [V] scratch row, let alone a [B, N, V] temporary:
bytes moved ~= (1 + rejections followed by a sibling) * (p row + q row) per request. Its mass is
a sum of int64 fixed-point words, which is order-independent: the parallel tile reductions here
give the same bits as the CPU's sequential loop.

One program per request means a single SM streams a request's rows at B = 1; what bounds the
latency at decode sizes is the walk's dependent chain (a handful of scalar loads per level), not
the bandwidth of the final pass.

Design of verify_tree_block (rule="block", Traversal Verification; arithmetic in the reference's
module docstring): the same one program per request, the same register-resident tree, and a
post-order walk whose stack is the path root -> current node, kept in [NP] register tiles indexed
by node id, so there is no scratch memory and nothing of size V is stored. The walk is a dependent
chain per request (each weight depends on every deletion before it), which is why it is not split
across programs. Passes over V: one row pair per deletion whose moved-on mass R' is read later
(the spec's count: never for the root's last child, none for one-hot drafts, where R' = R - r(x)),
then the one final race; everything else is two scalar loads per child reached.
"""

import torch
import triton
import triton.language as tl

from .._backend import triton_interpret
from ._philox import row_draw_key, uniform_at, uniform_block

# Index sentinel of "no winner": larger than any vocabulary index.
_NO_IDX = tl.constexpr(2**31 - 1)
_FLT_MAX = tl.constexpr(3.4028234663852886e38)
_TWO32 = tl.constexpr(4294967296.0)
_TWO64 = tl.constexpr(18446744073709551616.0)
_TWO_M32 = tl.constexpr(2.3283064365386963e-10)
_TWO_M64 = tl.constexpr(5.421010862427522e-20)


@triton.jit
def _residual(p, q, scale):
    # fl32(max(0, p - scale * q)) in float64: scale * q is exact there, so FMA contraction or not
    # gives the same bits as the C++ kernels.
    v = p.to(tl.float64) - scale.to(tl.float64) * q.to(tl.float64)
    return tl.where(v > 0.0, v, 0.0).to(tl.float32)


@triton.jit
def _fixed_words(r):
    # hi = floor(r 2^32), lo = floor(r 2^64) - hi 2^32: both exact in float64 (r is a float32).
    r64 = tl.where(r > 0.0, tl.minimum(r, 1.0), 0.0).to(tl.float64)
    hi = (r64 * _TWO32).to(tl.int64)
    lo = (r64 * _TWO64 - hi.to(tl.float64) * _TWO32).to(tl.int64)
    return hi, lo


@triton.jit
def _next_scale(scale, mass, den):
    c = scale.to(tl.float64) + mass / den
    return tl.where(den > 0.0, tl.where(c < _FLT_MAX, c, _FLT_MAX), _FLT_MAX).to(tl.float32)


@triton.jit
def _residual_mass(prow, qrow, scale, rem, n_rem, idx, V, HAS_Q: tl.constexpr, BLOCK: tl.constexpr):
    """Exact mass of the residual of a node: words of every element, minus those of the excluded
    tokens (the same words, so the integer difference is exact)."""
    hi = tl.zeros((), tl.int64)
    lo = tl.zeros((), tl.int64)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < V
        p = tl.load(prow + offs, mask=m, other=0.0).to(tl.float32)
        if HAS_Q:
            r = _residual(p, tl.load(qrow + offs, mask=m, other=0.0).to(tl.float32), scale)
        else:
            r = p
        h, lw = _fixed_words(r)
        hi += tl.sum(h, axis=0)
        lo += tl.sum(lw, axis=0)
    live = idx < n_rem
    rs = tl.where(live, rem, 0)
    pr = tl.load(prow + rs, mask=live, other=0.0).to(tl.float32)
    if HAS_Q:
        rr = _residual(pr, tl.load(qrow + rs, mask=live, other=0.0).to(tl.float32), scale)
    else:
        rr = pr
    h, lw = _fixed_words(tl.where(live, rr, 0.0))
    hi -= tl.sum(h, axis=0)
    lo -= tl.sum(lw, axis=0)
    return hi.to(tl.float64) * _TWO_M32 + lo.to(tl.float64) * _TWO_M64


@triton.jit
def _race(prow, qrow, scale, rem, n_rem, idx, use_residual, k0, k1, st, d0, d1, V,
          HAS_Q: tl.constexpr, BLOCK: tl.constexpr):
    """Exponential race (key r / -log(u), ties to the smaller index) over the residual of the node
    (use_residual) or over p; returns _NO_IDX when every r is zero."""
    best = tl.zeros((), tl.float32)
    best_idx = tl.full((), _NO_IDX, tl.int32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < V
        p = tl.load(prow + offs, mask=m, other=0.0).to(tl.float32)
        if HAS_Q:
            q = tl.load(qrow + offs, mask=m & (use_residual != 0), other=0.0).to(tl.float32)
            r = tl.where(use_residual != 0, _residual(p, q, scale), p)
        else:
            r = p
        for j in range(0, n_rem):  # the excluded tokens: few (at most the node's children)
            rj = tl.sum(tl.where(idx == j, rem, 0), axis=0)
            r = tl.where(offs == rj, 0.0, r)
        first = tl.zeros((), tl.int32) + start // 4  # a tensor even where the interpreter gives an int
        u = tl.reshape(uniform_block(k0, k1, st, d0, d1, first, 1, BLOCK // 4), (BLOCK,))
        # div_rn: Triton's `/` is div.full.f32 (2 ulp) on NVIDIA; the race must be correctly
        # rounded to agree with the C++ kernels on who wins.
        key = tl.where(r > 0, tl.math.div_rn(r, -tl.log(u)), 0.0)
        tb = tl.max(key, axis=0)
        ti = tl.min(tl.where((key == tb) & (key > 0), offs, _NO_IDX), axis=0)
        better = tb > best  # tiles ascend: an equal key keeps the earlier (smaller) index
        best_idx = tl.where(better, ti, best_idx)
        best = tl.where(better, tb, best)
    return best_idx


@triton.jit
def _verify_tree_kernel(
    tok_ptr, s_tb, s_tn, par_ptr, s_pb, s_pn,
    p_ptr, sp_b, sp_n, q_ptr, sq_b, sq_n,
    nn_ptr, s_nn, seed_ptr, s_seed, off_ptr, s_off,
    out_tok_ptr, out_node_ptr, nacc_ptr,
    N, V, stream_mul,
    HAS_Q: tl.constexpr, HAS_NN: tl.constexpr, REPLACEMENT: tl.constexpr, EXCLUDE: tl.constexpr,
    NP: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    n_valid = tl.zeros((), tl.int64) + N
    if HAS_NN:
        n_valid = tl.minimum(tl.maximum(tl.load(nn_ptr + b * s_nn), 1), n_valid)
    k0, k1, st, d0, d1 = row_draw_key(seed_ptr, s_seed, off_ptr, s_off, b, stream_mul, 0, b >= 0)
    d1s = d1 + (d0 == 0xFFFFFFFF).to(tl.uint32)  # slot 1: draw = offset + 1 with the carry
    d0s = d0 + 1

    idx = tl.arange(0, NP).to(tl.int64)
    live = idx < n_valid
    par_row = tl.load(par_ptr + b * s_pb + idx * s_pn, mask=live, other=-2)
    tok_row = tl.load(tok_ptr + b * s_tb + idx * s_tn, mask=live, other=-1)
    path_tok = tl.full((NP,), -1, tl.int64)
    path_node = tl.full((NP,), -1, tl.int64)

    node = tl.zeros((), tl.int64)
    a = tl.zeros((), tl.int64)
    running = tl.full((), 1, tl.int32)
    use_residual = tl.zeros((), tl.int32)
    scale = tl.zeros((), tl.float32)
    rem = tl.full((NP,), -1, tl.int64)
    n_rem = tl.zeros((), tl.int64)
    while running != 0:
        prow = p_ptr + b * sp_b + node * sp_n
        qrow = q_ptr + b * sq_b + node * sq_n
        is_kid = (par_row == node) & (idx > node)
        n_kids = tl.sum(is_kid.to(tl.int64), axis=0)
        scale = tl.zeros((), tl.float32)
        mass = tl.full((), 1.0, tl.float64)
        q_sum = tl.zeros((), tl.float64)
        fresh = tl.full((), 1, tl.int32)
        rem = tl.full((NP,), -1, tl.int64)
        n_rem = tl.zeros((), tl.int64)
        chosen = tl.full((), -1, tl.int64)
        chosen_tok = tl.full((), -1, tl.int64)
        last = node
        k = tl.zeros((), tl.int64)
        while (k < n_kids) & (chosen < 0):
            child = tl.min(tl.where(is_kid & (idx > last), idx, NP), axis=0)
            last = child
            x = tl.sum(tl.where(idx == child, tok_row, 0), axis=0)
            usable = (x >= 0) & (x < V)
            if EXCLUDE:
                usable = usable & (tl.sum(((rem == x) & (idx < n_rem)).to(tl.int32), axis=0) == 0)
            if usable:
                if fresh == 0:
                    mass = _residual_mass(prow, qrow, scale, rem, n_rem, idx, V, HAS_Q, BLOCK)
                    fresh = tl.full((), 1, tl.int32)
                u = uniform_at(k0, k1, st, d0, d1, child - 1)
                p_x = tl.load(prow + x).to(tl.float32)
                if HAS_Q:
                    q_x = tl.load(qrow + x).to(tl.float32)
                    r_x = _residual(p_x, q_x, scale)
                    if REPLACEMENT:
                        om = tl.full((), 1.0, tl.float64)
                    else:
                        om = 1.0 - q_sum
                    ok = (u * q_x).to(tl.float64) * mass < r_x.to(tl.float64) * om
                else:
                    r_x = p_x
                    ok = u.to(tl.float64) * mass < r_x.to(tl.float64)
                if ok:
                    chosen = child
                    chosen_tok = x
                else:
                    if HAS_Q:
                        scale = _next_scale(scale, mass, om)
                        fresh = tl.zeros((), tl.int32)
                        if not REPLACEMENT:
                            q_sum = q_sum + q_x.to(tl.float64)
                            rem = tl.where(idx == n_rem, x, rem)
                            n_rem += 1
                    else:
                        mass = mass - r_x.to(tl.float64)
                        rem = tl.where(idx == n_rem, x, rem)
                        n_rem += 1
            k += 1
        if chosen >= 0:
            path_tok = tl.where(idx == a, chosen_tok, path_tok)
            path_node = tl.where(idx == a, chosen, path_node)
            a += 1
            node = chosen
        else:
            running = tl.zeros((), tl.int32)
            use_residual = (n_kids > 0).to(tl.int32)

    prow = p_ptr + b * sp_b + node * sp_n
    qrow = q_ptr + b * sq_b + node * sq_n
    y = _race(prow, qrow, scale, rem, n_rem, idx, use_residual, k0, k1, st, d0s, d1s, V, HAS_Q, BLOCK)
    if y == _NO_IDX:  # residual of zero mass (measure zero for valid inputs): fall back to p
        y = _race(prow, qrow, scale, rem, 0, idx, 0, k0, k1, st, d0s, d1s, V, HAS_Q, BLOCK)
    y64 = tl.where(y == _NO_IDX, 0, y).to(tl.int64)
    outm = idx < N
    tl.store(out_tok_ptr + b * N + idx, tl.where(idx < a, path_tok, tl.where(idx == a, y64, -1)), mask=outm)
    tl.store(out_node_ptr + b * N + idx, tl.where(idx < a, path_node, -1), mask=outm)
    tl.store(nacc_ptr + b, a)


@triton.jit
def _sibling_list(par_row, removed, node, NP: tl.constexpr):
    """The tokens excluded at ``node`` (S: its deleted children's) in the (idx, count) form that
    _residual_mass and _race read with rem = the token row: entry j of S sits where idx == j."""
    sel = (par_row == node) & (removed != 0)
    sel64 = sel.to(tl.int64)
    return tl.where(sel, tl.cumsum(sel64, axis=0) - 1, NP), tl.sum(sel64, axis=0)


@triton.jit
def _verify_tree_block_kernel(
    tok_ptr, s_tb, s_tn, par_ptr, s_pb, s_pn,
    p_ptr, sp_b, sp_n, q_ptr, sq_b, sq_n,
    nn_ptr, s_nn, seed_ptr, s_seed, off_ptr, s_off,
    out_tok_ptr, out_node_ptr, nacc_ptr,
    N, V, stream_mul,
    HAS_Q: tl.constexpr, HAS_NN: tl.constexpr, REPLACEMENT: tl.constexpr, EXCLUDE: tl.constexpr,
    NP: tl.constexpr, BLOCK: tl.constexpr,
):
    # Traversal Verification (rule="block"): the post-order walk of _tree_block_row, iterative.
    # The walk's stack is the path root -> node, so each frame is kept in [NP] register tiles
    # indexed by node id (every node is entered at most once) and "pop" is node = parents[node]:
    # no scratch memory, and nothing of size V beyond the row passes the spec asks for. The
    # excluded set S of a node is a flag on each of its deleted children (S = their tokens), so it
    # costs one int32 tile for the whole tree rather than a list per frame.
    # Every float64 expression is FMA-proof, so the GPU's contraction cannot change a bit against the
    # reference: products only feed comparisons, divisions or other products, sums add a quotient or
    # a conversion, and the one product that feeds a difference (C q in _residual) is exact.
    b = tl.program_id(0).to(tl.int64)
    n_valid = tl.zeros((), tl.int64) + N
    if HAS_NN:
        n_valid = tl.minimum(tl.maximum(tl.load(nn_ptr + b * s_nn), 1), n_valid)
    k0, k1, st, d0, d1 = row_draw_key(seed_ptr, s_seed, off_ptr, s_off, b, stream_mul, 0, b >= 0)
    d1s = d1 + (d0 == 0xFFFFFFFF).to(tl.uint32)  # slot 1: draw = offset + 1 with the carry
    d0s = d0 + 1

    idx = tl.arange(0, NP).to(tl.int64)
    live = idx < n_valid
    par_row = tl.load(par_ptr + b * s_pb + idx * s_pn, mask=live, other=-2)
    tok_row = tl.load(tok_ptr + b * s_tb + idx * s_tn, mask=live, other=-1)
    path_tok = tl.full((NP,), -1, tl.int64)  # by depth - 1: the stack of entered nodes
    path_node = tl.full((NP,), -1, tl.int64)
    removed = tl.zeros((NP,), tl.int32)  # node i's token is in S of its parent
    # A frame's state, saved at its node when a child is entered and restored when that child's
    # subtree is deleted. The child's own r(x) and q(x) are kept too, so the deletion that follows
    # reads no row again.
    sv_w = tl.zeros((NP,), tl.float64)
    sv_mass = tl.zeros((NP,), tl.float64)
    sv_scale = tl.zeros((NP,), tl.float32)
    sv_qsum = tl.zeros((NP,), tl.float64)
    sv_moved = tl.zeros((NP,), tl.int32)
    kid_r = tl.zeros((NP,), tl.float32)
    kid_q = tl.zeros((NP,), tl.float32)

    node = tl.zeros((), tl.int64)
    depth = tl.zeros((), tl.int64)
    last = tl.zeros((), tl.int64)  # the last child of node looked at
    w = tl.full((), 1.0, tl.float64)
    mass = tl.full((), 1.0, tl.float64)
    scale = tl.zeros((), tl.float32)
    q_sum = tl.zeros((), tl.float64)
    # Whether a deletion moved the node's residual on: if none did, the race is over p itself, so an
    # accepted node that deleted nothing (a leaf, most often) never reads its q row.
    moved = tl.zeros((), tl.int32)
    # A stochastic deletion leaves R' to be weighed (one pass over the row pair) only when
    # something reads it: the next usable child, or the node's own test. The root's last deletion
    # is never weighed, as in the spec.
    pend = tl.zeros((), tl.int32)
    w0 = tl.zeros((), tl.float64)
    mass0 = tl.full((), 1.0, tl.float64)
    running = tl.full((), 1, tl.int32)
    while running != 0:
        prow = p_ptr + b * sp_b + node * sp_n
        qrow = q_ptr + b * sq_b + node * sq_n
        sib = par_row == node
        child = tl.min(tl.where(sib & (idx > last), idx, NP), axis=0)
        has_child = child < NP
        x = tl.sum(tl.where(idx == child, tok_row, 0), axis=0)
        usable = has_child & (x >= 0) & (x < V)
        if EXCLUDE:
            usable = usable & (tl.sum((sib & (removed != 0) & (tok_row == x)).to(tl.int32), axis=0) == 0)
        if (pend != 0) & (usable | (~has_child & (node != 0))):
            ridx, n_rem = _sibling_list(par_row, removed, node, NP)
            mass1 = _residual_mass(prow, qrow, scale, tok_row, n_rem, ridx, V, HAS_Q, BLOCK)
            m = (w0 * mass1) / mass0
            den = m + (1.0 - w0)
            w = tl.where(den > 0.0, m / tl.where(den > 0.0, den, 1.0), 0.0)
            mass = mass1
            pend = tl.zeros((), tl.int32)
        drop = tl.zeros((), tl.int32)  # a subtree of node was deleted: move node's state on
        drop_node = tl.zeros((), tl.int64)
        drop_r = tl.zeros((), tl.float32)
        drop_q = tl.zeros((), tl.float32)
        if has_child:
            last = child
            if usable:
                p_x = tl.load(prow + x).to(tl.float32)
                if HAS_Q:
                    q_x = tl.load(qrow + x).to(tl.float32)
                    r_x = _residual(p_x, q_x, scale)
                    if REPLACEMENT:
                        num = w * r_x.to(tl.float64)
                    else:
                        num = (w * r_x.to(tl.float64)) * (1.0 - q_sum)
                    den = mass * q_x.to(tl.float64)
                else:
                    q_x = tl.full((), 1.0, tl.float32)
                    r_x = p_x
                    num = w * r_x.to(tl.float64)
                    den = mass
                # num <= 0 (only from rounding: earlier siblings' q summing past 1) deletes untested
                pos = num > 0.0
                lt = pos & (num < den)
                w_c = tl.where(lt, num / tl.where(lt, den, 1.0), tl.where(pos, 1.0, 0.0))
                w_c = tl.where((w > 0.0) & (mass > 0.0), w_c, 0.0)
                if w_c > 0.0:  # enter the child
                    sv_w = tl.where(idx == node, w, sv_w)
                    sv_mass = tl.where(idx == node, mass, sv_mass)
                    sv_scale = tl.where(idx == node, scale, sv_scale)
                    sv_qsum = tl.where(idx == node, q_sum, sv_qsum)
                    sv_moved = tl.where(idx == node, moved, sv_moved)
                    kid_r = tl.where(idx == child, r_x, kid_r)
                    kid_q = tl.where(idx == child, q_x, kid_q)
                    path_tok = tl.where(idx == depth, x, path_tok)
                    path_node = tl.where(idx == depth, child, path_node)
                    depth += 1
                    node = child
                    last = child
                    w = w_c
                    mass = tl.full((), 1.0, tl.float64)
                    scale = tl.zeros((), tl.float32)
                    q_sum = tl.zeros((), tl.float64)
                    moved = tl.zeros((), tl.int32)
                else:  # weight 0: deleted untested
                    drop = tl.full((), 1, tl.int32)
                    drop_node = child
                    drop_r = r_x
                    drop_q = q_x
        else:
            if node == 0:
                running = tl.zeros((), tl.int32)
            else:
                u = uniform_at(k0, k1, st, d0, d1, node - 1)
                if u.to(tl.float64) < w:
                    running = tl.zeros((), tl.int32)
                else:  # the node's subtree is deleted: back to its parent
                    at = idx == node
                    drop = tl.full((), 1, tl.int32)
                    drop_node = node
                    drop_r = tl.sum(tl.where(at, kid_r, 0.0), axis=0)
                    drop_q = tl.sum(tl.where(at, kid_q, 0.0), axis=0)
                    node = tl.sum(tl.where(at, par_row, 0), axis=0)
                    last = drop_node
                    depth -= 1
                    at = idx == node
                    w = tl.sum(tl.where(at, sv_w, 0.0), axis=0)
                    mass = tl.sum(tl.where(at, sv_mass, 0.0), axis=0)
                    scale = tl.sum(tl.where(at, sv_scale, 0.0), axis=0)
                    q_sum = tl.sum(tl.where(at, sv_qsum, 0.0), axis=0)
                    moved = tl.sum(tl.where(at, sv_moved, 0), axis=0)
        if drop != 0:
            if ~((w <= 0.0) | (mass <= 0.0)):  # the spec's test, spelled as it is (NaN moves on)
                moved = tl.full((), 1, tl.int32)
                if HAS_Q:
                    if REPLACEMENT:
                        den = w
                    else:
                        den = w * (1.0 - q_sum)
                    scale = _next_scale(scale, mass, den)
                    if not REPLACEMENT:
                        q_sum = q_sum + drop_q.to(tl.float64)
                        removed = tl.where(idx == drop_node, 1, removed)
                    pend = tl.full((), 1, tl.int32)
                    w0 = w
                    mass0 = mass
                else:
                    # One-hot q: R' = R - r(x) exactly as the spec, no pass over V.
                    removed = tl.where(idx == drop_node, 1, removed)
                    mass1 = mass - drop_r.to(tl.float64)
                    m = (w * mass1) / mass
                    den = m + (1.0 - w)
                    w = tl.where(den > 0.0, m / tl.where(den > 0.0, den, 1.0), 0.0)
                    mass = mass1
            else:
                w = tl.zeros((), tl.float64)

    # The accepted node's residual (C and S as the walk left them), or p where no deletion moved it,
    # raced as _verify_tree_kernel races a correction.
    prow = p_ptr + b * sp_b + node * sp_n
    qrow = q_ptr + b * sq_b + node * sq_n
    ridx, n_rem = _sibling_list(par_row, removed, node, NP)
    y = _race(prow, qrow, scale, tok_row, n_rem, ridx, moved, k0, k1, st, d0s, d1s, V, HAS_Q, BLOCK)
    if y == _NO_IDX:  # residual of zero mass (measure zero for valid inputs): fall back to p
        y = _race(prow, qrow, scale, tok_row, 0, ridx, 0, k0, k1, st, d0s, d1s, V, HAS_Q, BLOCK)
    y64 = tl.where(y == _NO_IDX, 0, y).to(tl.int64)
    outm = idx < N
    tl.store(out_tok_ptr + b * N + idx, tl.where(idx < depth, path_tok, tl.where(idx == depth, y64, -1)),
             mask=outm)
    tl.store(out_node_ptr + b * N + idx, tl.where(idx < depth, path_node, -1), mask=outm)
    tl.store(nacc_ptr + b, depth)


@triton.jit
def _argmax_row(row, V, BLOCK: tl.constexpr):
    # Ties to the smallest index; NaN never wins; an all -inf (or all NaN) row gives 0.
    best = tl.full((), float("-inf"), tl.float32)
    best_idx = tl.zeros((), tl.int32)
    found = tl.zeros((), tl.int32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(row + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        x = tl.where(x == x, x, float("-inf"))
        tb = tl.max(x, axis=0)
        ti = tl.min(tl.where((x == tb) & (offs < V), offs, _NO_IDX), axis=0)
        better = tb > best
        best_idx = tl.where(better, ti, best_idx)
        best = tl.where(better, tb, best)
        found = tl.where(better, 1, found)
    return tl.where(found != 0, best_idx, 0).to(tl.int64)


@triton.jit
def _verify_tree_greedy_kernel(
    tok_ptr, s_tb, s_tn, par_ptr, s_pb, s_pn, l_ptr, sl_b, sl_n, nn_ptr, s_nn,
    out_tok_ptr, out_node_ptr, nacc_ptr, N, V,
    HAS_NN: tl.constexpr, NP: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    n_valid = tl.zeros((), tl.int64) + N
    if HAS_NN:
        n_valid = tl.minimum(tl.maximum(tl.load(nn_ptr + b * s_nn), 1), n_valid)
    idx = tl.arange(0, NP).to(tl.int64)
    live = idx < n_valid
    par_row = tl.load(par_ptr + b * s_pb + idx * s_pn, mask=live, other=-2)
    tok_row = tl.load(tok_ptr + b * s_tb + idx * s_tn, mask=live, other=-1)
    path_node = tl.full((NP,), -1, tl.int64)
    path_tok = tl.full((NP,), -1, tl.int64)
    node = tl.zeros((), tl.int64)
    a = tl.zeros((), tl.int64)
    best = tl.zeros((), tl.int64)
    running = tl.full((), 1, tl.int32)
    while running != 0:
        best = _argmax_row(l_ptr + b * sl_b + node * sl_n, V, BLOCK)
        match = tl.min(tl.where((par_row == node) & (idx > node) & (tok_row == best), idx, NP), axis=0)
        if match < NP:
            path_node = tl.where(idx == a, match, path_node)
            path_tok = tl.where(idx == a, best, path_tok)
            a += 1
            node = match
        else:
            running = tl.zeros((), tl.int32)
    outm = idx < N
    tl.store(out_tok_ptr + b * N + idx, tl.where(idx < a, path_tok, tl.where(idx == a, best, -1)), mask=outm)
    tl.store(out_node_ptr + b * N + idx, tl.where(idx < a, path_node, -1), mask=outm)
    tl.store(nacc_ptr + b, a)


@triton.jit
def _tree_walk_kernel(par_ptr, s_pb, s_pn, nn_ptr, s_nn, pre_ptr, s_pre, out_ptr, N, W,
                      MODE: tl.constexpr, HAS_NN: tl.constexpr, NI: tl.constexpr, NP: tl.constexpr,
                      WP: tl.constexpr):
    # Grid (B, cdiv(N, NI)): NI nodes per program walk up their ancestors together, one step per
    # iteration, until every walk has ended; an invalid link (check=False) ends a walk.
    # MODE 0: bool mask rows [NI, N]; 1: packed int32 words [NI, W]; 2: position ids.
    b = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1).to(tl.int64) * NI + tl.arange(0, NI)
    n_valid = tl.zeros((), tl.int64) + N
    if HAS_NN:
        n_valid = tl.minimum(tl.maximum(tl.load(nn_ptr + b * s_nn), 1), n_valid)
    rows = i < N
    cur = tl.where(rows, i, -1)
    depth = tl.zeros((NI,), tl.int64)
    if MODE == 0:
        acc = (tl.arange(0, NP)[None, :] == cur[:, None]).to(tl.int8)
    else:
        acc = tl.where((tl.arange(0, WP)[None, :] == (cur // 32)[:, None]) & (cur >= 0)[:, None],
                       tl.full((NI, WP), 1, tl.int64) << (cur % 32)[:, None], 0)
    cur = tl.where(cur < n_valid, cur, -1)  # padding nodes see only themselves
    while tl.max(cur, axis=0) > 0:
        pi = tl.load(par_ptr + b * s_pb + tl.maximum(cur, 0) * s_pn, mask=cur > 0, other=-1)
        cur = tl.where((cur > 0) & (pi >= 0) & (pi < cur), pi, -1)
        step = cur >= 0
        depth += step.to(tl.int64)
        if MODE == 0:
            acc = acc | ((tl.arange(0, NP)[None, :] == cur[:, None]) & step[:, None]).to(tl.int8)
        else:
            acc = acc | tl.where((tl.arange(0, WP)[None, :] == (cur // 32)[:, None]) & step[:, None],
                                 tl.full((NI, WP), 1, tl.int64) << (tl.maximum(cur, 0) % 32)[:, None], 0)
    if MODE == 0:
        j = tl.arange(0, NP)[None, :]
        tl.store(out_ptr + b * N * N + i[:, None] * N + j, acc, mask=rows[:, None] & (j < N))
    elif MODE == 1:
        w = tl.arange(0, WP)[None, :]
        tl.store(out_ptr + b * N * W + i[:, None] * W + w, acc.to(tl.int32), mask=rows[:, None] & (w < W))
    else:
        pre = tl.load(pre_ptr + b * s_pre)
        tl.store(out_ptr + b * N + i, pre + depth, mask=rows)


# ---------------------------------------------------------------------------------------------
# Launchers


def _vocab_block(V: int) -> tuple[int, int]:
    """(BLOCK, num_warps) of the passes over V of one program."""
    if triton_interpret():
        return max(16, min(triton.next_power_of_2(V), 32768)), 4  # per-op cost: wide tiles
    block = max(16, min(4096, triton.next_power_of_2(V)))
    return block, (8 if block >= 4096 else 4)


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def verify_tree(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    num_nodes: torch.Tensor | None,
    replacement: bool,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    row_streams: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton tree verification (specdec::verify_tree) on its canonical arguments
    (``contract.tree.VerifyTreeArgs``, checked by ``contract.tree.verify_tree_args``).

    Returns (tokens [B, N], num_accepted [B], accepted_nodes [B, N]), int64 with -1 padding.
    """
    B, N = tokens.shape
    V = target_probs.shape[-1]
    dev = tokens.device
    out = torch.empty((B, N), dtype=torch.int64, device=dev)
    out_nodes = torch.empty((B, N), dtype=torch.int64, device=dev)
    nacc = torch.empty((B,), dtype=torch.int64, device=dev)
    if B == 0:
        return out, nacc, out_nodes
    P = _unit_last_stride(target_probs)
    Q = _unit_last_stride(draft_probs) if draft_probs is not None else P  # dummy when None, never read
    nn = num_nodes if num_nodes is not None else nacc  # dummy pointer, never read, when None
    BLOCK, warps = _vocab_block(V)
    _verify_tree_kernel[(B,)](
        tokens, tokens.stride(0), tokens.stride(1), parents, parents.stride(0), parents.stride(1),
        P, P.stride(0), P.stride(1), Q, Q.stride(0), Q.stride(1),
        nn, nn.stride(0), seeds, seeds.stride(0), offsets, offsets.stride(0),
        out, out_nodes, nacc, N, V, 1 if row_streams else 0,
        HAS_Q=draft_probs is not None, HAS_NN=num_nodes is not None, REPLACEMENT=bool(replacement),
        EXCLUDE=draft_probs is None or not replacement, NP=max(2, triton.next_power_of_2(N)),
        BLOCK=BLOCK, num_warps=warps)
    return out, nacc, out_nodes


def verify_tree_block(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    num_nodes: torch.Tensor | None,
    replacement: bool,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    row_streams: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton Traversal Verification (specdec::verify_tree_block, ``verify_tree(rule="block")``) on
    its canonical arguments (``contract.tree.VerifyTreeArgs``). There is no C++ CUDA kernel for this
    rule: this is the op's CUDA kernel under every backend.

    Returns (tokens [B, N], num_accepted [B], accepted_nodes [B, N]), int64 with -1 padding.
    """
    B, N = tokens.shape
    V = target_probs.shape[-1]
    dev = tokens.device
    out = torch.empty((B, N), dtype=torch.int64, device=dev)
    out_nodes = torch.empty((B, N), dtype=torch.int64, device=dev)
    nacc = torch.empty((B,), dtype=torch.int64, device=dev)
    if B == 0:
        return out, nacc, out_nodes
    P = _unit_last_stride(target_probs)
    Q = _unit_last_stride(draft_probs) if draft_probs is not None else P  # dummy when None, never read
    nn = num_nodes if num_nodes is not None else nacc  # dummy pointer, never read, when None
    BLOCK, warps = _vocab_block(V)
    _verify_tree_block_kernel[(B,)](
        tokens, tokens.stride(0), tokens.stride(1), parents, parents.stride(0), parents.stride(1),
        P, P.stride(0), P.stride(1), Q, Q.stride(0), Q.stride(1),
        nn, nn.stride(0), seeds, seeds.stride(0), offsets, offsets.stride(0),
        out, out_nodes, nacc, N, V, 1 if row_streams else 0,
        HAS_Q=draft_probs is not None, HAS_NN=num_nodes is not None, REPLACEMENT=bool(replacement),
        EXCLUDE=draft_probs is None or not replacement, NP=max(2, triton.next_power_of_2(N)),
        BLOCK=BLOCK, num_warps=warps)
    return out, nacc, out_nodes


def verify_tree_greedy(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    target_logits: torch.Tensor,
    num_nodes: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton greedy tree verification (specdec::verify_tree_greedy) on its canonical arguments
    (``contract.tree.VerifyTreeGreedyArgs``).

    Returns (tokens [B, N], num_accepted [B], accepted_nodes [B, N]), int64 with -1 padding.
    """
    B, N = tokens.shape
    V = target_logits.shape[-1]
    dev = tokens.device
    out = torch.empty((B, N), dtype=torch.int64, device=dev)
    out_nodes = torch.empty((B, N), dtype=torch.int64, device=dev)
    nacc = torch.empty((B,), dtype=torch.int64, device=dev)
    if B == 0:
        return out, nacc, out_nodes
    L = _unit_last_stride(target_logits)
    nn = num_nodes if num_nodes is not None else nacc
    BLOCK, warps = _vocab_block(V)
    _verify_tree_greedy_kernel[(B,)](
        tokens, tokens.stride(0), tokens.stride(1), parents, parents.stride(0), parents.stride(1),
        L, L.stride(0), L.stride(1), nn, nn.stride(0), out, out_nodes, nacc, N, V,
        HAS_NN=num_nodes is not None, NP=max(2, triton.next_power_of_2(N)), BLOCK=BLOCK, num_warps=warps)
    return out, nacc, out_nodes


def _walk(parents, num_nodes, prefix, mode: int) -> torch.Tensor:
    B, N = parents.shape
    W = (N + 31) // 32
    dev = parents.device
    if mode == 0:
        out = torch.empty((B, N, N), dtype=torch.bool, device=dev)
    elif mode == 1:
        out = torch.empty((B, N, W), dtype=torch.int32, device=dev)
    else:
        out = torch.empty((B, N), dtype=torch.int64, device=dev)
    if B == 0:
        return out
    NP = max(2, triton.next_power_of_2(N))
    WP = max(2, triton.next_power_of_2(W))
    width = NP if mode == 0 else WP
    NI = max(1, min(NP, 4096 // width)) if not triton_interpret() else NP
    nn = num_nodes if num_nodes is not None else parents
    pre = prefix if prefix is not None else parents
    target = out.view(torch.int8) if mode == 0 else out
    _tree_walk_kernel[(B, triton.cdiv(N, NI))](
        parents, parents.stride(0), parents.stride(1), nn, nn.stride(0) if num_nodes is not None else 0,
        pre, pre.stride(0) if prefix is not None else 0, target, N, W,
        MODE=mode, HAS_NN=num_nodes is not None, NI=NI, NP=NP, WP=WP)
    return out


def tree_attention_mask(parents: torch.Tensor, num_nodes: torch.Tensor | None, packed: bool) -> torch.Tensor:
    """Triton tree attention mask (specdec::tree_attention_mask, canonical arguments:
    ``contract.tree.TreeAttentionMaskArgs``): bool [B, N, N] or packed int32 [B, N, ceil(N/32)]."""
    return _walk(parents, num_nodes, None, 1 if packed else 0)


def tree_position_ids(parents: torch.Tensor, prefix_len: torch.Tensor,
                      num_nodes: torch.Tensor | None) -> torch.Tensor:
    """Triton tree position ids (specdec::tree_position_ids, canonical arguments:
    ``contract.tree.TreePositionIdsArgs``; prefix_len int64 [B]): prefix_len[b] + depth, int64 [B, N]."""
    return _walk(parents, num_nodes, prefix_len, 2)


# One representative specialisation of each kernel, compiled for sm_90 by
# .ci/triton_compile_check.py (bf16 too where the loads depend on the input dtype).
def _verify_sig(dtype: str) -> dict:
    return {
        "tok_ptr": "*i64", "s_tb": "i64", "s_tn": "i64", "par_ptr": "*i64", "s_pb": "i64", "s_pn": "i64",
        "p_ptr": f"*{dtype}", "sp_b": "i64", "sp_n": "i64", "q_ptr": f"*{dtype}", "sq_b": "i64",
        "sq_n": "i64", "nn_ptr": "*i64", "s_nn": "i64", "seed_ptr": "*i64", "s_seed": "i64",
        "off_ptr": "*i64", "s_off": "i64", "out_tok_ptr": "*i64", "out_node_ptr": "*i64",
        "nacc_ptr": "*i64", "N": "i32", "V": "i32", "stream_mul": "i32",
    }


_WALK_SIG = {"par_ptr": "*i64", "s_pb": "i64", "s_pn": "i64", "nn_ptr": "*i64", "s_nn": "i64",
             "pre_ptr": "*i64", "s_pre": "i64", "out_ptr": "*i32", "N": "i32", "W": "i32"}

COMPILE_CHECKS = [
    (_verify_tree_kernel, _verify_sig("fp32"),
     {"HAS_Q": True, "HAS_NN": True, "REPLACEMENT": False, "EXCLUDE": True, "NP": 16, "BLOCK": 4096}),
    (_verify_tree_kernel, _verify_sig("bf16"),
     {"HAS_Q": True, "HAS_NN": False, "REPLACEMENT": True, "EXCLUDE": False, "NP": 64, "BLOCK": 4096}),
    (_verify_tree_kernel, _verify_sig("fp16"),
     {"HAS_Q": False, "HAS_NN": False, "REPLACEMENT": False, "EXCLUDE": True, "NP": 32, "BLOCK": 2048}),
    (_verify_tree_block_kernel, _verify_sig("fp32"),
     {"HAS_Q": True, "HAS_NN": True, "REPLACEMENT": False, "EXCLUDE": True, "NP": 16, "BLOCK": 4096}),
    (_verify_tree_block_kernel, _verify_sig("bf16"),
     {"HAS_Q": True, "HAS_NN": False, "REPLACEMENT": True, "EXCLUDE": False, "NP": 64, "BLOCK": 4096}),
    (_verify_tree_block_kernel, _verify_sig("fp16"),
     {"HAS_Q": False, "HAS_NN": True, "REPLACEMENT": False, "EXCLUDE": True, "NP": 32, "BLOCK": 2048}),
    (_verify_tree_greedy_kernel,
     {"tok_ptr": "*i64", "s_tb": "i64", "s_tn": "i64", "par_ptr": "*i64", "s_pb": "i64", "s_pn": "i64",
      "l_ptr": "*bf16", "sl_b": "i64", "sl_n": "i64", "nn_ptr": "*i64", "s_nn": "i64",
      "out_tok_ptr": "*i64", "out_node_ptr": "*i64", "nacc_ptr": "*i64", "N": "i32", "V": "i32"},
     {"HAS_NN": True, "NP": 16, "BLOCK": 4096}),
    (_tree_walk_kernel, dict(_WALK_SIG, out_ptr="*i8"),
     {"MODE": 0, "HAS_NN": True, "NI": 64, "NP": 64, "WP": 2}),
    (_tree_walk_kernel, _WALK_SIG, {"MODE": 1, "HAS_NN": False, "NI": 64, "NP": 64, "WP": 2}),
    (_tree_walk_kernel, dict(_WALK_SIG, out_ptr="*i64"),
     {"MODE": 2, "HAS_NN": True, "NI": 64, "NP": 64, "WP": 2}),
]
