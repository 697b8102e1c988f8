"""Schedules built from schedules: a warmup in front of any schedule, and products.

``schedule_a * schedule_b``, ``2.0 * schedule`` and :func:`product` build a
:class:`Product`; the operators are defined on :class:`jtricks.base.Schedule`, which
finds :class:`Product` through the hook this module sets on import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks.base import Schedule
from jtricks.schedules._steps import step_count
from jtricks.schedules.decay import ramp_value

__all__ = ["Warmup", "Product", "warmup", "product"]


class Warmup(Schedule):
    """A linear warmup in front of ``schedule``; see :func:`warmup`."""

    schedule: Any
    warmup_steps: Any
    init_value: Any

    def __call__(self, count):
        w = self.warmup_steps
        count = jnp.asarray(count)
        peak = self.schedule(jnp.zeros_like(count))
        # max(W, 1) keeps the (then unused) ramp finite when there is no warmup; the
        # schedule never sees a negative step.
        warm = ramp_value(self.init_value, peak, jnp.maximum(w, 1), 0, count)
        return jnp.where(count < w, warm, self.schedule(jnp.maximum(count - w, 0)))


def warmup(schedule: Callable, warmup_steps: ArrayLike,
           init_value: ArrayLike = 0.0) -> Warmup:
    """Prepends a linear warmup of ``warmup_steps`` steps to any schedule.

    The warmup rises from ``init_value`` to the schedule's first value, then the
    schedule runs from its own step 0 (as ``optax.join_schedules`` restarts it). With
    ``W = warmup_steps`` and ``s`` the schedule::

        v(k) = init_value + (s(0) - init_value) * k / W     for k < W
        v(k) = s(k - W)                                     for k >= W

    Args:
        schedule: any schedule (a jtricks schedule or a plain function of the step).
        warmup_steps: the length ``W`` of the warmup, >= 0 (0 gives ``schedule``'s
            values).
        init_value: the value at step 0.

    Example:
        >>> sched = jt.schedules.warmup(jt.schedules.cyclic(1e-4, 1e-2, 100), 10)
        >>> [round(float(sched(k)), 6) for k in (0, 5, 10, 110)]
        [0.0, 5e-05, 0.0001, 0.01]
    """
    where = "warmup"
    if not callable(schedule) or isinstance(schedule, (jax.Array, np.ndarray)):
        raise TypeError(
            f"{where}: schedule must be a schedule (a callable step -> value), got "
            f"{type(schedule).__name__}: {schedule!r}. For a constant after the warmup "
            "use jt.schedules.warmup_constant."
        )
    warmup_steps = step_count(warmup_steps)
    hp.check_nonnegative(where, "warmup_steps", warmup_steps, fix="Use 0 for no warmup.")
    hp.check_finite(where, "init_value", init_value)
    return Warmup(schedule=hp.as_hyper(schedule), warmup_steps=warmup_steps,
                  init_value=init_value)


class Product(Schedule):
    """The product of schedules and constants; see :func:`product`."""

    factors: tuple

    def __call__(self, count):
        value = hp.value_at(self.factors[0], count)
        for factor in self.factors[1:]:
            value = value * hp.value_at(factor, count)
        return jnp.asarray(value)


def _is_number(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, (int, float, np.integer, np.floating, jax.Array, np.ndarray)):
        return jnp.issubdtype(jnp.result_type(x), jnp.number)
    return False


def _factor(where: str, i: int, x: Any) -> tuple:
    """``x`` as a tuple of factors (a product's own, flattened), checked."""
    if isinstance(x, Product):
        return x.factors
    if hp.is_schedule(x):
        return (hp.as_hyper(x),)
    if not _is_number(x):
        raise TypeError(
            f"{where}: factor {i} must be a schedule or a number, got "
            f"{type(x).__name__}: {x!r}."
        )
    hp.check_finite(where, f"factor {i}", x)
    return (x,)


def product(*factors: Any) -> Product:
    """The product of schedules (and constants), step by step.

    ::

        v(k) = f_1(k) * f_2(k) * ... * f_n(k)      (a constant factor is its value)

    ``a * b`` and ``2.0 * a`` build the same thing for schedules ``a``, ``b``; nested
    products are flattened. A common use is a cyclic or warm-restart shape under a
    slow decay of its envelope.

    Args:
        *factors: at least one schedule, and any finite numbers or arrays.

    Example:
        >>> envelope = jt.schedules.exponential_decay(1.0, 1000, 0.5)
        >>> sched = jt.schedules.cyclic(1e-4, 1e-2, 100) * envelope
        >>> round(float(sched(1100)), 6)   # 0.01 * 0.5 ** 1.1
        0.004665
    """
    where = "product"
    if not factors:
        raise ValueError(f"{where}: no factors; give at least one schedule.")
    flat = tuple(f for i, x in enumerate(factors) for f in _factor(where, i, x))
    if not any(hp.is_schedule(f) for f in flat):
        raise TypeError(f"{where}: no factor is a schedule, got {factors!r}; a product "
                        "of numbers is a number (use jt.schedules.constant).")
    return Product(factors=flat)


def _multiply(a: Any, b: Any) -> Any:
    """``a * b`` for a schedule and a schedule, function or number; otherwise
    ``NotImplemented`` (so Python tries the other operand, then raises)."""
    for x in (a, b):
        if not (hp.is_schedule(x) or _is_number(x)):
            return NotImplemented
    return product(a, b)


# Schedule.__mul__ / __rmul__ call this; base.py cannot import this module (it
# imports base.py), so the hook is set here, when jtricks.schedules is imported.
Schedule._product = staticmethod(_multiply)
