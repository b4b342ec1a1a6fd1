"""Exact laws of the first two generated tokens and the goodness-of-fit test the sampling tests use.

The exact law is computed by enumeration through the TARGET alone (full forwards, no cache):
p1 = sampling_probs(target(prompt).logits[-1]); for every x1, p2(. | x1) from target(prompt + x1);
joint(x1, x2) = p1(x1) p2(x2 | x1). ``specdec_kernels.sampling_probs`` applies temperature / top-k /
top-p, the same transform the decoder must apply, so the law is the one the decoder must follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from tiny_models import next_logits

import specdec_kernels as sk


@torch.no_grad()
def next_probs(model, ids: torch.Tensor, *, temperature: float, top_k: int = 0, top_p: float = 1.0,
               pixel_values=None, prompt_len: int | None = None) -> torch.Tensor:
    """float64 [R, V]: the sampling law of the next token after each row of ``ids`` [R, T]."""
    logits = next_logits(model, ids, pixel_values, prompt_len).float()
    return sk.sampling_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p).double()


@torch.no_grad()
def two_token_laws(model, prompt: torch.Tensor, *, temperature: float, top_k: int = 0, top_p: float = 1.0,
                   pixel_values=None) -> tuple[np.ndarray, np.ndarray]:
    """(p1 [V], p2 [V, V]): the law of the first new token, and of the second given the first.

    ``model`` may be a drafter (text-only: pass its own prompt) or the target (``pixel_values`` for
    LLaVA: only the prompt's image tokens receive image features; a first token equal to the image
    token id is embedded as an ordinary token, as in generation).
    """
    P = prompt.shape[1]
    p1 = next_probs(model, prompt, temperature=temperature, top_k=top_k, top_p=top_p,
                    pixel_values=pixel_values)[0]
    V = p1.shape[0]
    ids = torch.cat([prompt.repeat(V, 1), torch.arange(V)[:, None]], 1)
    p2 = next_probs(model, ids, temperature=temperature, top_k=top_k, top_p=top_p, pixel_values=pixel_values,
                    prompt_len=P)
    return p1.numpy(), p2.numpy()


def joint_law(model, prompt: torch.Tensor, **kw) -> np.ndarray:
    """float64 [V, V]: the exact law of the first two new tokens."""
    p1, p2 = two_token_laws(model, prompt, **kw)
    joint = p1[:, None] * p2
    return joint / joint.sum()


def buggy_chain_law(p1, p2, q1, q2) -> np.ndarray:
    """The law of the first two tokens of a WRONG chain speculative sampler (gamma = 1) whose
    correction after a rejection is drawn from p instead of norm(max(0, p - q)): a classic bug,
    used as the negative control of the harness. (p and q must be on the same vocabulary.)"""
    m1 = np.minimum(p1, q1)
    b1 = m1.sum()
    m2 = np.minimum(p2, q2)
    b2 = m2.sum(-1)
    # accepted draft x1, then the bonus token ~ p2; or rejected: x1 ~ p1 (bug), then one more round
    # whose draft is accepted (min(p2, q2)) or corrected from p2 (bug again)
    joint = m1[:, None] * p2 + (1 - b1) * p1[:, None] * (m2 + (1 - b2)[:, None] * p2)
    return joint / joint.sum()


@dataclass
class FitResult:
    pvalue: float
    statistic: float
    dof: int
    tv: float          # total variation between the empirical and the exact law
    n: int
    note: str

    def __str__(self) -> str:
        return (f"p={self.pvalue:.3g} chi2={self.statistic:.1f} dof={self.dof} TV={self.tv:.4f} n={self.n}"
                f"{' ' + self.note if self.note else ''}")


def counts_of(samples: np.ndarray, V: int) -> np.ndarray:
    """[V, V] counts of the pairs (x1, x2) in ``samples`` [n, 2]."""
    counts = np.zeros((V, V), dtype=np.int64)
    np.add.at(counts, (samples[:, 0], samples[:, 1]), 1)
    return counts


def fit(samples: np.ndarray, joint: np.ndarray, *, min_expected: float = 5.0) -> FitResult:
    """Pearson chi-square test of ``samples`` [n, 2] (int pairs) against ``joint`` [V, V].

    Cells whose expected count is below ``min_expected`` are pooled into one cell (and cells from
    the smallest upwards are added to that pool until its expected count reaches ``min_expected``).
    A sample in a cell of probability exactly 0 (e.g. a token top-k / top-p removed) gives p = 0.
    """
    samples = np.asarray(samples, dtype=np.int64)
    n = samples.shape[0]
    V = joint.shape[0]
    if samples.min() < 0 or samples.max() >= V:
        return FitResult(0.0, float("inf"), 0, 1.0, n, f"token ids out of [0, {V}): {np.unique(samples)}")
    counts = counts_of(samples, V).ravel().astype(np.float64)
    p = joint.ravel()
    tv = 0.5 * float(np.abs(counts / n - p).sum())
    impossible = (p <= 0) & (counts > 0)
    if impossible.any():
        cells = [divmod(int(i), V) for i in np.nonzero(impossible)[0]]
        return FitResult(0.0, float("inf"), 0, tv, n, f"samples in zero-probability cells {cells}")
    keep = p > 0
    obs, exp = counts[keep], p[keep] * n
    order = np.argsort(exp)
    obs, exp = obs[order], exp[order]
    k = int(np.searchsorted(exp, min_expected))  # cells [0, k) are small
    while k < len(exp) and 0 < exp[:k].sum() < min_expected:
        k += 1
    if k > 0:
        obs = np.concatenate([[obs[:k].sum()], obs[k:]])
        exp = np.concatenate([[exp[:k].sum()], exp[k:]])
    if len(exp) < 2:
        return FitResult(1.0, 0.0, 0, tv, n, "a single cell")
    exp = exp * (n / exp.sum())
    res = stats.chisquare(obs, exp)
    note = f"({k} small cells pooled)"
    return FitResult(float(res.pvalue), float(res.statistic), len(exp) - 1, tv, n, note)


def worst_cells(samples: np.ndarray, joint: np.ndarray, k: int = 6) -> str:
    """The k cells with the largest standardised residuals, for failure messages."""
    n = samples.shape[0]
    V = joint.shape[0]
    counts = counts_of(samples, V)
    exp = joint * n
    z = (counts - exp) / np.sqrt(np.maximum(exp, 1e-12))
    idx = np.argsort(-np.abs(z).ravel())[:k]
    parts = []
    for i in idx:
        a, b = divmod(int(i), V)
        parts.append(f"({a},{b}): obs {counts[a, b]} exp {exp[a, b]:.1f}")
    marg = np.bincount(samples[:, 0], minlength=V) / n
    return ("; ".join(parts) + f"\n  x1 empirical {np.round(marg, 3)}"
            f"\n  x1 exact     {np.round(joint.sum(1), 3)}")

