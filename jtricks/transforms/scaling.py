"""Scaling by a constant factor, by a schedule, or by a (scheduled) learning rate."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import EmptyState, LrFactor, Stateless, Transform, static_field

__all__ = [
    "Scale",
    "scale",
    "ScaleByScheduleState",
    "ScaleBySchedule",
    "scale_by_schedule",
    "ScaleByLearningRate",
    "scale_by_learning_rate",
]


class Scale(Stateless):
    """``u -> step_size * u``."""

    step_size: Any

    def update(self, updates, state, params=None, **extra):
        del params, extra
        step_size = self.step_size
        return jax.tree.map(lambda g: g * step_size, updates), state


def scale(step_size: ArrayLike) -> Scale:
    """Multiplies every update by a constant: ``u -> step_size * u``.

    Args:
        step_size: a float or an array (a tracer inside ``jit`` is fine). For a
            schedule use :func:`scale_by_schedule` or :func:`scale_by_learning_rate`.

    Example:
        >>> tx = jt.scale(-0.1)   # plain gradient descent with rate 0.1
    """
    hp.no_schedule("scale", "step_size", step_size,
                   fix="Use jt.scale_by_schedule(schedule) or "
                   "jt.scale_by_learning_rate(schedule) to scale by a schedule.")
    hp.check_finite("scale", "step_size", step_size)
    return Scale(step_size=step_size)


class ScaleByScheduleState(NamedTuple):
    """``count``: the number of updates so far (int32); indexes the schedule."""

    count: jax.Array


def _scaled(updates: Any, factor: Any, scheduled: bool) -> Any:
    if scheduled:
        # A schedule returns an fp32 array; use the update's dtype so bf16 stays bf16.
        return jax.tree.map(lambda g: jnp.asarray(factor, g.dtype) * g, updates)
    return jax.tree.map(lambda g: g * factor, updates)


class ScaleBySchedule(Transform):
    """``u_k -> step_size_fn(k) * u_k``; see :func:`scale_by_schedule`."""

    step_size_fn: Any

    def init(self, params):
        return ScaleByScheduleState(count=jtree.scalar(0, jnp.int32, params))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        factor = hp.value_at(self.step_size_fn, state.count)
        return (_scaled(updates, factor, True),
                ScaleByScheduleState(count=jtree.increment(state.count)))


def scale_by_schedule(step_size_fn: Any) -> ScaleBySchedule:
    """Multiplies update ``k`` (counting from 0) by ``step_size_fn(k)``; no sign flip::

        u_k -> step_size_fn(k) * u_k

    Args:
        step_size_fn: a schedule ``count -> value`` (a jtricks schedule, whose
            constants stay data, or any function).

    Example:
        >>> tx = jt.scale_by_schedule(jt.schedules.exponential_decay(-0.1, 100, 0.9))
    """
    if not hp.is_schedule(step_size_fn):
        raise TypeError(
            f"scale_by_schedule: step_size_fn must be a schedule (a callable count -> "
            f"value), got {type(step_size_fn).__name__}: {step_size_fn!r}. For a "
            "constant use jt.scale(step_size)."
        )
    return ScaleBySchedule(step_size_fn=hp.as_hyper(step_size_fn))


class ScaleByLearningRate(Transform):
    """``u_k -> -lr(k) * u_k`` (or ``+lr(k)`` with ``flip_sign=False``).

    Its state is optax's: :class:`jtricks.EmptyState` for a constant rate, a
    :class:`ScaleByScheduleState` (the count) for a schedule.
    """

    learning_rate: Any
    flip_sign: bool = static_field(default=True)

    def init(self, params):
        hp.check_float_params("scale_by_learning_rate", params)
        if hp.is_schedule(self.learning_rate):
            return ScaleByScheduleState(count=jtree.scalar(0, jnp.int32, params))
        return EmptyState()

    def _rate(self, state: Any) -> Any:
        return hp.value_at(self.learning_rate, hp.count_of(state))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        lr = self._rate(state)
        scheduled = isinstance(state, ScaleByScheduleState)
        updates = _scaled(updates, -lr if self.flip_sign else lr, scheduled)
        if scheduled:
            state = ScaleByScheduleState(count=jtree.increment(state.count))
        return updates, state

    def learning_rate_factors(self, params, state, new_state):
        del params, new_state
        return [LrFactor("rate", self._rate(state))]


def scale_by_learning_rate(learning_rate: Any = None, *,
                           flip_sign: bool = True) -> ScaleByLearningRate:
    """Scales updates by the learning rate, negated so that updates are *added*.

    Update ``k`` (counting from 0) uses ``learning_rate(k)`` when it is a schedule::

        u_k -> -lr(k) * u_k

    Args:
        learning_rate: a float, an array or a schedule ``count -> value``; >= 0.
            Required (the ``None`` default only mirrors optax's signature).
        flip_sign: negate (the default, for descent); ``False`` for ascent.

    Example:
        >>> tx = jt.chain(jt.scale_by_adam(), jt.scale_by_learning_rate(1e-3))
    """
    if learning_rate is None:
        raise TypeError(
            "scale_by_learning_rate: learning_rate is required, got None. Pass a "
            "number, an array or a schedule, e.g. scale_by_learning_rate(1e-3)."
        )
    hp.check_range(
        "scale_by_learning_rate", "learning_rate", learning_rate, low=0.0,
        fix="A learning rate is a step size and must be non-negative; to ascend, "
        "pass flip_sign=False.",
    )
    return ScaleByLearningRate(learning_rate=hp.as_hyper(learning_rate), flip_sign=flip_sign)
