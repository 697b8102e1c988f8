"""Freezing parameters and naming the links of a chain: optax's ``freeze``,
``selective_transform`` and ``named_chain``."""

from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp

from jtricks.base import Stateless, Transform, as_transform, static_field
from jtricks.transforms.masking import Masked, Partition, partition

__all__ = [
    "set_to_zero","SetToZero", "freeze", "selective_transform", "NamedChain", "named_chain"]


class SetToZero(Stateless):
    """Replaces every update by zeros (optax's ``set_to_zero``)."""

    def update(self, updates, state, params=None, **extra):
        del params, extra
        return jax.tree.map(jnp.zeros_like, updates), state


def set_to_zero() -> SetToZero:
    """Every update becomes zeros (``optax.set_to_zero``): the parameters stay put.

    Example:
        >>> tx = jt.partition({"train": jt.adam(1e-3), "frozen": jt.set_to_zero()}, labels)
    """
    return SetToZero()


def freeze(mask: Any) -> Masked:
    """Zeroes the updates of the parameters where ``mask`` is true (they stay
    where they are); the others pass through::

        u_i -> 0     where mask_i
        u_i -> u_i   elsewhere

    It is ``masked(set_to_zero(), mask)``, so its state is optax's ``MaskedState``.

    Args:
        mask: a bool (every leaf), a tree of bools with the params' structure or a
            prefix of it, or a callable ``params -> such a tree``.

    Example:
        >>> tx = jt.chain(freeze({"encoder": True, "head": False}), jt.adam(1e-3))
    """
    return Masked(inner=SetToZero(), mask=mask, name="freeze")


def selective_transform(optimizer: Any, *, freeze_mask: Any) -> Partition:
    """Runs ``optimizer`` on the parameters where ``freeze_mask`` is false and
    zeroes the updates of the others (which keep no optimizer state)::

        u_i -> 0                where freeze_mask_i
        u_i -> optimizer(u)_i   elsewhere

    It is ``partition({"train": optimizer, "freeze": set_to_zero()}, labels)``, so
    its state is optax's ``PartitionState``.

    Args:
        optimizer: the transform for the trainable parameters (jtricks or optax).
        freeze_mask: a tree of bools with the params' structure (true = frozen).

    Example:
        >>> tx = selective_transform(jt.adam(1e-3), freeze_mask={"w": True, "b": False})
    """
    labels = jax.tree.map(lambda m: "freeze" if m else "train", freeze_mask)
    return partition({"train": optimizer, "freeze": SetToZero()}, labels)


class NamedChain(Transform):
    """A chain whose state is ``{name: state}``; see :func:`named_chain`."""

    transforms: tuple[Transform, ...]
    names: tuple[str, ...] = static_field()

    def init(self, params):
        return collections.OrderedDict(
            (name, t.init(params)) for name, t in zip(self.names, self.transforms))

    def update(self, updates, state, params=None, **extra):
        new = collections.OrderedDict()
        for name, t in zip(self.names, self.transforms):
            updates, new[name] = t.update(updates, state[name], params, **extra)
        return updates, new

    def hyperparams_at(self, state):
        return {name: t.hyperparams_at(state[name])
                for name, t in zip(self.names, self.transforms)}

    def learning_rate_factors(self, params, state, new_state):
        return [f for name, t in zip(self.names, self.transforms)
                for f in t.learning_rate_factors(params, state[name], new_state[name])]


def named_chain(*args: tuple[str, Any]) -> NamedChain:
    """Applies the transforms in order, like ``chain``, with the state a dict
    keyed by the names given (``state["clip"]``, ``state["adam"]``)::

        u -> t_n(...t_1(u))      state = {name_i: state_i}

    Args:
        *args: ``(name, transform)`` pairs; names must be unique.

    Example:
        >>> tx = named_chain(("clip", jt.clip_by_global_norm(1.0)), ("adam", jt.adam(1e-3)))
    """
    names = []
    for pair in args:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
            raise TypeError(f"named_chain: each argument must be a (name, transform) pair, "
                            f"got {pair!r}.")
        names.append(pair[0])
    if len(set(names)) != len(names):
        raise ValueError(f"named_chain: names must be unique, got {names}. "
                         "Give each transform its own name.")
    return NamedChain(transforms=tuple(as_transform(t, where="named_chain")
                                       for _, t in args), names=tuple(names))
