"""Wrappers that decide when an inner transform runs: skipping non-finite steps and
gradient accumulation.

Each wrapper keeps its inner transform as a pytree child, so the inner
hyperparameters stay data (a wrapped ``adam(1e-3)`` and ``adam(3e-4)`` share one
compilation). Inner transforms may be jtricks or optax transforms.
"""

from __future__ import annotations

from functools import reduce
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, as_transform

__all__ = [
    "SkipNonfiniteState",
    "SkipNonfinite",
    "skip_nonfinite",
    "AccumulateState",
    "Accumulate",
    "accumulate",
]


# --- skip_nonfinite -----------------------------------------------------------------


class SkipNonfiniteState(NamedTuple):
    """State of :func:`skip_nonfinite`.

    Attributes:
        notfinite_count: int32, consecutive non-finite updates (0 after a finite one).
        last_finite: bool, whether the last update was finite.
        total_notfinite: int32, non-finite updates since ``init``.
        inner_state: the inner transform's state (untouched by skipped updates).
    """

    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: Any


def _all_finite(tree: Any) -> jax.Array:
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return reduce(jnp.logical_and, flags, jnp.asarray(True))


class SkipNonfinite(Transform):
    """Skips updates that hold a NaN or an inf; see :func:`skip_nonfinite`."""

    inner: Transform
    max_consecutive: Any = None

    def init(self, params):
        # A fresh buffer per field: a donated state must not hold one array twice.
        return SkipNonfiniteState(notfinite_count=jnp.zeros([], jnp.int32),
                                  last_finite=jnp.asarray(True),
                                  total_notfinite=jnp.zeros([], jnp.int32),
                                  inner_state=self.inner.init(params))

    def update(self, updates, state, params=None, **extra):
        finite = _all_finite(updates)
        bad = ~finite
        consecutive = jnp.where(finite, 0, jtree.increment(state.notfinite_count))
        apply = finite
        if self.max_consecutive is not None:
            apply = finite | (consecutive > self.max_consecutive)
        new, inner_state = self.inner.update(updates, state.inner_state, params, **extra)
        # Selecting (rather than lax.cond) keeps one straight-line program that XLA
        # fuses; a skipped step returns the old inner state bit for bit.
        new = jax.tree.map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), new)
        inner_state = jax.tree.map(lambda n, o: jnp.where(apply, n, o),
                                   inner_state, state.inner_state)
        return new, SkipNonfiniteState(
            notfinite_count=consecutive.astype(jnp.int32),
            last_finite=finite,
            total_notfinite=jnp.where(bad, jtree.increment(state.total_notfinite),
                                      state.total_notfinite),
            inner_state=inner_state,
        )


def skip_nonfinite(tx: Any, max_consecutive: ArrayLike | None = None) -> SkipNonfinite:
    """Skips every update whose incoming gradient holds a NaN or an inf.

    On a non-finite step the output is all zeros and the inner state is left
    exactly as it was; the step is counted in ``notfinite_count`` (consecutive) and
    ``total_notfinite``. A finite step afterwards updates normally. ::

        finite  = all(isfinite(g))
        n_bad   = 0 if finite else n_bad + 1
        apply   = finite or (max_consecutive is not None and n_bad > max_consecutive)
        u, s    = tx.update(g, s) if apply else (zeros, s)

    With ``max_consecutive=n`` the ``(n + 1)``-th consecutive non-finite step is
    applied anyway, as ``optax.apply_if_finite(tx, n)`` does (so the NaN reaches the
    parameters and training visibly fails instead of silently stalling).

    Args:
        tx: the transform to protect (jtricks or optax).
        max_consecutive: ``None`` (the default) skips every non-finite step; an
            integer ``n >= 0`` gives up after ``n`` consecutive skipped steps.

    Example:
        >>> tx = jt.skip_nonfinite(jt.adam(1e-3))
        >>> state.notfinite_count   # after some steps: how many were skipped in a row
    """
    if max_consecutive is not None:
        hp.check_integer("skip_nonfinite", "max_consecutive", max_consecutive,
                         rule="an integer >= 0 or None",
                         fix="None skips every non-finite step.")
    return SkipNonfinite(inner=as_transform(tx, where="skip_nonfinite"),
                         max_consecutive=max_consecutive)


