"""Draft-length policies any decoder can use (docs/algorithms.md §6): when to stop drafting.

A policy holds per-request state for a batch of R requests. One drafting round:

    policy.begin_round(R)                       # optional: the first should_stop call does it
    for step in range(max_len):
        logits = drafter(...)                   # the draft's next-token logits [R, V]
        stop = policy.should_stop(logits)       # bool [R]: do not draft this token
        if stop.all(): break
        ... sample a draft token for the rows where ~stop (rows that stopped stay stopped) ...
    out = verify_chain(...)                     # or verify_tree
    policy.update(out.num_accepted, n_drafted)  # ends the round; n_drafted = policy.drafted

``should_stop`` counts, per request, the tokens it let through (``policy.drafted``): a row stops
for good in a round once it says True, at least one token is always drafted, and never more than
``max_len``. ``update`` adapts the threshold from the acceptance of the round and starts the next.

Policies:
    StaticLength(k)      always k tokens (the baseline).
    AdaEDL(...)          stop when the acceptance lower bound 1 - sqrt(gamma * H(q)) < lambda, with
                         lambda adapted from the observed acceptance (Agrawal et al. 2024).
    MaxConfidence(...)   stop when max_x q(x) < lambda, same lambda update (the paper's baseline).
"""

from __future__ import annotations

import math

import torch

from .ops.entropy import adaedl_stop


def _as_rows(v, R: int, device, name: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        if v.dim() == 0:
            v = v.reshape(1).expand(R)
        if v.dim() != 1 or v.shape[0] != R:
            raise ValueError(f"{name} must be an int or a tensor of shape [R] = [{R}], got {list(v.shape)}")
        if v.dtype.is_floating_point or v.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got {v.dtype}")
        return v.to(device=device, dtype=torch.float64)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name} must be an int or an integer tensor, got {type(v).__name__}")
    return torch.full((R,), float(v), dtype=torch.float64, device=device)


