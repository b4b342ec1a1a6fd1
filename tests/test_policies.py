"""Draft-length policies: the round protocol (at least one token, at most max_len, stopped rows stay
stopped, per-request counts), the lambda update against hand-computed values, trajectories (low
acceptance raises lambda, full acceptance below max_len lowers it, at max_len keeps it), the stop
rules of AdaEDL and MaxConfidence, bad arguments."""

from __future__ import annotations

import math

import pytest
import torch

from specdec_kernels import reference
from specdec_kernels.policies import AdaEDL, MaxConfidence, StaticLength

FLAT = torch.zeros(1, 16)          # H = log 16: AdaEDL's bound 1 - sqrt(0.2 log 16) = 0.255
PEAKED = torch.tensor([[12.0] + [0.0] * 15])  # H ~ 0: bound ~ 1


def run_round(policy, logits_per_step, max_steps=20):
    """Draft until every row stopped; returns the drafted counts."""
    for step in range(max_steps):
        stop = policy.should_stop(logits_per_step(step))
        if bool(stop.all()):
            break
    return policy.drafted.clone()


def test_static_length_drafts_exactly_k():
    pol = StaticLength(3)
    assert run_round(pol, lambda s: torch.zeros(4, 8)).tolist() == [3, 3, 3, 3]
    assert pol.threshold is None
    pol.update(torch.tensor([0, 1, 2, 3]))
    assert pol.drafted.tolist() == [0, 0, 0, 0]  # a new round has begun


def test_at_least_one_token_and_at_most_max_len():
    pol = AdaEDL(lam=5.0, max_len=4)  # the rule fires always (bound <= 1 < 5)
    assert run_round(pol, lambda s: PEAKED).tolist() == [1]
    pol = AdaEDL(lam=-5.0, max_len=4)  # never fires
    assert run_round(pol, lambda s: FLAT).tolist() == [4]


def test_rows_stop_independently_and_stay_stopped():
    pol = AdaEDL(lam=0.5, max_len=6)
    # Row 0 sees a flat distribution from step 2 on, row 1 stays peaked, row 2 is flat at step 1
    # then peaked again (it must stay stopped).
    def logits(step):
        rows = [FLAT if step >= 2 else PEAKED, PEAKED, FLAT if step == 1 else PEAKED]
        return torch.cat(rows)
    assert run_round(pol, logits).tolist() == [2, 6, 1]


def test_lambda_update_hand_values():
    pol = AdaEDL(lam=0.5, max_len=8)
    pol.begin_round(3)
    pol.drafted = torch.tensor([4, 4, 8])
    # row 0: 1 of 4 accepted: acc = 0.5*0.9 + 0.5*0.25 = 0.575 < 0.9 -> lam~ = 0.51 -> 0.9*0.5 + 0.1*0.51
    # row 1: 4 of 4 (below max_len): acc = 0.95 -> lam~ = 0.49 -> 0.499
    # row 2: 8 of 8 (at max_len): acc = 0.95 -> lam~ = lam -> 0.5
    pol.update(torch.tensor([1, 4, 8]))
    assert torch.allclose(pol.threshold, torch.tensor([0.501, 0.499, 0.5], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(pol.acceptance, torch.tensor([0.575, 0.95, 0.95], dtype=torch.float64), atol=1e-12)
    # second step from that state, explicit n_drafted
    pol.update(torch.tensor([2, 2, 0]), torch.tensor([2, 2, 8]))
    acc = [0.5 * 0.575 + 0.5 * 1.0, 0.5 * 0.95 + 0.5 * 1.0, 0.5 * 0.95 + 0.0]
    lam_t = [0.501 + 0.01 if acc[0] < 0.9 else 0.501 - 0.01, 0.499 - 0.01, 0.5 + 0.01]
    lam = [0.9 * a + 0.1 * b for a, b in zip([0.501, 0.499, 0.5], lam_t, strict=True)]
    assert torch.allclose(pol.acceptance, torch.tensor(acc, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(pol.threshold, torch.tensor(lam, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("cls", [AdaEDL, MaxConfidence])
def test_trajectories(cls):
    low = cls(lam=0.5, max_len=8)
    high = cls(lam=0.5, max_len=8)
    capped = cls(lam=0.5, max_len=8)
    for pol in (low, high, capped):
        pol.begin_round(1)
    lows, highs = [], []
    for _ in range(30):
        low.drafted = torch.tensor([5])
        low.update(torch.tensor([1]))
        lows.append(float(low.threshold[0]))
        high.drafted = torch.tensor([5])
        high.update(torch.tensor([5]))
        highs.append(float(high.threshold[0]))
        capped.drafted = torch.tensor([8])
        capped.update(torch.tensor([8]))
    assert all(b > a for a, b in zip([0.5] + lows, lows, strict=False))   # low acceptance raises lambda
    assert all(b < a for a, b in zip([0.5] + highs, highs, strict=False))  # full acceptance lowers it
    assert float(capped.threshold[0]) == 0.5                                # at max_len it stays


def test_adaedl_rule_matches_the_op():
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(0)) * 2
    pol = AdaEDL(lam=0.4, gamma=0.3, temperature=1.2, max_len=5)
    pol.begin_round(8)
    pol.drafted = torch.ones(8, dtype=torch.long)  # past the first token: the rule decides
    got = pol.should_stop(x)
    assert torch.equal(got, reference.adaedl_stop(x, 0.4, gamma=0.3, temperature=1.2))


def test_max_confidence_rule():
    pol = MaxConfidence(lam=0.52, max_len=5)
    x = torch.tensor([[math.log(0.6), math.log(0.4)], [math.log(0.45), math.log(0.55)], [0.0, 0.0]])
    pol.should_stop(x)  # first token always drafted
    assert pol.should_stop(x).tolist() == [False, False, True]


def test_batch_size_change_resets_state():
    pol = AdaEDL(max_len=3)
    run_round(pol, lambda s: PEAKED.expand(2, 16))
    pol.update(torch.tensor([0, 0]))
    assert pol.threshold.shape == (2,)
    pol.should_stop(PEAKED.expand(5, 16))
    assert pol.threshold.shape == (5,) and torch.all(pol.threshold == 0.5)


@pytest.mark.parametrize("make,match", [
    (lambda: StaticLength(0), "max_len must be an int >= 1"),
    (lambda: AdaEDL(max_len=2.5), "max_len must be an int >= 1"),
    (lambda: AdaEDL(beta1=1.5), "beta1 must be a float in"),
    (lambda: AdaEDL(alpha=-0.1), "alpha must be a float in"),
    (lambda: AdaEDL(eps=float("nan")), "eps must be a float in"),
    (lambda: AdaEDL(gamma=0.0), "gamma must be a float > 0"),
    (lambda: MaxConfidence(temperature=0.0), "temperature must be a float > 0"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_update_and_logits():
    pol = AdaEDL(max_len=4)
    with pytest.raises(ValueError, match="update\\(\\) before any should_stop"):
        pol.update(1)
    with pytest.raises(ValueError, match="draft_logits must be a tensor \\[R, V\\]"):
        pol.should_stop(torch.zeros(4))
    run_round(pol, lambda s: PEAKED.expand(2, 16))
    with pytest.raises(ValueError, match="n_accepted must be in \\[0, n_drafted\\]"):
        pol.update(torch.tensor([5, 0]))
    with pytest.raises(ValueError, match="n_accepted must be an int or a tensor of shape"):
        pol.update(torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="n_accepted must be an integer tensor"):
        pol.update(torch.tensor([1.0, 1.0]))
