"""Masking and partitioning: an inner transform applied to some leaves only.

Masks and labels choose which leaves are touched; they are structural and live in
the treedef (see :func:`jtricks.tree.resolve_mask` for what a mask may be). Inner
transforms are pytree children, so their hyperparameters stay data, and may be
jtricks or optax transforms.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, NamedTuple

import jax

from jtricks import tree as jtree
from jtricks.base import LrFactor, Transform, as_transform, static_field

__all__ = [
    "MaskedNode",
    "MaskedState",
    "Masked",
    "masked",
    "PartitionState",
    "Partition",
    "partition",
]


class MaskedNode(NamedTuple):
    """Stands in for a leaf hidden from an inner transform (a node with no leaves,
    so ``jax.tree.map`` skips it)."""


def _is_params_placeholder(params: Any) -> bool:
    """Whether ``params`` is the stand-in ``optax.tree.map_params`` inits with.

    map_params finds the params-shaped parts of a state by calling ``init`` on a
    leafless placeholder; a mask cannot be resolved against it, so (as optax's
    ``masked`` does) the placeholder goes to the inner transform unmasked. It is
    recognised by its type, without importing optax (not a runtime dependency).
    """
    kind = type(params)
    return kind.__name__ == "_ParamsPlaceholder" and kind.__module__.startswith("optax")


def _resolve(mask: Any, tree: Any, where: str) -> tuple[Any, Any]:
    """``(prefix, full)``: the mask as given (called first if it is a function), its
    leaves as Python bools, and the same mask resolved to every leaf of ``tree``.

    Hiding uses the prefix, as optax does: a ``False`` over a whole subtree becomes
    one :class:`MaskedNode`, so the inner state nests exactly like optax's.
    """
    if jtree.is_mask_function(mask):
        mask = mask(tree)
    full = jtree.resolve_mask(mask, tree, where=where)  # validates every entry
    return jax.tree.map(bool, mask), full


def _hide(mask: Any, tree: Any) -> Any:
    """``tree`` with each unmasked leaf (or subtree) replaced by a :class:`MaskedNode`."""
    if tree is None:
        return None
    return jax.tree.map(lambda m, x: x if m else MaskedNode(), mask, tree)


def _unhide(mask: Any, new: Any, old: Any) -> Any:
    """Subtrees of ``new`` where ``mask`` is true, of ``old`` elsewhere."""
    return jax.tree.map(lambda m, n, o: n if m else o, mask, new, old)


def _restrict(factor: LrFactor, mask: Any) -> LrFactor:
    """An inner transform's factor, its coverage re-expressed over the full tree."""
    masked_leaves = jax.tree.leaves(mask)
    inner = None if factor.coverage is None else iter(jax.tree.leaves(factor.coverage))
    full = [m and (inner is None or bool(next(inner))) for m in masked_leaves]
    return factor._replace(coverage=jax.tree.structure(mask).unflatten(full))


# --- masked -------------------------------------------------------------------------


class MaskedState(NamedTuple):
    """``inner_state``: the inner transform's state over the masked leaves only."""

    inner_state: Any


class Masked(Transform):
    """Applies ``inner`` to the masked leaves only; see :func:`masked`."""

    inner: Transform
    mask: Any = static_field()
    mask_compatible_extra_args: bool = static_field(default=False)
    name: str = static_field(default="masked")  # the function errors are reported as

    def init(self, params):
        if _is_params_placeholder(params):
            return MaskedState(inner_state=self.inner.init(params))
        mask, _ = _resolve(self.mask, params, f"{self.name}.init")
        return MaskedState(inner_state=self.inner.init(_hide(mask, params)))

    def update(self, updates, state, params=None, **extra):
        mask, _ = _resolve(self.mask, updates, f"{self.name}.update")
        if self.mask_compatible_extra_args:
            structure = jax.tree.structure(updates)
            extra = {k: _hide(mask, v) if jax.tree.structure(v) == structure else v
                     for k, v in extra.items()}
        new, inner_state = self.inner.update(_hide(mask, updates), state.inner_state,
                                             _hide(mask, params), **extra)
        return _unhide(mask, new, updates), MaskedState(inner_state=inner_state)

    def learning_rate_factors(self, params, state, new_state):
        mask, full = _resolve(self.mask, params, "masked")
        inner = self.inner.learning_rate_factors(_hide(mask, params), state.inner_state,
                                                 new_state.inner_state)
        return [_restrict(f, full) for f in inner]


