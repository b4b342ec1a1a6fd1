"""Exact laws of chain verification rules by enumeration (float64), for the block-verification tests.

A toy language model is a pair of next-token tables (target P[prev], drafter Q[prev], or a
deterministic drafter NEXT[prev]) over a few tokens. For one round from a context token, every
draft x_1..x_K is enumerated with its probability under the drafter; a rule gives the exact law of
tau (accepted drafts) and of the token emitted after them; the round's emitted tokens are then
continued by further rounds until L tokens exist. The law of the first L tokens must equal the
target chain's law, whatever the rule, if the rule is exact.

Rules (docs/algorithms.md §1, §9), given the rows p_0..p_K, q_0..q_{K-1} along the draft:
    "token":  P(tau >= i) = prod_{j<=i} min(1, p(x_j)/q(x_j)); correction from max(0, p_tau - q_tau)
    "block":  tau = max{i : eta_i <= h_i}: P(tau = i) = h_i prod_{j>i} (1 - h_j) (h_0 := 1);
              correction from max(0, w_tau p_tau - q_tau)
Negative controls (biased on purpose):
    "block_forward": block's h_i, but a forward scan that stops at the first failed eta_i:
              P(tau = i) = prod_{j<=i} h_j (1 - h_{i+1}); corrections as "block"
    "block_unweighted": block's tau, but the correction from max(0, p_tau - q_tau)
"""

from __future__ import annotations

import itertools

import torch

RULES = ("token", "block", "block_forward", "block_unweighted")


def _residual(p, q, w):
    r = torch.clamp(w * p - q, min=0.0)
    s = float(r.sum())
    return r / s if s > 0 else p.clone()


def block_h(ps, qs, xs):
    """(w_0..w_K, h_1..h_K) of §9 along one draft (ps: K+1 rows, qs: K rows, xs: K tokens)."""
    K = len(xs)
    w = [1.0]
    for i in range(1, K + 1):
        qx = float(qs[i - 1][xs[i - 1]])
        w.append(min(1.0, w[-1] * float(ps[i - 1][xs[i - 1]]) / qx) if qx > 0 else 1.0)
    h = []
    for i in range(1, K + 1):
        if i == K:
            h.append(w[K])
            continue
        m = float(torch.clamp(w[i] * ps[i] - qs[i], min=0.0).sum())
        den = m + 1.0 - w[i]
        h.append(1.0 if den <= 0 else m / den)
    return w, h


def round_law(ps, qs, xs, rule: str):
    """[(tau, law of the emitted token after tau accepted drafts, probability)] for one draft."""
    K = len(xs)
    if rule == "token":
        out, alive = [], 1.0
        for i in range(K):
            qx = float(qs[i][xs[i]])
            a = min(1.0, float(ps[i][xs[i]]) / qx) if qx > 0 else 1.0
            out.append((i, _residual(ps[i], qs[i], 1.0), alive * (1 - a)))
            alive *= a
        out.append((K, ps[K], alive))
        return out
    w, h = block_h(ps, qs, xs)
    hh = [1.0] + h  # hh[i] = h_i, h_0 = 1
    probs = []
    for i in range(K + 1):
        if rule == "block_forward":
            pr = 1.0
            for j in range(1, i + 1):
                pr *= hh[j]
            if i < K:
                pr *= 1 - hh[i + 1]
        else:
            pr = hh[i]
            for j in range(i + 1, K + 1):
                pr *= 1 - hh[j]
        probs.append(pr)
    out = []
    for i in range(K + 1):
        if i == K:
            row = ps[K]
        else:
            row = _residual(ps[i], qs[i], 1.0 if rule == "block_unweighted" else w[i])
        out.append((i, row, probs[i]))
    return out