class _Policy:
    """Round bookkeeping shared by every policy: drafted counts, stopped rows, max_len."""

    def __init__(self, max_len: int) -> None:
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be an int >= 1, got {max_len!r}")
        self.max_len = max_len
        self.drafted: torch.Tensor | None = None  # int64 [R]: tokens drafted this round
        self._stopped: torch.Tensor | None = None

    @property
    def batch_size(self) -> int | None:
        return None if self.drafted is None else self.drafted.shape[0]

    def begin_round(self, batch_size: int, device: torch.device | str = "cpu") -> None:
        """Start a round for ``batch_size`` requests (state that persists across rounds is created
        on the first round and kept; a different batch size resets it)."""
        if batch_size != self.batch_size or self.drafted.device != torch.device(device):
            self._reset_state(batch_size, torch.device(device))
        self.drafted = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self._stopped = torch.zeros(batch_size, dtype=torch.bool, device=device)

    def _reset_state(self, batch_size: int, device: torch.device) -> None:
        pass

    def select_rows(self, rows) -> None:
        """Keep the state of these requests only, in this order (finished requests left the batch):
        ``rows`` is a sequence of row indices or an int64 tensor."""
        if self.drafted is None:
            return
        R = self.drafted.shape[0]
        idx = torch.as_tensor(rows, dtype=torch.int64, device=self.drafted.device)
        if idx.dim() != 1 or (idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= R)):
            raise ValueError(f"rows must be indices into the {R} requests, got {rows!r}")
        # every per-request state tensor ([R]: drafted, stopped, thresholds, acceptance estimates)
        for name, v in list(vars(self).items()):
            if isinstance(v, torch.Tensor) and v.dim() == 1 and v.shape[0] == R:
                setattr(self, name, v.index_select(0, idx))

    def _rule(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def should_stop(self, draft_logits: torch.Tensor) -> torch.Tensor:
        """bool [R]: True where the next token should NOT be drafted (and no later one this round).

        Args:
            draft_logits: the draft's next-token logits. Shape: (R, V).
        """
        if not isinstance(draft_logits, torch.Tensor) or draft_logits.dim() != 2:
            raise ValueError("draft_logits must be a tensor [R, V]")
        R = draft_logits.shape[0]
        if self.drafted is None or self.drafted.shape[0] != R or self.drafted.device != draft_logits.device:
            self.begin_round(R, draft_logits.device)
        fired = self._rule(draft_logits)
        stop = self._stopped | (self.drafted >= self.max_len) | ((self.drafted >= 1) & fired)
        self._stopped = stop
        self.drafted = self.drafted + (~stop).to(torch.int64)
        return stop

    def update(self, n_accepted, n_drafted=None) -> None:
        """End the round: adapt to ``n_accepted`` of ``n_drafted`` (default: ``self.drafted``)
        drafts accepted per request (ints or integer tensors [R]), then start the next round."""
        if self.drafted is None:
            raise ValueError("update() before any should_stop(): nothing was drafted")
        R, dev = self.drafted.shape[0], self.drafted.device
        acc = _as_rows(n_accepted, R, dev, "n_accepted")
        drafted = (self.drafted.to(torch.float64) if n_drafted is None
                   else _as_rows(n_drafted, R, dev, "n_drafted"))
        if bool(((acc < 0) | (acc > drafted)).any()):
            raise ValueError("n_accepted must be in [0, n_drafted] for every request")
        self._adapt(acc, drafted)
        self.begin_round(R, dev)

    def _adapt(self, n_accepted: torch.Tensor, n_drafted: torch.Tensor) -> None:
        pass


class StaticLength(_Policy):
    """Always draft k tokens (``threshold`` is None: nothing adapts)."""

    threshold = None

    def __init__(self, k: int) -> None:
        super().__init__(k)

    def _rule(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)


class _Adaptive(_Policy):
    """The lambda update of AdaEDL (docs/algorithms.md §6), per request:

        acc <- beta1 * acc + (1 - beta1) * n_accepted / n_drafted       (acc starts at alpha)
        lam~ = lam + eps if acc < alpha; lam if n_drafted == max_len; lam - eps otherwise
        lam <- beta2 * lam + (1 - beta2) * lam~
    """

    def __init__(self, lam: float, beta1: float, beta2: float, eps: float, alpha: float, max_len: int,
                 temperature: float) -> None:
        super().__init__(max_len)
        for name, v, lo, hi in (("lam", lam, -math.inf, math.inf), ("beta1", beta1, 0.0, 1.0),
                                ("beta2", beta2, 0.0, 1.0), ("eps", eps, 0.0, math.inf),
                                ("alpha", alpha, 0.0, 1.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi) or math.isnan(v):
                raise ValueError(f"{name} must be a float in [{lo}, {hi}], got {v!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a float > 0, got {temperature!r}")
        self.lam0, self.beta1, self.beta2, self.eps, self.alpha = float(lam), beta1, beta2, eps, alpha
        self.temperature = float(temperature)
        self.threshold: torch.Tensor | None = None  # float64 [R]: lambda per request
        self.acceptance: torch.Tensor | None = None  # float64 [R]: running acceptance estimate

    def _reset_state(self, batch_size: int, device: torch.device) -> None:
        self.threshold = torch.full((batch_size,), self.lam0, dtype=torch.float64, device=device)
        self.acceptance = torch.full((batch_size,), float(self.alpha), dtype=torch.float64, device=device)

    def _adapt(self, n_accepted: torch.Tensor, n_drafted: torch.Tensor) -> None:
        live = n_drafted > 0  # a request that drafted nothing has nothing to learn from
        rate = torch.where(live, n_accepted / n_drafted.clamp_min(1.0), self.acceptance)
        acc = torch.where(live, self.beta1 * self.acceptance + (1 - self.beta1) * rate, self.acceptance)
        lam = self.threshold
        target = torch.where(acc < self.alpha, lam + self.eps,
                             torch.where(n_drafted >= self.max_len, lam, lam - self.eps))
        self.threshold = torch.where(live, self.beta2 * lam + (1 - self.beta2) * target, lam)
        self.acceptance = acc


class AdaEDL(_Adaptive):
    """Entropy-based early draft stopping: stop when 1 - sqrt(gamma * H(q)) < lambda.

    Args:
        gamma: gamma_H of the acceptance lower bound (0.2).
        lam: initial threshold lambda (0.5; not given by the paper).
        beta1, beta2, eps, alpha: the update constants of docs/algorithms.md §6 (0.5, 0.9, 0.01, 0.9).
        max_len: gamma_max, the most tokens drafted in a round.
        temperature: the draft's sampling temperature (the entropy is that of softmax(logits / T)).
    """

    def __init__(self, gamma: float = 0.2, lam: float = 0.5, beta1: float = 0.5, beta2: float = 0.9,
                 eps: float = 0.01, alpha: float = 0.9, max_len: int = 8, temperature: float = 1.0) -> None:
        super().__init__(lam, beta1, beta2, eps, alpha, max_len, temperature)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
            raise ValueError(f"gamma must be a float > 0, got {gamma!r}")
        self.gamma = float(gamma)

    def _rule(self, logits: torch.Tensor) -> torch.Tensor:
        return adaedl_stop(logits, self.threshold, gamma=self.gamma, temperature=self.temperature,
                           check=False)


class MaxConfidence(_Adaptive):
    """Stop when the draft's most likely token has probability below lambda (same lambda update).

    Args: as :class:`AdaEDL` without gamma.
    """

    def __init__(self, lam: float = 0.5, beta1: float = 0.5, beta2: float = 0.9, eps: float = 0.01,
                 alpha: float = 0.9, max_len: int = 8, temperature: float = 1.0) -> None:
        super().__init__(lam, beta1, beta2, eps, alpha, max_len, temperature)

    def _rule(self, logits: torch.Tensor) -> torch.Tensor:
        top = torch.softmax(logits.float() / self.temperature, -1).amax(-1)
        return top.double() < self.threshold
