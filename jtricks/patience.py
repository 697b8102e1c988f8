"""Patience: when a monitored value improves, and when waiting for it runs out.

Shared by :class:`jtricks.train.EarlyStopping` (stop training) and
:func:`jtricks.reduce_on_plateau` (lower the step size): both watch a value, count
the evaluations since it last improved, and act once the count reaches
``patience``. Pure and jittable: no Python control flow on values.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jtricks import tree as jtree

__all__ = ["MODES", "check_mode", "improves", "wait"]

MODES = ("min", "max")


def check_mode(where: str, mode: Any, what: str = "e.g. a loss") -> None:
    """``mode`` must be ``"min"`` (lower is better) or ``"max"`` (higher is better)."""
    if mode not in MODES:
        raise ValueError(
            f"{where}: mode must be 'min' (lower is better, {what}) or 'max' (higher is "
            f"better, e.g. an accuracy), got {mode!r}."
        )


def improves(value: jax.Array, best: jax.Array, mode: str, *, rtol: Any = 0.0,
             atol: Any = 0.0) -> jax.Array:
    """Whether ``value`` beats ``best`` by more than ``rtol * |best| + atol``.

    ``"min"``: ``value < best - rtol * |best| - atol``; ``"max"`` mirrors it. For
    ``best >= 0`` in ``"min"`` mode this is optax's ``(1 - rtol) * best - atol``.
    NaN never improves; anything finite improves on the initial ``±inf``.
    """
    sign = 1 if mode == "min" else -1
    b = sign * best
    moved = jnp.where(b >= 0, (1 - rtol) * b, (1 + rtol) * b)
    return sign * value < moved - atol


def wait(improved: jax.Array, waited: jax.Array, patience: Any
         ) -> tuple[jax.Array, jax.Array]:
    """``(waited', exhausted)``: evaluations since the last improvement, and whether
    they reached ``patience``::

        waited' = 0 if improved else waited + 1
        exhausted = waited' >= patience
    """
    waited = jnp.where(improved, 0, jtree.increment(waited)).astype(jnp.int32)
    return waited, waited >= patience