# The law tests' toy language model on V = 4 tokens: the target's next-token law depends on the
# previous token (a Markov chain); the drafter is another chain, deliberately far from it so that
# rejections (and therefore corrections) are frequent and a wrong correction law is visible. Here
# (plain torch) so that tests outside tests/ (tests_vllm) share them without the op tests' helpers.
TOY_TARGET = torch.tensor([
    [0.60, 0.20, 0.10, 0.10],
    [0.10, 0.50, 0.30, 0.10],
    [0.25, 0.25, 0.25, 0.25],
    [0.10, 0.10, 0.20, 0.60],
])
TOY_DRAFT = torch.tensor([
    [0.10, 0.10, 0.20, 0.60],
    [0.40, 0.00, 0.20, 0.40],  # a zero where p > 0: that token is only reachable by correction
    [0.70, 0.10, 0.10, 0.10],
    [0.25, 0.25, 0.25, 0.25],
])
# Deterministic drafter (n-gram / greedy style): next token is a fixed function of the previous.
TOY_DET_NEXT = torch.tensor([0, 1, 3, 3])


class ToyModel:
    """Target and drafter next-token tables over V tokens (float64)."""

    def __init__(self, target: torch.Tensor, draft: torch.Tensor | None = None,
                 next_token: torch.Tensor | None = None):
        # float64 rows renormalised: float32 tables such as 0.6 / 0.2 / 0.1 / 0.1 sum to 1 only up
        # to float32 rounding, which would put a 1e-8 floor under the distances.
        self.P = target.double() / target.double().sum(-1, keepdim=True)
        self.V = self.P.shape[0]
        if draft is not None:
            self.Q = draft.double() / draft.double().sum(-1, keepdim=True)
        else:  # deterministic drafter: q one-hot at next_token[prev]
            self.Q = torch.nn.functional.one_hot(next_token, self.V).double()

    def drafts(self, ctx: int, K: int):
        """Every draft of length K from ctx with its probability (zero-probability ones skipped)."""
        for xs in itertools.product(range(self.V), repeat=K):
            pr, prev = 1.0, ctx
            for x in xs:
                pr *= float(self.Q[prev][x])
                prev = x
            if pr > 0:
                yield list(xs), pr

    def rows(self, ctx: int, xs: list[int]):
        chain = [ctx] + xs
        return [self.P[c] for c in chain], [self.Q[c] for c in chain[:-1]]

    def target_law(self, ctx: int, L: int) -> torch.Tensor:
        """Law of the next L tokens under the target, flattened row-major over (y_1..y_L)."""
        law = self.P[ctx].clone()
        for _ in range(L - 1):
            last = torch.arange(law.numel()) % self.V
            law = (law[:, None] * self.P[last]).reshape(-1)
        return law

    def emitted_law(self, ctx: int, L: int, K: int, rule: str, _memo=None) -> torch.Tensor:
        """Exact law of the first L emitted tokens of repeated rounds of K drafts under `rule`."""
        memo = {} if _memo is None else _memo
        if (ctx, L) in memo:
            return memo[(ctx, L)]
        V = self.V
        law = torch.zeros(V**L, dtype=torch.float64)
        for xs, pd in self.drafts(ctx, K):
            ps, qs = self.rows(ctx, xs)
            for tau, row, pt in round_law(ps, qs, xs, rule):
                if pt <= 0:
                    continue
                for y in range(V):
                    py = float(row[y])
                    if py <= 0:
                        continue
                    emitted = xs[:tau] + [y]
                    weight = pd * pt * py
                    if len(emitted) >= L:
                        idx = 0
                        for t in emitted[:L]:
                            idx = idx * V + t
                        law[idx] += weight
                    else:
                        rest = self.emitted_law(y, L - len(emitted), K, rule, memo)
                        base = 0
                        for t in emitted:
                            base = base * V + t
                        n_rest = V ** (L - len(emitted))
                        law[base * n_rest:(base + 1) * n_rest] += weight * rest
        memo[(ctx, L)] = law
        return law

    def expected_tokens(self, ctx: int, K: int, rule: str) -> float:
        """E[tokens emitted per round] (accepted drafts + 1) from ctx."""
        e = 0.0
        for xs, pd in self.drafts(ctx, K):
            ps, qs = self.rows(ctx, xs)
            e += pd * sum(pt * (tau + 1) for tau, _, pt in round_law(ps, qs, xs, rule))
        return e

    def tau_given_draft(self, ctx: int, xs: list[int], rule: str):
        """[(tau, P(tau), law of the emitted token given tau)] for one fixed draft."""
        ps, qs = self.rows(ctx, xs)
        return [(tau, pt, row) for tau, row, pt in round_law(ps, qs, xs, rule)]


def tvd(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())
