"""Decoupled weight decay: add ``weight_decay * params`` to the update."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Stateless, static_field

__all__ = ["AddDecayedWeights", "add_decayed_weights"]


class AddDecayedWeights(Stateless):
    """``u -> u + weight_decay * p`` on the leaves the mask selects."""

    weight_decay: Any
    mask: Any = static_field(default=None)

    def update(self, updates, state, params=None, **extra):
        del extra
        hp.require_params("add_decayed_weights.update", params,
                          "weight decay adds weight_decay * params to the update")
        wd = self.weight_decay
        if self.mask is None:
            return jtree.map_checked(lambda g, p: g + wd * p, updates, params,
                                     names=("updates", "params"),
                                     where="add_decayed_weights.update"), state
        mask = jtree.resolve_mask(self.mask, params, where="add_decayed_weights: mask")
        # The mask is static (Python bools), so skipped leaves cost nothing.
        return jtree.map_checked(lambda g, p, m: g + wd * p if m else g,
                                 updates, params, mask, names=("updates", "params", "mask"),
                                 where="add_decayed_weights.update"), state


def add_decayed_weights(weight_decay: ArrayLike = 0.0, mask: Any = None) -> AddDecayedWeights:
    """Adds the parameters, scaled, to the update (decoupled weight decay).

    ::

        u <- g + weight_decay * p        where mask(p) is True
        u <- g                           elsewhere

    Placed before ``scale_by_learning_rate(lr)`` this shrinks every selected weight
    by ``lr * weight_decay * p`` per step (AdamW's decay). ``update`` needs
    ``params``.

    Args:
        weight_decay: the decay rate, >= 0; a number or an array. Not a schedule:
            this transform is stateless (in ``adamw`` the decay is already multiplied
            by the learning rate's schedule).
        mask: ``None`` (decay every leaf), a tree of Python bools shaped like the
            params, or a callable ``params -> such a tree``; ``False`` leaves (e.g.
            biases and norm scales) pass through untouched. Static.

    Example:
        >>> no_bias = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
        >>> tx = jt.chain(jt.add_decayed_weights(1e-4, mask=no_bias), jt.sgd(0.1))
    """
    hp.no_schedule("add_decayed_weights", "weight_decay", weight_decay,
                   fix="Put it before jt.scale_by_learning_rate(schedule) so the decay "
                   "follows the learning rate's schedule (as adamw does), or pass the "
                   "current value as an array (the transform is data: a new value does not "
                   "recompile).")
    hp.check_range("add_decayed_weights", "weight_decay", weight_decay, low=0.0,
                   fix="weight_decay shrinks weights towards 0; typical values are 1e-5 to 1e-2.")
    if mask is not None and not callable(mask):
        # Validate the mask's leaves now (Python bools), not at the first update.
        for m in jax.tree.leaves(mask):
            if not isinstance(m, (bool, np.bool_)):
                raise TypeError(
                    f"add_decayed_weights: mask leaves must be Python bools, got "
                    f"{type(m).__name__} {m!r}. Give a tree of True/False shaped like the "
                    "params, or a callable params -> such a tree."
                )
    return AddDecayedWeights(weight_decay=weight_decay, mask=mask)

