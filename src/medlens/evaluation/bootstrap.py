"""Percentile bootstrap confidence intervals (segmentation and classification metrics share them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def nanmean(values: Sequence[float] | np.ndarray) -> float:
    """Mean of the finite values (nan when none)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def bootstrap(
    n: int, statistic: Callable[[np.ndarray], np.ndarray], n_boot: int, alpha: float, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap: ``statistic`` maps an index matrix ``(b, n)`` to ``(b,)`` statistics."""
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 4_000_000 // max(n, 1)))  # bound memory of the (chunk, n) index matrix
    stats = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        stats.append(statistic(idx))
    all_stats = np.concatenate(stats)
    all_stats = all_stats[~np.isnan(all_stats)]
    if all_stats.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(all_stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` confidence interval of the mean of ``values`` (nan ignored).

    Returns ``(nan, nan)`` when no finite value remains; deterministic for a seed.
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    arr = arr[~np.isnan(arr)]
    return bootstrap(arr.size, lambda idx: arr[idx].mean(axis=1), n_boot, alpha, seed)
