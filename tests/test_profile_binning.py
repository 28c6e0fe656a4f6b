"""The gridded percentile counts against the plain binary search they replace, on randomized inputs."""

from __future__ import annotations

import numpy as np
import pytest

from modelshelf.drift import profile as P


def reference(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(q, x, side="left"), minlength=len(q) + 1)


def quantiles(rng: np.random.Generator, x: np.ndarray, n: int = P.N_QUANTILES) -> np.ndarray:
    finite = x[np.isfinite(x)]
    return np.quantile(finite if finite.size else np.zeros(1), np.linspace(0, 1, n))


def values(rng: np.random.Generator, size: int) -> np.ndarray:
    """Continuous, discrete or heavy-tailed values, some rounded, with outliers and infinities."""
    kind = rng.integers(0, 5)
    if kind == 0:
        x = rng.normal(rng.normal(0, 10), rng.uniform(1e-3, 10), size)
    elif kind == 1:
        x = rng.integers(-3, 4, size).astype(float)                 # a few distinct values
    elif kind == 2:
        x = rng.standard_cauchy(size)                               # extreme tails
    elif kind == 3:
        x = np.round(rng.normal(size=size), int(rng.integers(0, 4)))  # many ties
    else:
        x = rng.choice([0.0, 1.0], size, p=[0.97, 0.03])            # q1 == q99
    if size and rng.random() < 0.5:
        k = int(rng.integers(1, max(size // 20, 1) + 1))
        x[rng.choice(size, k)] = rng.choice([np.inf, -np.inf, 1e300, -1e300, 0.0, -0.0], k)
    return x


def mixed_quantiles(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Quantiles of x, of other data, with duplicates, or with infinite ends."""
    n = int(rng.choice([3, 4, 11, P.N_QUANTILES]))
    kind = rng.integers(0, 4)
    if kind == 0:
        return quantiles(rng, x, n)
    if kind == 1:
        return quantiles(rng, values(rng, 500), n)
    if kind == 2:
        return np.sort(rng.choice(np.round(rng.normal(size=5), 1), n))  # repeated quantiles
    q = quantiles(rng, x, n)
    q[0], q[-1] = -np.inf, np.inf
    return q


@pytest.mark.parametrize("seed", range(40))
def test_gridded_counts_equal_the_binary_search(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for size in (0, 1, 2, 7, 1000, 60_000):
        x = values(rng, size)
        q = mixed_quantiles(rng, x)
        if rng.random() < 0.3:
            x = np.concatenate([x, rng.choice(q, min(size, 500))])  # ties with the quantiles
        want = reference(x, q)
        for grid in (1, 2, 5, 64, P._GRID):
            got = P._gridded_counts(x, q, grid)
            assert got.dtype == want.dtype and np.array_equal(got, want), (seed, size, grid)
        assert np.array_equal(P._percentile_counts(x, q), want)


def test_values_on_cell_edges_and_next_to_quantiles() -> None:
    rng = np.random.default_rng(1)
    q = np.quantile(rng.normal(size=20_000), np.linspace(0, 1, P.N_QUANTILES))
    grid = 1000
    lo, hi = q[1], q[-2]
    edges = lo + (hi - lo) * (np.arange(-2, grid + 3) - 0.5) / (grid - 1)
    near = np.concatenate([q, edges])
    x = np.concatenate([near, np.nextafter(near, np.inf), np.nextafter(near, -np.inf), rng.normal(size=100_000)])
    for g in (grid, grid - 1, grid + 1, P._GRID):
        assert np.array_equal(P._gridded_counts(x, q, g), reference(x, q))


def test_nan_values_count_above_every_quantile_as_in_the_search() -> None:
    rng = np.random.default_rng(2)
    x = np.where(rng.random(100_000) < 0.01, np.nan, rng.normal(size=100_000))
    for q in (quantiles(rng, x), np.r_[quantiles(rng, x)[:-1], np.inf]):
        assert np.array_equal(P._gridded_counts(x, q, P._GRID), reference(x, q))


def test_degenerate_quantiles_fall_back_to_the_search() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=60_000)
    for q in (np.zeros(P.N_QUANTILES), np.array([0.0, 1.0]), np.array([0.0, 1e-320, 2e-320, 1.0]),
              np.array([-1e308, -1e308, 1e308, 1e308]), np.array([0.0, np.nan, 1.0]),
              np.array([3.0, 1.0, 2.0, 0.0]), np.arange(P.N_QUANTILES) - 50):
        assert np.array_equal(P._gridded_counts(x, q, P._GRID), reference(x, q))
        assert np.array_equal(P._percentile_counts(x, q), reference(x, q))


def test_float32_values_and_huge_arrays() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=1_000_000)
    q = quantiles(rng, x[:20_000])
    assert np.array_equal(P._percentile_counts(x, q), reference(x, q))
    x32 = x[:100_000].astype(np.float32)
    assert np.array_equal(P._gridded_counts(x32, q, P._GRID), reference(x32, q))


def test_the_grid_leaves_few_values_to_search(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    x = np.round(rng.normal(size=200_000), 6)
    q = quantiles(rng, rng.normal(size=20_000))
    searched: list[int] = []
    search = P._searched_counts
    monkeypatch.setattr(P, "_searched_counts", lambda v, qs: searched.append(len(v)) or search(v, qs))
    assert np.array_equal(P._percentile_counts(x, q), reference(x, q))
    assert len(searched) == 1 and searched[0] < x.size // 20
