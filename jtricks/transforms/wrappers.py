"""Transforms that wrap other transforms: masking, partitioning, skipping non-finite
steps and gradient accumulation.

Each wrapper keeps its inner transform(s) as pytree children, so the inner
hyperparameters stay data (a wrapped ``adam(1e-3)`` and ``adam(3e-4)`` share one
compilation). Masks and labels choose which leaves are touched; they are structural
and live in the treedef. Inner transforms may be jtricks or optax transforms.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from functools import reduce
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, as_transform, static_field

__all__ = [
    "MaskedNode",
    "MaskedState",
    "Masked",
    "masked",
    "PartitionState",
    "Partition",
    "partition",
    "SkipNonfiniteState",
    "SkipNonfinite",
    "skip_nonfinite",
    "AccumulateState",
    "Accumulate",
    "accumulate",
]


# --- masks and labels ---------------------------------------------------------------


class MaskedNode(NamedTuple):
    """Stands in for a leaf hidden from an inner transform (a node with no leaves,
    so ``jax.tree.map`` skips it)."""


def _broadcast_prefix(where: str, what: str, prefix: Any, tree: Any) -> Any:
    """Expands ``prefix`` (a tree whose leaves may stand for whole subtrees of
    ``tree``) to a tree with exactly ``tree``'s structure."""
    try:
        return jax.tree.map(lambda value, sub: jax.tree.map(lambda _: value, sub),
                            prefix, tree)
    except (ValueError, TypeError):
        raise ValueError(
            f"{where}: the {what} tree must have the structure of the params tree "
            f"(or be a prefix of it): {jtree.first_difference(tree, prefix)}. Give a "
            f"{what} tree shaped like the params, or a callable params -> such a tree."
        ) from None


def _resolve_mask(where: str, mask: Any, tree: Any) -> Any:
    """A tree of Python bools with ``tree``'s structure."""
    full = _broadcast_prefix(where, "mask", mask(tree) if callable(mask) else mask, tree)
    return jtree.resolve_mask(full, tree, where=where)


def _hide(mask: Any, tree: Any) -> Any:
    """``tree`` with each unmasked leaf replaced by a :class:`MaskedNode`."""
    if tree is None:
        return None
    return jax.tree.map(lambda m, x: x if m else MaskedNode(), mask, tree)


def _unhide(mask: Any, new: Any, old: Any) -> Any:
    """Leaves of ``new`` where ``mask`` is true, of ``old`` elsewhere."""
    return jax.tree.map(lambda m, n, o: n if m else o, mask, new, old)


# --- masked -------------------------------------------------------------------------


class MaskedState(NamedTuple):
    """``inner_state``: the inner transform's state over the masked leaves only."""

    inner_state: Any


class Masked(Transform):
    """Applies ``inner`` to the masked leaves only; see :func:`masked`."""

    inner: Transform
    mask: Any = static_field()

    def init(self, params):
        mask = _resolve_mask("masked.init", self.mask, params)
        return MaskedState(inner_state=self.inner.init(_hide(mask, params)))

    def update(self, updates, state, params=None, **extra):
        mask = _resolve_mask("masked.update", self.mask, updates)
        new, inner_state = self.inner.update(_hide(mask, updates), state.inner_state,
                                             _hide(mask, params), **extra)
        return _unhide(mask, new, updates), MaskedState(inner_state=inner_state)


def masked(tx: Any, mask: Any) -> Masked:
    """Applies ``tx`` only to the leaves where ``mask`` is true; others pass through.

    ::

        u_i -> tx(u)_i   where mask_i
        u_i -> u_i       elsewhere

    The inner transform sees (and keeps state for) the masked leaves only; the
    others are replaced by :class:`MaskedNode` placeholders, as in ``optax.masked``.

    Args:
        tx: the transform to apply (jtricks or optax).
        mask: a tree of Python bools with the params' structure or a prefix of it
            (``{"encoder": False, "head": True}``), or a callable ``params -> such a
            tree``. It is structural: its values must be known before tracing.

    Example:
        >>> no_bias = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
        >>> tx = jt.chain(jt.masked(jt.add_decayed_weights(1e-4), no_bias), jt.adam(1e-3))
    """
    return Masked(inner=as_transform(tx, where="masked"), mask=mask)


# --- partition ----------------------------------------------------------------------


class PartitionState(NamedTuple):
    """``inner_states``: ``{label: MaskedState}``, one per transform."""

    inner_states: Any


