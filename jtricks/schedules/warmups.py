"""Linear warmups: a ramp to ``peak_value``, then held or decayed exponentially.

:func:`warmup_then` is the shared shape (the warmup of
:func:`~jtricks.schedules.warmup_cosine_decay` too): a straight line from
``init_value`` to ``peak_value`` over ``warmup_steps`` steps, then a second schedule
restarted from its own step 0, as ``optax.join_schedules`` joins them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks.base import Schedule, static_field
from jtricks.schedules._steps import step_count
from jtricks.schedules.decay import check_exponential, exponential_value, ramp_value

__all__ = [
    "WarmupConstant",
    "WarmupExponentialDecay",
    "warmup_constant",
    "warmup_exponential_decay",
]


def warmup_then(init_value: Any, peak_value: Any, warmup_steps: Any,
                after: Callable[[jax.Array], jax.Array], count: jax.Array) -> jax.Array:
    """``init -> peak`` linearly for ``k < W``, then ``after(k - W)``.

    ``max(W, 1)`` keeps the (then unused) ramp finite when there is no warmup.
    """
    w = warmup_steps
    warm = ramp_value(init_value, peak_value, jnp.maximum(w, 1), 0, count)
    return jnp.where(count < w, warm, after(count - w))


def check_warmup(where: str, init_value: Any, peak_value: Any, warmup_steps: Any,
                 fix: str = "Use 0 for no warmup.") -> None:
    """The constants of a linear warmup: finite values and ``warmup_steps >= 0``."""
    hp.check_finite(where, "init_value", init_value)
    hp.check_finite(where, "peak_value", peak_value)
    hp.check_nonnegative(where, "warmup_steps", warmup_steps, fix=fix)


class WarmupConstant(Schedule):
    """Linear warmup to ``peak_value``, then held; see :func:`warmup_constant`."""

    init_value: Any
    peak_value: Any
    warmup_steps: Any

    def __call__(self, count):
        return ramp_value(self.init_value, self.peak_value, self.warmup_steps, 0, count)


def warmup_constant(init_value: ArrayLike, peak_value: ArrayLike,
                    warmup_steps: ArrayLike) -> WarmupConstant:
    """A linear warmup to ``peak_value`` over ``warmup_steps`` steps, then no decay.

    With ``W = warmup_steps``::

        v(k) = init + (peak - init) * min(k, W) / W

    (``optax.warmup_constant_schedule``).

    Args:
        init_value: the value at step 0.
        peak_value: the value from step ``W`` on.
        warmup_steps: the length ``W`` of the warmup, > 0 (optax would hold
            ``init_value`` for ever with 0; without a warmup use
            ``jt.schedules.constant(peak_value)``).

    Example:
        >>> sched = jt.schedules.warmup_constant(0.0, 1e-3, 100)
        >>> [round(float(sched(k)), 6) for k in (50, 1000)]
        [0.0005, 0.001]
    """
    where = "warmup_constant"
    warmup_steps = step_count(warmup_steps)
    check_warmup(where, init_value, peak_value, warmup_steps)
    hp.check_positive(where, "warmup_steps", warmup_steps,
                      fix="With 0 steps optax would hold init_value for ever; for no "
                      "warmup use jt.schedules.constant(peak_value).")
    return WarmupConstant(init_value=init_value, peak_value=peak_value,
                          warmup_steps=warmup_steps)


class WarmupExponentialDecay(Schedule):
    """Linear warmup, then exponential decay; see :func:`warmup_exponential_decay`."""

    init_value: Any
    peak_value: Any
    warmup_steps: Any
    transition_steps: Any
    decay_rate: Any
    transition_begin: Any
    end_value: Any
    staircase: bool = static_field(default=False)

    def __call__(self, count):
        def decay(t):
            return exponential_value(self.peak_value, self.transition_steps,
                                     self.decay_rate, self.transition_begin,
                                     self.end_value, self.staircase, t)

        return warmup_then(self.init_value, self.peak_value, self.warmup_steps, decay,
                           count)


def warmup_exponential_decay(init_value: ArrayLike, peak_value: ArrayLike,
                             warmup_steps: ArrayLike, transition_steps: ArrayLike,
                             decay_rate: ArrayLike, transition_begin: ArrayLike = 0,
                             staircase: bool = False, end_value: ArrayLike | None = None
                             ) -> WarmupExponentialDecay:
    """A linear warmup to ``peak_value``, then an exponential decay from it.

    With ``W = warmup_steps`` and ``t = k - W - transition_begin``::

        v(k) = init + (peak - init) * k / W                         for k < W
        v(k) = peak                                                 for t <= 0
        v(k) = peak * decay_rate ** (t / transition_steps)          otherwise

    with ``t / transition_steps`` rounded down when ``staircase=True`` and the decay
    bounded by ``end_value`` as in :func:`~jtricks.schedules.exponential_decay`
    (``optax.warmup_exponential_decay_schedule``: the decay restarts its step count
    at the end of the warmup).

    Args:
        init_value: the value at step 0.
        peak_value: the value reached at the end of the warmup.
        warmup_steps: the length ``W`` of the warmup, >= 0 (0: no warmup).
        transition_steps: steps per factor of ``decay_rate``, > 0.
        decay_rate: the factor per ``transition_steps`` steps, > 0 (< 1 decays).
        transition_begin: steps to hold ``peak_value`` after the warmup, >= 0.
        staircase: decay in discrete jumps instead of continuously.
        end_value: optional bound the value never passes.

    Example:
        >>> sched = jt.schedules.warmup_exponential_decay(0.0, 0.1, 100, 1000, 0.5)
        >>> [round(float(sched(k)), 6) for k in (50, 100, 1100)]  # 0.1 * 0.5 at 1100
        [0.05, 0.1, 0.05]
    """
    where = "warmup_exponential_decay"
    warmup_steps, transition_steps, transition_begin = (
        step_count(warmup_steps), step_count(transition_steps),
        step_count(transition_begin))
    check_warmup(where, init_value, peak_value, warmup_steps)
    check_exponential(where, transition_steps, decay_rate, transition_begin, end_value)
    return WarmupExponentialDecay(
        init_value=init_value, peak_value=peak_value, warmup_steps=warmup_steps,
        transition_steps=transition_steps, decay_rate=decay_rate,
        transition_begin=transition_begin, end_value=end_value, staircase=bool(staircase))
