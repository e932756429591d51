"""ALS fold-in: a user's factors from their preferences, the item factors held fixed.

This is Spark ALS's own user step (``ALS.computeFactors`` in Spark 3 and 4), so folding in the
preferences a model was fitted on gives back that model's user factors: ALS's last half-iteration
solves the users against the final item factors, exactly this. With item factors ``Y`` (every
item of the model), a user's preferences ``r_i`` on items ``i`` and ``n`` of them counted:

- implicit: ``(YᵀY + Σ c_i y_i y_iᵀ + λ n I) x = Σ (1 + c_i) y_i`` over ``r_i > 0``, where
  ``c_i = alpha |r_i|`` (a non-positive preference adds confidence but no preference, and is not
  counted in ``n``);
- explicit: ``(Σ y_i y_iᵀ + λ n I) x = Σ r_i y_i``;

``λ`` is ``regParam`` scaled by ``n`` as ALS-WR does. ``nonnegative`` solves the same normal
equation under ``x ≥ 0`` (Spark uses its own NNLS; the optimum is the same problem's).

Vectorised over a block of users: the per-user systems are summed pair by pair into a
``(users, rank, rank)`` stack in chunks (memory bounded by ``chunk_pairs``) and solved at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AlsSettings:
    """What the user step needs of the fitted model: its form and regularisation."""

    reg_param: float
    alpha: float
    implicit: bool
    nonnegative: bool = False


def gram(item_factors: np.ndarray) -> np.ndarray:
    """``YᵀY`` over every item of the model (implicit fold-in adds it to each user's system)."""
    y = np.asarray(item_factors, dtype=np.float64)
    return y.T @ y


def fold_in(
    user_rows: np.ndarray,
    item_rows: np.ndarray,
    preferences: np.ndarray,
    n_users: int,
    item_factors: np.ndarray,
    settings: AlsSettings,
    *,
    item_gram: np.ndarray | None = None,
    chunk_pairs: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Factors of ``n_users`` users from their (user row, item row, preference) pairs.

    Args:
        user_rows: each pair's user, 0 .. n_users-1.
        item_rows: each pair's row of ``item_factors``.
        preferences: each pair's preference (the values ALS was fitted on, ``cf.preferences``).
        item_factors: the model's item factors, one row per item.
        item_gram: ``gram(item_factors)``, when the caller has it (implicit only).

    Returns:
        ``(factors, counted)``: float32 ``(n_users, rank)`` and each user's ``n``. A user with
        no counted preference gets zeros: ALS has nothing to solve for them.
    """
    y = np.asarray(item_factors, dtype=np.float64)
    rank = y.shape[1]
    users = np.asarray(user_rows, dtype=np.int64)
    ratings = np.asarray(preferences, dtype=np.float64)
    vectors = y[np.asarray(item_rows, dtype=np.int64)]
    if settings.implicit:
        weight = settings.alpha * np.abs(ratings)  # c - 1: YᵀY already counts each item once
        target = np.where(ratings > 0, 1.0 + weight, 0.0)
        counted = np.bincount(users, weights=(ratings > 0).astype(float), minlength=n_users)
    else:
        weight = np.ones_like(ratings)
        target = ratings
        counted = np.bincount(users, minlength=n_users).astype(float)
    a = np.zeros((n_users, rank, rank))
    if settings.implicit:
        a += item_gram if item_gram is not None else gram(y)
    b = np.zeros((n_users, rank))
    np.add.at(b, users, vectors * target[:, None])
    for start in range(0, len(users), chunk_pairs):
        part = slice(start, start + chunk_pairs)
        scaled = vectors[part] * weight[part, None]
        np.add.at(a, users[part], scaled[:, :, None] * vectors[part][:, None, :])
    a += (settings.reg_param * counted)[:, None, None] * np.eye(rank)
    factors = np.zeros((n_users, rank))
    solvable = counted > 0
    if solvable.any():
        if settings.nonnegative:
            factors[solvable] = _nonnegative(a[solvable], b[solvable])
        else:
            factors[solvable] = np.linalg.solve(a[solvable], b[solvable][:, :, None])[:, :, 0]
    return factors.astype(np.float32), counted.astype(np.int64)


def _nonnegative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ½xᵀAx − bᵀx over x ≥ 0, per user: with A = LLᵀ it is the least-squares problem
    ‖Lᵀx − L⁻¹b‖² under x ≥ 0."""
    from scipy.optimize import nnls

    lower = np.linalg.cholesky(a)
    rhs = np.linalg.solve(lower, b[:, :, None])[:, :, 0]
    return np.stack([nnls(low.T, r)[0] for low, r in zip(lower, rhs, strict=True)])
