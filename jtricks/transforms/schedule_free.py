"""Schedule-Free learning (Defazio et al., 2024): interpolation and averaging in place
of momentum and of a decaying schedule; optax's ``contrib.schedule_free``."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, as_transform, static_field

__all__ = ["ScheduleFreeState", "ScheduleFree", "schedule_free",
           "schedule_free_eval_params"]


class ScheduleFreeState(NamedTuple):
    """State of :func:`schedule_free` (optax's fields, in optax's order).

    Attributes:
        b1: the interpolation weight, a scalar in the params' lowest dtype (kept so
            :func:`schedule_free_eval_params` needs only the state).
        weight_sum: the sum of the averaging weights so far.
        step_count: int32, the 1-based index of the next update (starts at 1).
        max_lr: the largest learning rate seen so far.
        base_optimizer_state: the wrapped optimizer's state.
        z: the base optimizer's iterate, shaped like params (``state_dtype`` or the
            params' dtypes).
    """

    b1: Any
    weight_sum: Any
    step_count: jax.Array
    max_lr: Any
    base_optimizer_state: Any
    z: Any


def _lower(a: Any, b: Any) -> Any:
    """The lower of two dtypes: the one that promotes to the other."""
    return a if jnp.promote_types(a, b) == jnp.dtype(b) else b


def _lowest_dtype(params: Any) -> Any:
    """The dtype every leaf of ``params`` promotes to from below (bf16 in a tree of
    bf16 and fp32); the default float dtype for an empty tree."""
    dtypes = [jnp.result_type(p) for p in jax.tree.leaves(params)]
    return functools.reduce(_lower, dtypes) if dtypes else jnp.asarray([]).dtype


def _averaging_weight(weight: jax.Array, total: jax.Array) -> jax.Array:
    """``weight / total``: 0 when both are 0 (a zero learning rate so far), NaN only
    when an input is NaN."""
    ratio = jnp.nan_to_num(weight / total, nan=0.0, posinf=jnp.inf)
    return jnp.where(jnp.isnan(weight) | jnp.isnan(total), jnp.nan, ratio)


class ScheduleFree(Transform):
    """Schedule-Free around a base optimizer; see :func:`schedule_free`."""

    base_optimizer: Transform
    learning_rate: Any
    b1: Any
    weight_lr_power: Any
    state_dtype: Any = static_field(default=None)

    def init(self, params):
        hp.check_float_params("schedule_free", params)
        dtype = _lowest_dtype(params)
        # A copy, never the params' own buffer: params and state may both be donated.
        z = jax.tree.map(lambda p: jnp.array(p, dtype=self.state_dtype, copy=True), params)
        return ScheduleFreeState(
            b1=jnp.asarray(self.b1, dtype), weight_sum=jnp.zeros([], dtype),
            step_count=jnp.ones([], jnp.int32), max_lr=jnp.zeros([], dtype),
            base_optimizer_state=self.base_optimizer.init(params), z=z)

    def _rate(self, state: ScheduleFreeState) -> jax.Array:
        # The schedule is read at step_count, which starts at 1 (optax's indexing).
        lr = hp.value_at(self.learning_rate, state.step_count)
        return jnp.asarray(lr, state.max_lr.dtype)

    def update(self, updates, state, params=None, **extra):
        hp.require_params("schedule_free.update", params,
                          "the update interpolates between the params and z")
        dtype = state.max_lr.dtype
        max_lr = jnp.maximum(state.max_lr, self._rate(state)).astype(dtype)
        weight = (max_lr ** self.weight_lr_power).astype(dtype)
        total = (state.weight_sum + weight).astype(dtype)
        ck = _averaging_weight(weight, total)
        base_updates, base_state = self.base_optimizer.update(
            updates, state.base_optimizer_state, params, **extra)
        b1 = self.b1

        def leaf(y, z_old, u):
            # One pass: z steps; x (not stored) is recovered from y and the old z,
            # moves towards the new z, and y is re-interpolated between x and z.
            z = (z_old + u).astype(z_old.dtype)
            x = (y - (1.0 - b1) * z_old) / b1
            x = (1.0 - ck) * x + ck * z
            return b1 * x + (1.0 - b1) * z - y, z

        out = jtree.map_checked(leaf, params, state.z, base_updates,
                                names=("params", "state.z", "base updates"),
                                where="schedule_free.update")
        new_updates, z = jtree.unzip2(params, out)
        return new_updates, ScheduleFreeState(
            b1=state.b1, weight_sum=total, step_count=jtree.increment(state.step_count),
            max_lr=max_lr, base_optimizer_state=base_state, z=z)

    def hyperparams_at(self, state):
        return {"base_optimizer": self.base_optimizer.hyperparams_at(
                    state.base_optimizer_state),
                "learning_rate": self._rate(state), "b1": self.b1,
                "weight_lr_power": self.weight_lr_power}

    def learning_rate_factors(self, params, state, new_state):
        return self.base_optimizer.learning_rate_factors(
            params, state.base_optimizer_state, new_state.base_optimizer_state)


def schedule_free(base_optimizer: Any, learning_rate: Any, b1: Any = 0.9,
                  weight_lr_power: Any = 2.0, state_dtype: Any = None) -> ScheduleFree:
    """Schedule-Free: replaces the base optimizer's momentum and its learning-rate
    decay by interpolation and a weighted average of its iterates.

    The base optimizer (run without momentum) steps a sequence ``z``; the params the
    caller holds are ``y``, where gradients are taken; ``x``, the average, is where
    to evaluate (:func:`schedule_free_eval_params`). With ``u_t`` the base
    optimizer's update at ``y_t`` and ``t`` the 1-based step::

        z_{t+1}  = z_t + u_t
        lr_max   = max(lr_max, lr(t));   w_t = lr_max ** weight_lr_power
        c_t      = w_t / (w_1 + ... + w_t)
        x_{t+1}  = (1 - c_t) * x_t + c_t * z_{t+1}
        y_{t+1}  = b1 * x_{t+1} + (1 - b1) * z_{t+1}

    ``x`` is not stored: it is recovered as ``(y - (1 - b1) * z) / b1``. A scheduled
    ``learning_rate`` is read at ``t`` (from 1, as optax reads it); give the base
    optimizer the same rate. Same numbers and state as optax's
    ``contrib.schedule_free``.

    Paper: A. Defazio, X. Yang, H. Mehta, K. Mishchenko, A. Khaled, A. Cutkosky,
    "The Road Less Scheduled", 2024 (arXiv:2405.15682).

    Args:
        base_optimizer: the optimizer stepping ``z`` (jtricks or optax), without
            momentum (e.g. ``jt.adam(lr, b1=0.0)`` or ``jt.sgd(lr)``).
        learning_rate: the base optimizer's rate, >= 0: a float, an array or a
            schedule (warmup, no decay); it sets the averaging weights.
        b1: the interpolation weight, in (0, 1] (a number or an array).
        weight_lr_power: the power of the largest rate so far in the averaging
            weight, >= 0 (2 down-weights the warmup steps).
        state_dtype: dtype of ``z`` (static); ``None`` keeps the params' dtypes.

    Example:
        >>> tx = schedule_free(jt.sgd(0.1), 0.1, b1=0.9)
        >>> eval_params = schedule_free_eval_params(state, params)
    """
    with hp.reporting_as("schedule_free"):
        hp.check_learning_rate("schedule_free", learning_rate)
        hp.no_schedule("schedule_free", "b1", b1, fix="b1 is stored in the state by init.")
        hp.check_range("schedule_free", "b1", b1, low=0.0, high=1.0, low_open=True,
                       fix="b1 interpolates between the average and z; the paper uses 0.9.")
        hp.no_schedule("schedule_free", "weight_lr_power", weight_lr_power)
        hp.check_nonnegative("schedule_free", "weight_lr_power", weight_lr_power,
                             fix="It is the power of the learning rate in the averaging "
                             "weight; the paper uses 2.")
    return ScheduleFree(
        base_optimizer=as_transform(base_optimizer, where="schedule_free"),
        learning_rate=hp.as_hyper(learning_rate), b1=b1, weight_lr_power=weight_lr_power,
        state_dtype=None if state_dtype is None else jnp.dtype(state_dtype))


def schedule_free_eval_params(state: Any, params: Any) -> Any:
    """The params to evaluate a Schedule-Free model at: the average ``x``.

    ::

        x = (y - (1 - b1) * z) / b1

    with ``y`` the params being trained and ``b1``, ``z`` read from the
    :class:`ScheduleFreeState` (jtricks' or optax's, alike).

    Args:
        state: the state of :func:`schedule_free` (or of ``schedule_free_adamw`` /
            ``schedule_free_sgd``).
        params: the current params ``y``.

    Example:
        >>> eval_params = schedule_free_eval_params(state, params)
    """
    b1, z = getattr(state, "b1", None), getattr(state, "z", None)
    if b1 is None or z is None:
        raise ValueError(
            "schedule_free_eval_params: state must be a ScheduleFreeState (with fields "
            f"b1 and z), got {type(state).__name__}. Pass the state schedule_free's init "
            "and update return; inside a chain, pass that member's state (state[i])."
        )
    return jtree.map_checked(lambda y, zi: (y - (1.0 - b1) * zi) / b1, params, z,
                             names=("params", "state.z"), where="schedule_free_eval_params")
