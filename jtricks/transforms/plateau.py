"""Reduce the step size when a monitored value stops improving."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import patience as pt
from jtricks import tree as jtree
from jtricks.base import LrFactor, Transform, static_field

__all__ = ["ReduceOnPlateauState", "ReduceOnPlateau", "reduce_on_plateau"]


class ReduceOnPlateauState(NamedTuple):
    """State of :func:`reduce_on_plateau`.

    Attributes:
        scale: the factor updates are multiplied by (starts at 1).
        best_value: the best averaged value seen so far (``+inf`` in ``"min"`` mode,
            ``-inf`` in ``"max"`` mode before the first one).
        plateau_count: int32, averaged values since the last improvement.
        cooldown_count: int32, averaged values left before plateaus count again.
        count: int32, values averaged into ``avg_value`` in the current window
            (optax's meaning: it restarts at 0 with every window).
        avg_value: the running mean of the values in the current window.
    """

    scale: jax.Array
    best_value: jax.Array
    plateau_count: jax.Array
    cooldown_count: jax.Array
    count: jax.Array
    avg_value: jax.Array


class ReduceOnPlateau(Transform):
    """Scales updates down when the monitored value plateaus; see :func:`reduce_on_plateau`."""

    factor: Any
    patience: Any
    rtol: Any
    atol: Any
    cooldown: Any
    accumulation_size: Any
    min_scale: Any
    mode: str = static_field(default="min")

    def init(self, params):
        dtype = jtree.acc_dtype(*(x for x in jax.tree.leaves(params)
                                  if jnp.issubdtype(jnp.result_type(x), jnp.floating)))
        worst = jnp.inf if self.mode == "min" else -jnp.inf
        def zero():  # a fresh buffer per field, so a donated state never aliases itself
            return jtree.scalar(0, jnp.int32, params)

        return ReduceOnPlateauState(
            scale=jtree.scalar(1, dtype, params), best_value=jtree.scalar(worst, dtype, params),
            plateau_count=zero(), cooldown_count=zero(), count=zero(),
            avg_value=jtree.scalar(0, dtype, params),
        )

    def update(self, updates, state, params=None, *, value: ArrayLike | None = None,
               **extra):
        del params, extra
        if value is None:
            raise TypeError(
                "reduce_on_plateau.update needs the monitored value: call "
                "tx.update(updates, state, params, value=loss) (inside jt.chain the "
                "keyword is passed on to every transform)."
            )
        if jnp.ndim(value) != 0:
            raise ValueError(
                "reduce_on_plateau.update: value must be a scalar (the monitored "
                f"loss or metric), got shape {jnp.shape(value)}. Reduce it first, "
                "e.g. value=loss.mean()."
            )
        dtype = state.avg_value.dtype
        # Running mean of the values in the current window.
        n = state.count
        n_new = jtree.increment(n)
        avg = (n * state.avg_value + jnp.asarray(value).astype(dtype)) / n_new
        ready = n_new >= self.accumulation_size

        improved = pt.improves(avg, state.best_value, self.mode, rtol=self.rtol,
                               atol=self.atol)
        best_value = jnp.where(improved, avg, state.best_value)
        plateau, exhausted = pt.wait(improved, state.plateau_count, self.patience)
        cooling = state.cooldown_count > 0
        reduce = ~cooling & exhausted
        scale = jnp.where(reduce, state.scale * self.factor, state.scale)
        scale = jnp.maximum(scale, self.min_scale).astype(state.scale.dtype)
        plateau = jnp.where(cooling | reduce, 0, plateau).astype(jnp.int32)
        cooldown = jnp.where(cooling, state.cooldown_count - 1,
                             jnp.where(reduce, self.cooldown, 0)).astype(jnp.int32)

        def pick(new, old):
            return jnp.where(ready, new, old).astype(old.dtype)

        new_state = ReduceOnPlateauState(
            scale=pick(scale, state.scale),
            best_value=pick(best_value, state.best_value),
            plateau_count=pick(plateau, state.plateau_count),
            cooldown_count=pick(cooldown, state.cooldown_count),
            count=jnp.where(ready, 0, n_new).astype(jnp.int32),
            avg_value=jnp.where(ready, 0, avg).astype(dtype),
        )
        s = new_state.scale
        updates = jax.tree.map(lambda g: g * s.astype(jnp.result_type(g)), updates)
        return updates, new_state

    def learning_rate_factors(self, params, state, new_state):
        del params, state
        return [LrFactor("scale", new_state.scale)]  # the scale this update applied


def reduce_on_plateau(factor: ArrayLike = 0.1, patience: ArrayLike = 10,
                      rtol: ArrayLike = 1e-4, atol: ArrayLike = 0.0, cooldown: ArrayLike = 0,
                      accumulation_size: ArrayLike = 1, min_scale: ArrayLike = 0.0, *,
                      mode: str = "min") -> ReduceOnPlateau:
    """Multiplies updates by a scale that drops by ``factor`` when a value plateaus.

    Feed the monitored value (a loss to minimise, or with ``mode="max"`` a metric to
    maximise) to every update: ``tx.update(updates, state, params, value=loss)``.
    Values are averaged over windows of ``accumulation_size`` updates; at the end of
    each window, with ``a`` the window's mean and ``best`` the best mean so far::

        improved = a < best - rtol * |best| - atol           ("min"; mirrored for "max")
        best     = a if improved
        plateau  = 0 if improved else plateau + 1
        if cooldown_count > 0:       cooldown_count -= 1; plateau = 0
        elif plateau >= patience:    scale = max(scale * factor, min_scale);
                                     plateau = 0; cooldown_count = cooldown

    and every update is multiplied by the current ``scale`` (the new one on the
    update that ends a window). Put it after the optimizer in a chain, e.g.
    ``jt.chain(jt.adam(1e-3), jt.reduce_on_plateau(patience=5))``.

    ``optax.contrib.reduce_on_plateau``'s signature, state and numbers for a
    non-negative monitored value; ``mode`` is a jtricks keyword. For a negative
    value optax's ``(1 - rtol) * best`` would count a slightly worse value as an
    improvement; jtricks uses ``|best|`` instead. The improvement rule is
    :mod:`jtricks.patience`'s, shared with early stopping.

    Args:
        factor: multiplies the scale at each reduction, in (0, 1).
        patience: windows without improvement before a reduction, an integer >= 1.
        rtol: the relative improvement that counts, in [0, 1].
        atol: the absolute improvement that counts, >= 0.
        cooldown: windows to wait after a reduction before counting plateaus again,
            an integer >= 0.
        accumulation_size: updates whose values are averaged into one window, an
            integer >= 1 (use more than 1 when feeding noisy mini-batch losses).
        min_scale: the scale never goes below this, in [0, 1].
        mode: ``"min"`` (a loss) or ``"max"`` (an accuracy); static.

    Example:
        >>> tx = jt.chain(jt.adam(1e-3), jt.reduce_on_plateau(patience=5))
        >>> updates, state = tx.update(grads, state, params, value=val_loss)
    """
    where = "reduce_on_plateau"
    pt.check_mode(where, mode, "for a loss")
    hp.check_range(where, "factor", factor, low=0.0, high=1.0, low_open=True,
                   high_open=True, fix="It multiplies the scale at each reduction, "
                   "e.g. 0.1 or 0.5.")
    hp.check_integer(where, "patience", patience, low=1,
                     fix="It is the number of windows without improvement before a "
                     "reduction.")
    hp.check_range(where, "rtol", rtol, low=0.0, high=1.0,
                   fix="It is the relative improvement that counts, e.g. 1e-4.")
    hp.check_nonnegative(where, "atol", atol,
                         fix="It is the absolute improvement that counts, e.g. 1e-3.")
    hp.check_integer(where, "cooldown", cooldown)
    hp.check_integer(where, "accumulation_size", accumulation_size, low=1,
                     fix="Use 1 to act on every value, or the number of steps per "
                     "evaluation.")
    hp.check_range(where, "min_scale", min_scale, low=0.0, high=1.0,
                   fix="It is the smallest scale reductions may reach, e.g. 1e-3.")
    return ReduceOnPlateau(factor=factor, patience=patience, rtol=rtol, atol=atol,
                           cooldown=cooldown, accumulation_size=accumulation_size,
                           min_scale=min_scale, mode=mode)
