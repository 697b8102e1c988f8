"""Wrappers that run an inner transform only when a condition holds: optax's
``apply_if_finite``, ``conditionally_transform`` and ``conditionally_mask``.

Each keeps its inner transform as a pytree child (its hyperparameters stay data)
and selects between the inner result and the pass-through with ``jnp.where``, so a
step stays one straight-line program; a step the condition rejects leaves the
inner state exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, as_transform, static_field
from jtricks.transforms.wrappers import SkipNonfinite, SkipNonfiniteState

__all__ = [
    "ApplyIfFiniteState",
    "ApplyIfFinite",
    "apply_if_finite",
    "ConditionallyTransformState",
    "ConditionallyMaskState",
    "Conditional",
    "conditionally_transform",
    "conditionally_mask",
]


# --- apply_if_finite ----------------------------------------------------------------


class ApplyIfFiniteState(SkipNonfiniteState):
    """State of :func:`apply_if_finite`: the fields of
    :class:`~jtricks.transforms.wrappers.SkipNonfiniteState` under optax's name."""

    __slots__ = ()


class ApplyIfFinite(SkipNonfinite):
    """:class:`~jtricks.transforms.wrappers.SkipNonfinite` under optax's state name."""

    def init(self, params):
        return ApplyIfFiniteState(*super().init(params))

    def update(self, updates, state, params=None, **extra):
        updates, state = super().update(updates, state, params, **extra)
        return updates, ApplyIfFiniteState(*state)


def apply_if_finite(inner: Any, max_consecutive_errors: int) -> ApplyIfFinite:
    """Skips updates whose gradient holds a NaN or an inf, up to
    ``max_consecutive_errors`` in a row (``jt.skip_nonfinite`` with optax's name)::

        finite = all(isfinite(g))
        n_bad  = 0 if finite else n_bad + 1
        u, s   = inner(g, s) if finite or n_bad > max_consecutive_errors else (0, s)

    After ``max_consecutive_errors`` skipped steps in a row the next non-finite
    update is applied, so a run that keeps producing NaNs fails visibly.

    Args:
        inner: the transform to protect (jtricks or optax).
        max_consecutive_errors: an integer >= 0.

    Example:
        >>> tx = apply_if_finite(jt.adam(1e-3), max_consecutive_errors=5)
    """
    hp.check_integer("apply_if_finite", "max_consecutive_errors", max_consecutive_errors,
                     fix="It is how many non-finite steps in a row are skipped, e.g. 5.")
    return ApplyIfFinite(inner=as_transform(inner, where="apply_if_finite"),
                         max_consecutive=max_consecutive_errors)


# --- conditionally_transform / conditionally_mask -----------------------------------


class ConditionallyTransformState(NamedTuple):
    """State of :func:`conditionally_transform`: ``inner_state`` and ``step`` (int32,
    updates so far, whether applied or not)."""

    inner_state: Any
    step: jax.Array


class ConditionallyMaskState(NamedTuple):
    """State of :func:`conditionally_mask`: ``step`` (int32, updates so far) and
    ``inner_state``."""

    step: jax.Array
    inner_state: Any


def _select(flag, new, old):
    return jax.tree.map(lambda n, o: jnp.where(flag, n, o).astype(jnp.result_type(o)),
                        new, old)


class Conditional(Transform):
    """Runs ``inner`` when ``should_transform_fn(step)``; else passes the updates
    through (``zero=False``) or zeroes them (``zero=True``)."""

    inner: Transform
    should_transform_fn: Callable = static_field()
    forward_extra_args: bool = static_field(default=False)
    zero: bool = static_field(default=False)

    def _state(self, step, inner_state):
        if self.zero:
            return ConditionallyMaskState(step=step, inner_state=inner_state)
        return ConditionallyTransformState(inner_state=inner_state, step=step)

    def init(self, params):
        return self._state(jtree.scalar(0, jnp.int32, params), self.inner.init(params))

    def update(self, updates, state, params=None, **extra):
        kwargs = extra if self.forward_extra_args else {}
        flag = jnp.asarray(self.should_transform_fn(state.step, **kwargs), bool)
        new, inner_state = self.inner.update(updates, state.inner_state, params, **extra)
        rejected = jax.tree.map(jnp.zeros_like, updates) if self.zero else updates
        return (_select(flag, new, rejected),
                self._state(jtree.increment(state.step),
                            _select(flag, inner_state, state.inner_state)))


def _condition(where: str, inner: Any, fn: Any, forward: Any, zero: bool) -> Conditional:
    if not callable(fn):
        raise TypeError(f"{where}: should_transform_fn must be a function step -> bool, got "
                        f"{type(fn).__name__}: {fn!r}.")
    return Conditional(inner=as_transform(inner, where=where), should_transform_fn=fn,
                       forward_extra_args=bool(forward), zero=zero)


def conditionally_transform(inner: Any, should_transform_fn: Callable[..., Any],
                            forward_extra_args: bool = False) -> Conditional:
    """Applies ``inner`` only on the steps ``should_transform_fn`` picks; on the
    others the updates and the inner state pass through unchanged::

        u, s = inner(u, s) if should_transform_fn(step) else (u, s)
        step <- step + 1

    Args:
        inner: the transform (jtricks or optax).
        should_transform_fn: ``step -> bool`` (``step`` a 0-d int32 array, the
            number of earlier updates); with ``forward_extra_args`` it also gets
            the extra keyword arguments of ``update``.
        forward_extra_args: pass ``update``'s extra arguments to the function.

    Example:
        >>> tx = conditionally_transform(jt.add_decayed_weights(1e-4),
        ...                              lambda step: step >= 1000)
    """
    return _condition("conditionally_transform", inner, should_transform_fn,
                      forward_extra_args, zero=False)


def conditionally_mask(inner: Any, should_transform_fn: Callable[..., Any],
                       forward_extra_args: bool = False) -> Conditional:
    """Applies ``inner`` only on the steps ``should_transform_fn`` picks; on the
    others the update is zero and the inner state is unchanged::

        u, s = inner(u, s) if should_transform_fn(step) else (0, s)
        step <- step + 1

    Args:
        inner: the transform (jtricks or optax).
        should_transform_fn: ``step -> bool`` (``step`` a 0-d int32 array); with
            ``forward_extra_args`` it also gets ``update``'s extra arguments.
        forward_extra_args: pass ``update``'s extra arguments to the function.

    Example:
        >>> tx = conditionally_mask(jt.adam(1e-3), lambda step: step % 2 == 0)
    """
    return _condition("conditionally_mask", inner, should_transform_fn,
                      forward_extra_args, zero=True)
