"""Schedules run one after the other, each restarted from its own step 0."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks.base import Schedule
from jtricks.schedules._steps import step_count

__all__ = ["Join", "join"]


class Join(Schedule):
    """Runs ``schedules[i]`` from ``boundaries[i-1]`` on; see :func:`join`."""

    schedules: tuple
    boundaries: tuple

    def __call__(self, count):
        value = self.schedules[0](count)
        for boundary, schedule in zip(self.boundaries, self.schedules[1:]):
            value = jnp.where(count < boundary, value, schedule(count - boundary))
        return value


def check_join(where: str, schedules: tuple, boundaries: tuple) -> None:
    """``n + 1`` callables and ``n`` non-decreasing boundaries >= 0."""
    if not schedules:
        raise ValueError(f"{where}: schedules is empty; give at least one schedule.")
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(
                f"{where}: schedules[{i}] must be a schedule (a callable count -> "
                f"value), got {type(s).__name__}: {s!r}. Wrap a number with "
                "jt.schedules.constant(value)."
            )
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"{where}: {len(schedules)} schedules need {len(schedules) - 1} boundaries "
            f"(one per switch), got {len(boundaries)}: {boundaries!r}."
        )
    for i, b in enumerate(boundaries):
        hp.check_nonnegative(where, f"boundaries[{i}]", b)
    for i in range(1, len(boundaries)):
        prev = hp.concrete(boundaries[i - 1])
        if prev is not None:
            hp.check(where, f"boundaries[{i}]", boundaries[i], lambda b, p=prev: b >= p,
                     f">= boundaries[{i - 1}] = {boundaries[i - 1]!r} (non-decreasing)",
                     fix=f"Got boundaries={boundaries!r}; list the steps where each next "
                     "schedule starts, in order.")


def join(schedules: Sequence[Callable], boundaries: Sequence[ArrayLike]) -> Join:
    """Runs schedules one after the other, each restarted from its own step 0.

    With boundaries ``b_1 <= ... <= b_n`` (and ``b_0 = 0``), step ``k`` in
    ``[b_i, b_{i+1})`` gets ``schedules[i](k - b_i)`` (``optax.join_schedules``).

    Args:
        schedules: ``n + 1`` schedules (jtricks schedules or plain functions).
        boundaries: ``n`` non-decreasing steps >= 0 where the next schedule starts.

    Example:
        >>> warm = jt.schedules.linear(0.0, 1e-3, 100)
        >>> decay = jt.schedules.cosine_decay(1e-3, 900)
        >>> sched = jt.schedules.join([warm, decay], [100])
        >>> [round(float(sched(k)), 6) for k in (50, 100, 550)]  # 550: decay's step 450
        [0.0005, 0.001, 0.0005]
    """
    schedules = tuple(schedules)
    boundaries = tuple(step_count(b) for b in boundaries)
    check_join("join", schedules, boundaries)
    return Join(schedules=tuple(hp.as_hyper(s) for s in schedules), boundaries=boundaries)