class Partition(Transform):
    """Applies ``transforms[label]`` to the leaves labelled ``label``; see :func:`partition`."""

    transforms: dict
    labels: Any = static_field()

    def _masks(self, where: str, tree: Any) -> dict:
        labels = self.labels(tree) if callable(self.labels) else self.labels
        full = _broadcast_prefix(where, "labels", labels, tree)
        for path, label in jax.tree_util.tree_flatten_with_path(full)[0]:
            if not isinstance(label, Hashable) or label not in self.transforms:
                raise ValueError(
                    f"{where}: the leaf at {jtree.keystr(path)} has label {label!r}, "
                    f"which has no transform; the transforms are for "
                    f"{sorted(map(repr, self.transforms))}. Add a transform for it, "
                    "or fix the labels."
                )
        return {k: jax.tree.map(lambda lab, k=k: lab == k, full) for k in self.transforms}

    def init(self, params):
        masks = self._masks("partition.init", params)
        return PartitionState(inner_states={
            k: Masked(inner=tx, mask=masks[k]).init(params)
            for k, tx in self.transforms.items()
        })

    def update(self, updates, state, params=None, **extra):
        masks = self._masks("partition.update", updates)
        inner_states = {}
        for k, tx in self.transforms.items():
            updates, inner_states[k] = Masked(inner=tx, mask=masks[k]).update(
                updates, state.inner_states[k], params, **extra)
        return updates, PartitionState(inner_states=inner_states)


def partition(transforms: Mapping[Hashable, Any], labels: Any) -> Partition:
    """Applies a different transform to each labelled group of parameters.

    ``labels`` gives each leaf a label; leaf ``i`` gets ``transforms[label_i](u)_i``,
    each transform seeing (and keeping state for) its own group only
    (``optax.partition``, formerly ``optax.multi_transform``).

    Args:
        transforms: ``{label: transform}`` (jtricks or optax transforms).
        labels: a tree of labels with the params' structure or a prefix of it, or a
            callable ``params -> such a tree``. Every label must be a key of
            ``transforms``. Structural: known before tracing.

    Example:
        >>> labels = {"backbone": "frozen", "head": "train"}
        >>> tx = jt.partition({"train": jt.adam(1e-3), "frozen": jt.scale(0.0)}, labels)
    """
    if not isinstance(transforms, Mapping) or not transforms:
        raise TypeError(
            f"partition: transforms must be a non-empty dict {{label: transform}}, got "
            f"{type(transforms).__name__}: {transforms!r}."
        )
    return Partition(
        transforms={k: as_transform(t, where=f"partition[{k!r}]")
                    for k, t in transforms.items()},
        labels=labels,
    )


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
        hp.check("skip_nonfinite", "max_consecutive", max_consecutive,
                 lambda x: (x >= 0) & (x == np.floor(x)), "an integer >= 0 or None",
                 "None skips every non-finite step.")
    return SkipNonfinite(inner=as_transform(tx, where="skip_nonfinite"),
                         max_consecutive=max_consecutive)


# --- accumulate ---------------------------------------------------------------------


class AccumulateState(NamedTuple):
    """State of :func:`accumulate`.

    Attributes:
        mini_step: int32, gradients averaged into ``acc_grads`` so far (< every_k).
        gradient_step: int32, updates of the inner transform so far.
        acc_grads: the running mean of the current window's gradients (at least
            fp32).
        inner_state: the inner transform's state.
    """

    mini_step: jax.Array
    gradient_step: jax.Array
    acc_grads: Any
    inner_state: Any


def _acc_dtype(x: Any) -> Any:
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


class Accumulate(Transform):
    """Averages gradients over ``every_k`` calls; see :func:`accumulate`."""

    inner: Transform
    every_k: Any

    def init(self, params):
        acc = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), _acc_dtype(p)), params)
        return AccumulateState(mini_step=jnp.zeros([], jnp.int32),
                               gradient_step=jnp.zeros([], jnp.int32), acc_grads=acc,
                               inner_state=self.inner.init(params))

    def update(self, updates, state, params=None, **extra):
        n = state.mini_step
        acc = jtree.map_checked(
            lambda g, a: (a + (g - a) / (n + 1)).astype(a.dtype), updates, state.acc_grads,
            names=("updates", "state.acc_grads"), where="accumulate.update")
        mean = jax.tree.map(lambda a, g: a.astype(jnp.result_type(g)), acc, updates)
        new, inner_state = self.inner.update(mean, state.inner_state, params, **extra)
        emit = n + 1 >= self.every_k
        # The inner update runs every call and is kept only on the k-th (no lax.cond,
        # so the step stays one fused program).
        return (
            jax.tree.map(lambda u: jnp.where(emit, u, jnp.zeros_like(u)), new),
            AccumulateState(
                mini_step=jnp.where(emit, 0, n + 1).astype(jnp.int32),
                gradient_step=jnp.where(emit, jtree.increment(state.gradient_step),
                                        state.gradient_step),
                acc_grads=jax.tree.map(lambda a: jnp.where(emit, jnp.zeros_like(a), a), acc),
                inner_state=jax.tree.map(
                    lambda new_s, old_s: jnp.where(emit, new_s, old_s).astype(
                        jnp.result_type(old_s)),
                    inner_state, state.inner_state),
            ),
        )


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
    hp.check("accumulate", "every_k", every_k, lambda x: (x >= 1) & (x == np.floor(x)),
             "an integer >= 1", "It is the number of micro-batches per update, e.g. 4.")
    return Accumulate(inner=as_transform(tx, where="accumulate"), every_k=every_k)
