"""Monotone schedules: a constant, an exponential decay and polynomial (linear) ramps.

The two formulas here, :func:`exponential_value` and :func:`ramp_value`, are also the
phases of the warmup schedules (:mod:`jtricks.schedules.warmups`,
:mod:`jtricks.schedules.cosine`), so each is written once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks.base import Schedule, static_field
from jtricks.schedules._steps import step_count

__all__ = [
    "Constant",
    "ExponentialDecay",
    "Polynomial",
    "Linear",
    "constant",
    "exponential_decay",
    "polynomial",
    "linear",
]


# --- the formulas -------------------------------------------------------------------


def exponential_value(init_value: Any, transition_steps: Any, decay_rate: Any,
                      transition_begin: Any, end_value: Any, staircase: bool,
                      count: jax.Array) -> jax.Array:
    """``init * rate ** ((k - begin) / steps)`` (floored exponent on a staircase),
    ``init`` up to ``begin``, bounded by ``end_value`` when there is one."""
    t = count - transition_begin
    p = t / transition_steps
    if staircase:
        p = jnp.floor(p)
    value = jnp.where(t <= 0, init_value, init_value * jnp.power(decay_rate, p))
    if end_value is not None:
        # end_value is a floor for a decay and a ceiling for a growth.
        value = jnp.where(decay_rate < 1, jnp.maximum(value, end_value),
                          jnp.minimum(value, end_value))
    return value


def ramp_value(init_value: Any, end_value: Any, transition_steps: Any,
               transition_begin: Any, count: jax.Array, power: Any = 1) -> jax.Array:
    """``(I - E) * (1 - clip(k - B, 0, T) / T) ** power + E``: ``I`` up to step ``B``,
    ``E`` from step ``B + T`` on (``power=1`` is a straight line)."""
    t = jnp.clip(count - transition_begin, 0, transition_steps)
    # Under jit XLA may compute t / T as t * (1 / T), a hair above 1 at t = T; the
    # floor at 0 keeps frac ** power from NaN there (optax's does give NaN under jit
    # for a power < 1) and changes no value computed op by op.
    frac = jnp.maximum(1 - t / transition_steps, 0)
    return (init_value - end_value) * frac**power + end_value


# --- checks shared with the warmup schedules ----------------------------------------


def check_exponential(where: str, transition_steps: Any, decay_rate: Any,
                      transition_begin: Any, end_value: Any) -> None:
    """The constants of an exponential decay but its start value (optax would log
    and return a constant for a non-positive ``transition_steps`` or a zero
    ``decay_rate``, and start at once for a negative ``transition_begin``)."""
    hp.check_positive(where, "transition_steps", transition_steps,
                      fix="It is the number of steps per factor of decay_rate, e.g. the "
                      "number of steps per epoch; for a constant value use "
                      "jt.schedules.constant.")
    hp.check_positive(where, "decay_rate", decay_rate,
                      fix="Use a factor such as 0.98 (decay) or 1.02 (growth); for a "
                      "constant value use jt.schedules.constant.")
    hp.check_nonnegative(where, "transition_begin", transition_begin,
                         fix="It is the number of steps to hold the value before "
                         "decaying; use 0 to start at once.")
    if end_value is not None:
        hp.check_finite(where, "end_value", end_value)


def _check_ramp(where: str, init_value: Any, end_value: Any, transition_steps: Any,
                transition_begin: Any) -> None:
    hp.check_finite(where, "init_value", init_value)
    hp.check_finite(where, "end_value", end_value)
    hp.check_positive(where, "transition_steps", transition_steps,
                      fix="It is the length of the ramp in steps; for a constant value "
                      "use jt.schedules.constant.")
    hp.check_nonnegative(where, "transition_begin", transition_begin,
                         fix="Use 0 to start the ramp at once.")


# --- the schedules ------------------------------------------------------------------


class Constant(Schedule):
    """``value`` at every step; see :func:`constant`."""

    value: Any

    def __call__(self, count):
        del count
        return jnp.asarray(self.value)


def constant(value: ArrayLike) -> Constant:
    """The same value at every step: ``v(k) = value`` (``optax.constant_schedule``).

    Example:
        >>> jt.schedules.constant(1e-3)(10)
        Array(0.001, dtype=float32, weak_type=True)
    """
    hp.check_finite("constant", "value", value)
    return Constant(value=value)


class ExponentialDecay(Schedule):
    """``init * rate ** ((k - begin) / steps)``; see :func:`exponential_decay`."""

    init_value: Any
    transition_steps: Any
    decay_rate: Any
    transition_begin: Any
    end_value: Any
    staircase: bool = static_field(default=False)

    def __call__(self, count):
        return exponential_value(self.init_value, self.transition_steps, self.decay_rate,
                                 self.transition_begin, self.end_value, self.staircase,
                                 count)


def exponential_decay(init_value: ArrayLike, transition_steps: ArrayLike,
                      decay_rate: ArrayLike, transition_begin: ArrayLike = 0,
                      staircase: bool = False,
                      end_value: ArrayLike | None = None) -> ExponentialDecay:
    """Multiplies the value by ``decay_rate`` every ``transition_steps`` steps.

    With ``t = k - transition_begin`` for update ``k``::

        v(k) = init_value                                          if t <= 0
        v(k) = init_value * decay_rate ** (t / transition_steps)   otherwise

    where ``t / transition_steps`` is rounded down when ``staircase=True``; the
    result is clipped at ``end_value`` (from below when ``decay_rate < 1``, from
    above when it grows). The lesson's "multiply the rate by 0.98 after every epoch"
    is ``exponential_decay(lr, steps_per_epoch, 0.98, staircase=True)``, which gives
    ``lr * 0.98 ** epoch``.

    The arguments are optax's, in optax's order (``optax.exponential_decay``).
    jtricks 0.1 took ``(init_value, decay_rate, transition_steps)``; swap those two
    in older calls, or pass them by keyword.

    Args:
        init_value: the value before decay starts.
        transition_steps: steps per factor of ``decay_rate``, > 0.
        decay_rate: the factor per ``transition_steps`` steps, > 0 (< 1 decays).
        transition_begin: steps to hold ``init_value`` before decaying, >= 0.
        staircase: decay in discrete jumps instead of continuously.
        end_value: optional bound the value never passes.

    Example:
        >>> sched = jt.schedules.exponential_decay(0.1, 100, 0.98, staircase=True)
        >>> float(sched(250))  # 0.1 * 0.98 ** 2
        0.09604...
    """
    transition_steps, transition_begin = (step_count(transition_steps),
                                          step_count(transition_begin))
    hp.check_finite("exponential_decay", "init_value", init_value)
    check_exponential("exponential_decay", transition_steps, decay_rate, transition_begin,
                      end_value)
    return ExponentialDecay(init_value=init_value, transition_steps=transition_steps,
                            decay_rate=decay_rate, transition_begin=transition_begin,
                            end_value=end_value, staircase=bool(staircase))


class Polynomial(Schedule):
    """Polynomial ramp from ``init_value`` to ``end_value``; see :func:`polynomial`."""

    init_value: Any
    end_value: Any
    power: Any
    transition_steps: Any
    transition_begin: Any

    def __call__(self, count):
        return ramp_value(self.init_value, self.end_value, self.transition_steps,
                          self.transition_begin, count, self.power)


def polynomial(init_value: ArrayLike, end_value: ArrayLike, power: ArrayLike,
               transition_steps: ArrayLike, transition_begin: ArrayLike = 0) -> Polynomial:
    """Moves from ``init_value`` to ``end_value`` along a polynomial of degree ``power``.

    With ``I, E = init_value, end_value``, ``B = transition_begin`` and
    ``T = transition_steps``::

        v(k) = (I - E) * (1 - clip(k - B, 0, T) / T) ** power + E

    so the value is ``I`` up to step ``B`` and ``E`` from step ``B + T`` on
    (``optax.polynomial_schedule``). ``power=1`` is :func:`linear`; a larger power
    leaves the start sooner and approaches the end more gently.

    Args:
        init_value: the starting value ``I``.
        end_value: the final value ``E``.
        power: the degree of the polynomial, > 0.
        transition_steps: the length ``T`` of the ramp, > 0.
        transition_begin: steps ``B`` to hold ``init_value`` first, >= 0.

    Example:
        >>> sched = jt.schedules.polynomial(1.0, 0.01, 2, 100)
        >>> round(float(sched(50)), 6)  # 0.99 * 0.5 ** 2 + 0.01
        0.2575
    """
    where = "polynomial"
    transition_steps, transition_begin = (step_count(transition_steps),
                                          step_count(transition_begin))
    _check_ramp(where, init_value, end_value, transition_steps, transition_begin)
    hp.check_positive(where, "power", power,
                      fix="It is the degree of the ramp (1 is linear, 2 quadratic); for "
                      "a constant value use jt.schedules.constant.")
    return Polynomial(init_value=init_value, end_value=end_value, power=power,
                      transition_steps=transition_steps, transition_begin=transition_begin)


class Linear(Schedule):
    """Linear ramp from ``init_value`` to ``end_value``; see :func:`linear`."""

    init_value: Any
    end_value: Any
    transition_steps: Any
    transition_begin: Any

    def __call__(self, count):
        return ramp_value(self.init_value, self.end_value, self.transition_steps,
                          self.transition_begin, count)


def linear(init_value: ArrayLike, end_value: ArrayLike, transition_steps: ArrayLike,
           transition_begin: ArrayLike = 0) -> Linear:
    """Moves linearly from ``init_value`` to ``end_value`` over ``transition_steps``.

    With ``B = transition_begin`` and ``T = transition_steps``::

        v(k) = I + (E - I) * clip(k - B, 0, T) / T

    so the value is ``I`` up to step ``B`` and ``E`` from step ``B + T`` on
    (``optax.linear_schedule``; :func:`polynomial` with ``power=1``).

    Args:
        init_value: the starting value ``I``.
        end_value: the final value ``E``.
        transition_steps: the length ``T`` of the ramp, > 0.
        transition_begin: steps ``B`` to hold ``init_value`` first, >= 0.

    Example:
        >>> warmup = jt.schedules.linear(0.0, 1e-3, 500)
        >>> round(float(warmup(250)), 6)
        0.0005
    """
    transition_steps, transition_begin = (step_count(transition_steps),
                                          step_count(transition_begin))
    _check_ramp("linear", init_value, end_value, transition_steps, transition_begin)
    return Linear(init_value=init_value, end_value=end_value,
                  transition_steps=transition_steps, transition_begin=transition_begin)
