"""Momentum: a decaying trace of past updates (heavy ball and Nesterov)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field

__all__ = ["TraceState", "Trace", "trace"]


class TraceState(NamedTuple):
    """``trace``: the velocity, shaped like params (optax's ``TraceState``)."""

    trace: Any


class Trace(Transform):
    """A decaying sum of past updates; see :func:`trace`."""

    decay: Any
    nesterov: bool = static_field(default=False)
    accumulator_dtype: Any = static_field(default=None)

    def init(self, params):
        hp.check_float_params("trace", params)
        state = TraceState(trace=jtree.zeros_like(params, self.accumulator_dtype))
        return hp.with_count(self, state)  # a count only for a scheduled decay

    def update(self, updates, state, params=None, **extra):
        del params, extra
        count, inner = hp.split_count(state)
        decay = hp.value_at(self.decay, count)
        nesterov = self.nesterov

        def leaf(g, t):
            # One fused pass. The update uses the trace at full (promoted) precision;
            # the stored trace keeps its dtype so the state is scan-stable.
            new = g + decay * t
            return (g + decay * new if nesterov else new), new.astype(t.dtype)

        out = jtree.map_checked(leaf, updates, inner.trace,
                                names=("updates", "state.trace"), where="trace.update")
        u, new_trace = jtree.unzip2(updates, out)
        return u, hp.next_count(state, TraceState(trace=new_trace))


def trace(decay: Any, nesterov: bool = False, accumulator_dtype: Any = None) -> Trace:
    """Accumulates a momentum trace of the incoming updates ``g`` (optax's ``trace``).

    ::

        t <- g + decay * t
        u <- t                   (heavy ball)
        u <- g + decay * t       (nesterov=True, with the new t)

    Followed by ``scale_by_learning_rate(lr)``, a constant rate gives the lesson's
    momentum ``v <- decay * v - lr * g; w <- w + v`` with ``v = -lr * t``.

    Args:
        decay: the momentum coefficient, in [0, 1] (1 sums every past update); a
            float, an array or a schedule (update ``k`` uses ``decay(k)``; the state
            then also keeps a count, see :class:`jtricks.hyperparams.ScheduleCountState`).
        nesterov: use Nesterov's look-ahead form (static).
        accumulator_dtype: dtype of the stored trace (e.g. ``jnp.float32`` for bf16
            params); ``None`` keeps the params' dtype. Static.

    Example:
        >>> tx = jt.chain(jt.trace(0.9), jt.scale_by_learning_rate(0.1))
    """
    hp.check_range("trace", "decay", decay, low=0.0, high=1.0,
                   fix="decay is the momentum coefficient; typical values are 0.9-0.99 "
                   "(1 keeps an undecayed sum).")
    return Trace(decay=hp.as_hyper(decay), nesterov=bool(nesterov),
                 accumulator_dtype=None if accumulator_dtype is None
                 else jnp.dtype(accumulator_dtype))
