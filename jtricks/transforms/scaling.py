"""Scaling by a constant factor or by a (scheduled) learning rate."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import LrFactor, Stateless, Transform, static_field

__all__ = [
    "Scale",
    "scale",
    "ScaleByLearningRate",
    "ScaleByLearningRateState",
    "scale_by_learning_rate",
]


class Scale(Stateless):
    """``u -> factor * u``."""

    factor: Any

    def update(self, updates, state, params=None, **extra):
        del params, extra
        factor = self.factor
        return jax.tree.map(lambda g: g * factor, updates), state


def scale(factor: ArrayLike) -> Scale:
    """Multiplies every update by a constant ``factor``: ``u -> factor * u``.

    Args:
        factor: a float or an array (a tracer inside ``jit`` is fine). For a
            schedule use :func:`scale_by_learning_rate`.

    Example:
        >>> tx = jt.scale(-0.1)   # plain gradient descent with rate 0.1
    """
    if hp.is_schedule(factor):
        raise TypeError(
            f"scale: factor must be a number or an array, got a schedule {factor!r}. "
            "Use jt.scale_by_learning_rate(schedule) to scale by a schedule."
        )
    hp.check_range("scale", "factor", factor)
    return Scale(factor=factor)


class ScaleByLearningRateState(NamedTuple):
    """``count``: the number of updates so far (int32); indexes the schedule."""

    count: jax.Array


class ScaleByLearningRate(Transform):
    """``u_k -> -lr(k) * u_k`` (or ``+lr(k)`` with ``flip_sign=False``)."""

    learning_rate: Any
    flip_sign: bool = static_field(default=True)

    def init(self, params):
        hp.check_float_params("scale_by_learning_rate", params)
        return ScaleByLearningRateState(count=jnp.zeros([], jnp.int32))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        lr = hp.value_at(self.learning_rate, state.count)
        step = -lr if self.flip_sign else lr
        if hp.is_schedule(self.learning_rate):
            # A schedule returns an fp32 array; use the update's dtype so bf16 stays bf16.
            updates = jax.tree.map(lambda g: jnp.asarray(step, g.dtype) * g, updates)
        else:
            updates = jax.tree.map(lambda g: g * step, updates)
        return updates, ScaleByLearningRateState(count=jtree.increment(state.count))

    def learning_rate_factors(self, params, state, new_state):
        del params, new_state
        return [LrFactor("rate", hp.value_at(self.learning_rate, state.count))]


def scale_by_learning_rate(learning_rate: Any, *, flip_sign: bool = True) -> ScaleByLearningRate:
    """Scales updates by the learning rate, negated so that updates are *added*.

    Update ``k`` (counting from 0) uses ``learning_rate(k)`` when it is a schedule::

        u_k -> -lr(k) * u_k

    Args:
        learning_rate: a float, an array or a schedule ``count -> value``; >= 0.
        flip_sign: negate (the default, for descent); ``False`` for ascent.

    Example:
        >>> tx = jt.chain(jt.scale_by_adam(), jt.scale_by_learning_rate(1e-3))
    """
    hp.check_range(
        "scale_by_learning_rate", "learning_rate", learning_rate, low=0.0,
        fix="A learning rate is a step size and must be non-negative; to ascend, "
        "pass flip_sign=False.",
    )
    return ScaleByLearningRate(learning_rate=hp.as_hyper(learning_rate), flip_sign=flip_sign)
