"""Small helpers shared by the op test modules (importable as ``helpers``: pytest puts this
directory on sys.path for the test modules in it). ``to_device`` and ``capture_cuda_graph`` live in
``specdec_kernels.testing`` (shared with the benchmarks and ``python -m specdec_kernels``) and are
re-exported here under their old names."""

from __future__ import annotations

import torch

from specdec_kernels.testing import capture_cuda_graph, to_device

__all__ = ["ROW_SUM_TOL", "add_to_last", "assert_row_sum_tolerance", "capture_cuda_graph", "pooled_cells",
           "pooled_chi2", "to_device", "with_generator"]


def pooled_cells(counts: torch.Tensor, expected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Observed and expected counts for a chi-square test, the cells expected fewer than 5 times
    pooled into one (the test's approximation needs ~5 per cell), cells expected 0 times dropped."""
    small = expected < 5
    o = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    e = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = e > 0
    return o[keep], e[keep]


def pooled_chi2(counts: torch.Tensor, expected: torch.Tensor, p_threshold: float) -> tuple[float, float, int]:
    """(statistic, threshold at ``p_threshold``, degrees of freedom) over :func:`pooled_cells`."""
    from scipy import stats

    o, e = pooled_cells(counts, expected)
    df = int(e.numel()) - 1
    return float(((o - e) ** 2 / e).sum()), float(stats.chi2.ppf(1 - p_threshold, df)), df


def with_generator(kw: dict) -> dict:
    """Case kwargs store a generator as its seed (cases are cached and reused): a fresh
    torch.Generator seeded with it, so every call draws the same seed."""
    kw = dict(kw)
    if kw.get("generator") is not None:
        kw["generator"] = torch.Generator().manual_seed(kw["generator"])
    return kw


#: check=True's stated tolerance for probability rows, |sum - 1| <= tol, by the rows' dtype (README
#: "API"; the library's constants are specdec_kernels.contract._common.PROB_SUM_TOL*: stated twice on
#: purpose, so a change there must be a change here too).
ROW_SUM_TOL = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def add_to_last(t: torch.Tensor, delta: float) -> torch.Tensor:
    """Every row of t with delta added to its last entry: rows summing to 1 + delta."""
    t = t.clone()
    t[..., -1] += delta
    return t


def assert_row_sum_tolerance(run, check_result, kw: dict, arg: str, dtype, message: str) -> None:
    """check=True's sum rule on ``kw[arg]``: rows off by half the tolerance (too much or, for
    float32, too little) pass and ``check_result(result, kw)`` holds; rows off by twice the
    tolerance raise ``message`` (a regex); check=False does not look. ``run(kw, check)`` calls the
    op under test."""
    import pytest

    tol = ROW_SUM_TOL[dtype]
    within, outside = [add_to_last(kw[arg], 0.5 * tol)], [add_to_last(kw[arg], 2 * tol)]
    if dtype == torch.float32:
        within.append(kw[arg] * (1 - 0.5 * tol))
        outside.append(kw[arg] * (1 - 2 * tol))
    for rows in within:
        ok = dict(kw, **{arg: rows})
        check_result(run(ok, True), ok)
    for rows in outside:
        with pytest.raises(ValueError, match=message):
            run(dict(kw, **{arg: rows}), True)
    run(dict(kw, **{arg: kw[arg] * 5}), False)