# --- accumulate ---------------------------------------------------------------------


class AccumulateState(NamedTuple):
    """State of :func:`accumulate`, field for field ``optax.MultiStepsState``.

    Attributes:
        mini_step: int32, gradients averaged into ``acc_grads`` so far (< every_k).
        gradient_step: int32, updates of the inner transform so far.
        inner_opt_state: the inner transform's state.
        acc_grads: the running mean of the current window's gradients (at least
            fp32, as optax's default ``accumulator_dtype``).
        skip_state: ``()`` (optax's slot for a skip rule's state).
    """

    mini_step: jax.Array
    gradient_step: jax.Array
    inner_opt_state: Any
    acc_grads: Any
    skip_state: Any = ()


class Accumulate(Transform):
    """Averages gradients over ``every_k`` calls; see :func:`accumulate`."""

    inner: Transform
    every_k: Any

    def init(self, params):
        acc = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jtree.acc_dtype(p)), params)
        return AccumulateState(mini_step=jnp.zeros([], jnp.int32),
                               gradient_step=jnp.zeros([], jnp.int32),
                               inner_opt_state=self.inner.init(params), acc_grads=acc)

    def update(self, updates, state, params=None, **extra):
        n = state.mini_step
        acc = jtree.map_checked(
            lambda g, a: (a + (g - a) / (n + 1)).astype(a.dtype), updates, state.acc_grads,
            names=("updates", "state.acc_grads"), where="accumulate.update")
        mean = jax.tree.map(lambda a, g: a.astype(jnp.result_type(g)), acc, updates)
        new, inner_state = self.inner.update(mean, state.inner_opt_state, params, **extra)
        emit = n + 1 >= self.every_k
        # The inner update runs every call and is kept only on the k-th (no lax.cond,
        # so the step stays one fused program).
        return (
            jax.tree.map(lambda u: jnp.where(emit, u, jnp.zeros_like(u)), new),
            AccumulateState(
                mini_step=jnp.where(emit, 0, n + 1).astype(jnp.int32),
                gradient_step=jnp.where(emit, jtree.increment(state.gradient_step),
                                        state.gradient_step),
                inner_opt_state=jax.tree.map(
                    lambda new_s, old_s: jnp.where(emit, new_s, old_s).astype(
                        jnp.result_type(old_s)),
                    inner_state, state.inner_opt_state),
                acc_grads=jax.tree.map(lambda a: jnp.where(emit, jnp.zeros_like(a), a), acc),
                skip_state=state.skip_state,
            ),
        )

    def hyperparams_at(self, state):
        return {"inner": self.inner.hyperparams_at(state.inner_opt_state),
                "every_k": self.every_k}

    def learning_rate_factors(self, params, state, new_state):
        return self.inner.learning_rate_factors(params, state.inner_opt_state,
                                                new_state.inner_opt_state)


def accumulate(tx: Any, every_k: ArrayLike) -> Accumulate:
    """Averages gradients over ``every_k`` calls and applies ``tx`` on the last one.

    Calls ``1 .. k-1`` of each window return zero updates; call ``k`` feeds the mean
    of the window's ``k`` gradients to ``tx`` and returns its update, so ``k``
    micro-batches act as one large batch (``optax.MultiSteps(tx, k)``)::

        a <- a + (g - a) / (mini_step + 1)
        u  = tx(a) if mini_step == k - 1 else 0

    Args:
        tx: the transform to apply to the averaged gradients (jtricks or optax).
        every_k: gradients per update, an integer >= 1.

    Example:
        >>> tx = jt.accumulate(jt.adam(1e-3), every_k=4)   # 4 micro-batches per step
    """
    hp.check_integer("accumulate", "every_k", every_k, low=1,
                     fix="It is the number of micro-batches per update, e.g. 4.")
    return Accumulate(inner=as_transform(tx, where="accumulate"), every_k=every_k)
