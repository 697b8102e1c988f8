"""Decoupled weight decay: add ``weight_decay * params`` to the update."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import EmptyState, Transform
from jtricks.transforms.masking import Masked

__all__ = ["WeightDecaySchedule", "AddDecayedWeights", "add_decayed_weights"]


class WeightDecaySchedule(NamedTuple):
    """``count``: the number of updates so far (int32); indexes the decay's schedule."""

    count: jax.Array


class AddDecayedWeights(Transform):
    """``u -> u + weight_decay * p``; see :func:`add_decayed_weights`.

    Its state is optax's: :class:`jtricks.EmptyState` for a constant decay, a
    :class:`WeightDecaySchedule` (the count) for a schedule.
    """

    weight_decay: Any

    def init(self, params):
        if hp.is_schedule(self.weight_decay):
            return WeightDecaySchedule(count=jtree.scalar(0, jnp.int32, params))
        return EmptyState()

    def update(self, updates, state, params=None, **extra):
        del extra
        hp.require_params("add_decayed_weights.update", params,
                          "weight decay adds weight_decay * params to the update")
        count = hp.count_of(state)
        wd = hp.value_at(self.weight_decay, count)
        if count is not None:
            state = WeightDecaySchedule(count=jtree.increment(count))

        def leaf(g, p):
            if g is None:  # a leaf the caller does not update (optax's rule)
                return None
            if hp.is_schedule(self.weight_decay):
                return g + jnp.asarray(wd, jnp.result_type(g)) * p
            return g + wd * p

        return jtree.map_with_path(lambda _, g, p: leaf(g, p), updates, params,
                                   names=("updates", "params"), is_leaf=lambda x: x is None,
                                   where="add_decayed_weights.update"), state


def add_decayed_weights(weight_decay: Any = 0.0, mask: Any = None) -> Transform:
    """Adds the parameters, scaled, to the update (decoupled weight decay).

    ::

        u <- g + weight_decay(k) * p        where mask(p) is True
        u <- g                              elsewhere

    Placed before ``scale_by_learning_rate(lr)`` this shrinks every selected weight
    by ``lr * weight_decay * p`` per step (AdamW's decay). ``update`` needs
    ``params``; a ``None`` update stays ``None``. With a mask this is
    ``masked(add_decayed_weights(weight_decay), mask)``, as in optax (so the state
    nests the same way).

    Args:
        weight_decay: the decay rate, >= 0; a number, an array or a schedule (update
            ``k`` uses ``weight_decay(k)``; the state then keeps a count).
        mask: ``None`` (decay every leaf), a tree of Python bools shaped like the
            params (or a prefix of it), or a callable ``params -> such a tree``;
            ``False`` leaves (e.g. biases and norm scales) pass through untouched.
            Static.

    Example:
        >>> no_bias = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
        >>> tx = jt.chain(jt.add_decayed_weights(1e-4, mask=no_bias), jt.sgd(0.1))
    """
    hp.check_range("add_decayed_weights", "weight_decay", weight_decay, low=0.0,
                   fix="weight_decay shrinks weights towards 0; typical values are 1e-5 to 1e-2.")
    tx = AddDecayedWeights(weight_decay=hp.as_hyper(weight_decay))
    if mask is None:
        return tx
    if not jtree.is_mask_function(mask):
        # Validate the mask's leaves now (Python bools), not at the first update.
        for m in jax.tree.leaves(mask):
            if not isinstance(m, (bool, np.bool_)):
                raise TypeError(
                    f"add_decayed_weights: mask leaves must be Python bools, got "
                    f"{type(m).__name__} {m!r}. Give a tree of True/False shaped like the "
                    "params, or a callable params -> such a tree."
                )
    return Masked(inner=tx, mask=mask, name="add_decayed_weights")