def masked(inner: Any, mask: Any, *, mask_compatible_extra_args: bool = False) -> Masked:
    """Applies ``tx`` only to the leaves where ``mask`` is true; others pass through.

    ::

        u_i -> tx(u)_i   where mask_i
        u_i -> u_i       elsewhere

    The inner transform sees (and keeps state for) the masked leaves only; the
    others are replaced by :class:`MaskedNode` placeholders, as in ``optax.masked``
    (one per subtree a prefix mask leaves out), so the state nests like optax's and
    ``optax.tree.map_params`` maps over it (with extra trees, pass
    ``is_leaf=lambda v: isinstance(v, jt.MaskedNode)`` as optax asks for its own).

    Args:
        inner: the transform to apply (jtricks or optax).
        mask: a tree of Python bools with the params' structure or a prefix of it
            (``{"encoder": False, "head": True}``), or a callable ``params -> such a
            tree`` (a callable pytree such as an equinox module is a tree, not a
            function). It is structural: its values must be known before tracing.
        mask_compatible_extra_args: also mask every extra keyword argument of
            ``update`` that is a tree shaped like the updates (static).

    Example:
        >>> no_bias = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
        >>> tx = jt.chain(jt.masked(jt.add_decayed_weights(1e-4), no_bias), jt.adam(1e-3))
    """
    return Masked(inner=as_transform(inner, where="masked"), mask=mask,
                  mask_compatible_extra_args=bool(mask_compatible_extra_args))


# --- partition ----------------------------------------------------------------------


class PartitionState(NamedTuple):
    """``inner_states``: ``{label: MaskedState}``, one per transform."""

    inner_states: Any


class Partition(Transform):
    """Applies ``transforms[label]`` to the leaves labelled ``label``; see :func:`partition`."""

    transforms: dict
    param_labels: Any = static_field()
    mask_compatible_extra_args: bool = static_field(default=False)

    def _masked(self, where: str, tree: Any) -> dict[Hashable, Masked]:
        """One :class:`Masked` per label, masking that label's leaves."""
        labels = self.param_labels
        labels = labels(tree) if jtree.is_mask_function(labels) else labels
        full = jtree.broadcast_prefix(labels, tree, where=where, what="labels")
        for path, label in jax.tree_util.tree_flatten_with_path(full)[0]:
            if not isinstance(label, Hashable) or label not in self.transforms:
                raise ValueError(
                    f"{where}: the leaf at {jtree.keystr(path)} has label {label!r}, "
                    f"which has no transform; the transforms are for "
                    f"{sorted(map(repr, self.transforms))}. Add a transform for it, "
                    "or fix the labels."
                )
        flag = self.mask_compatible_extra_args
        # Masks follow the labels as given (a prefix stays a prefix), as optax's do.
        return {k: Masked(inner=tx, mask=jax.tree.map(lambda lab, k=k: lab == k, labels),
                          mask_compatible_extra_args=flag)
                for k, tx in self.transforms.items()}

    def init(self, params):
        if _is_params_placeholder(params):  # optax.tree.map_params: see Masked.init
            return PartitionState(inner_states={
                k: MaskedState(inner_state=tx.init(params))
                for k, tx in self.transforms.items()})
        return PartitionState(inner_states={
            k: m.init(params) for k, m in self._masked("partition.init", params).items()})

    def update(self, updates, state, params=None, **extra):
        inner_states = {}
        for k, m in self._masked("partition.update", updates).items():
            updates, inner_states[k] = m.update(updates, state.inner_states[k], params,
                                                **extra)
        return updates, PartitionState(inner_states=inner_states)

    def hyperparams_at(self, state):
        return {str(k): tx.hyperparams_at(state.inner_states[k].inner_state)
                for k, tx in self.transforms.items()}

    def learning_rate_factors(self, params, state, new_state):
        return [f for k, m in self._masked("partition", params).items()
                for f in m.learning_rate_factors(params, state.inner_states[k],
                                                 new_state.inner_states[k])]


def partition(transforms: Mapping[Hashable, Any], param_labels: Any, *,
              mask_compatible_extra_args: bool = False) -> Partition:
    """Applies a different transform to each labelled group of parameters.

    ``param_labels`` gives each leaf a label; leaf ``i`` gets ``transforms[label_i](u)_i``,
    each transform seeing (and keeping state for) its own group only
    (``optax.partition``, formerly ``optax.multi_transform``).

    Args:
        transforms: ``{label: transform}`` (jtricks or optax transforms).
        param_labels: a tree of labels with the params' structure or a prefix of it,
            or a callable ``params -> such a tree``. Every label must be a key of
            ``transforms``. Structural: known before tracing.
        mask_compatible_extra_args: mask extra ``update`` arguments shaped like the
            updates for each group too (static).

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
        param_labels=param_labels,
        mask_compatible_extra_args=bool(mask_compatible_extra_args),
    )
