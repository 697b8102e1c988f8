"""flax adapters that keep a transform's hyperparameters as data.

``flax.nnx.Optimizer`` and linen's ``flax.training.train_state.TrainState`` hold the
optimizer as a static attribute, which is right for optax's closures but throws away
what a jtricks transform offers: nnx refuses an array learning rate, and a jitted
step recompiles for every new learning rate. The two classes here are drop-ins for
them with the transform kept as data:

- :class:`Optimizer` is ``nnx.Optimizer(model, tx, wrt=...)``; the transform's numbers
  are :class:`Hyperparam` variables, so ``nnx.jit`` traces them.
- :class:`TrainState` is linen's ``TrainState`` with ``tx`` a pytree field, so
  ``jax.jit`` and ``jax.vmap`` see its numbers.

Both give flax's numbers with the optax twin of the transform, and their checkpoints
cross with flax's: the optimizer state is optax-shaped (``opt_state`` and ``step`` as
flax keeps them), and the transform itself is configuration, not checkpoint state.

flax is an optional dependency: ``import jtricks.flax`` needs it installed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:
    from flax import nnx, serialization, struct
    from flax.nnx.training.optimizer import OptState, to_opt_state
    from flax.training import train_state
except ImportError as error:  # pragma: no cover - exercised only without flax
    raise ImportError(
        "jtricks.flax needs flax (the nnx Optimizer and linen TrainState adapters), "
        f"which could not be imported: {error}. Install it with `pip install flax`; "
        "the rest of jtricks works without it."
    ) from error

from jtricks.base import Transform, apply_updates, as_transform

__all__ = ["Hyperparam", "Optimizer", "TrainState"]


# --- nnx ----------------------------------------------------------------------------


class Hyperparam(nnx.Variable):
    """A number of the transform an :class:`Optimizer` holds (a learning rate, a
    beta, a schedule's constant). It is an nnx ``Variable``, so ``nnx.jit`` traces it
    and a new value reuses the compiled step; it is not an ``OptState``, so the
    optimizer's ``nnx.state(opt, nnx.optimizer.OptState)`` is exactly flax's."""


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, complex, np.ndarray, np.generic, jax.Array))


def _as_variables(tx: Transform) -> Transform:
    # jnp.asarray keeps a Python float weakly typed, so bf16 state stays bf16.
    return jax.tree.map(lambda x: Hyperparam(jnp.asarray(x)) if _is_number(x) else x, tx)


class Optimizer(nnx.Optimizer):
    """``nnx.Optimizer`` with the transform as data.

    Same constructor, ``update`` and state as flax's; ``tx`` holds the transform
    with each number as a :class:`Hyperparam` variable, so an array learning rate
    is accepted, an ``nnx.jit`` step compiles once for any learning rate, and
    ``jax.vmap`` can sweep one. ``opt_state`` and ``step`` are flax's (an optax
    checkpoint of ``nnx.state(opt, nnx.optimizer.OptState)`` restores into it).
    ::

        updates, opt_state = tx.update(grads, opt_state, params, **kwargs)
        params             = params + updates;   step = step + 1

    Args:
        model: the nnx module whose variables are optimized.
        tx: a jtricks transform (an optax one works too, its numbers staying in its
            closures).
        wrt: the filter of the variables to optimize, as for ``nnx.grad`` (e.g.
            ``nnx.Param``).
        graph: nnx's graph mode (``None``: the current ``nnx.set_graph_mode``).

    Example:
        >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
        >>> opt = jtricks.flax.Optimizer(model, jt.adam(1e-3), wrt=nnx.Param)
        >>> grads = nnx.grad(lambda m: (m(x) ** 2).mean())(model)
        >>> updates = opt.update(model, grads)
    """

    def __init__(self, model: Any, tx: Any, *, wrt: Any, graph: bool | None = None):
        tx = as_transform(tx, where="jtricks.flax.Optimizer")
        self.graph = graph
        self.step = OptState(jnp.array(0, dtype=jnp.uint32))
        self.tx = nnx.data(_as_variables(tx))
        self.opt_state = nnx.data(to_opt_state(tx.init(nnx.state(model, wrt, graph=graph))))
        self.wrt = wrt

    @property
    def transform(self) -> Transform:
        """The transform with its current numbers (arrays, not variables)."""
        return nnx.as_pure(self.tx)

    def update(self, model: Any, grads: Any, /, **kwargs: Any) -> Any:
        """Applies one update to ``model``'s ``wrt`` variables; returns the updates.

        Args:
            model: the module given at construction.
            grads: its gradients, e.g. from ``nnx.grad``.
            **kwargs: extra arguments of the transform's ``update`` (``value=loss``).
        """
        params = nnx.as_pure(nnx.state(model, self.wrt, graph=self.graph))
        grads = nnx.as_pure(nnx.state(grads, self.wrt, graph=self.graph))
        updates, opt_state = self.transform.update(
            grads, nnx.as_pure(self.opt_state), params, **nnx.as_pure(kwargs))
        nnx.update(model, apply_updates(params, updates))
        nnx.update(self.opt_state, nnx.state(opt_state, graph=self.graph))
        self.step[...] += 1
        return updates


# --- linen --------------------------------------------------------------------------


class TrainState(train_state.TrainState):
    """linen's ``TrainState`` with ``tx`` a pytree field instead of a static one.

    ``TrainState.create(apply_fn=..., params=..., tx=...)`` and
    ``state.apply_gradients(grads=...)`` are flax's; since ``tx`` is data, a jitted
    step taking the state compiles once for any learning rate and ``jax.vmap`` over
    a state sweeps one. ``flax.serialization`` writes and reads ``step``, ``params``
    and ``opt_state`` only, exactly as for flax's class (``tx`` is configuration), so
    checkpoints cross both ways with an optax ``TrainState``.
    ::

        updates, opt_state = tx.update(grads, opt_state, params)
        params             = params + updates;   step = step + 1

    Example:
        >>> state = jtricks.flax.TrainState.create(apply_fn=model.apply,
        ...                                        params=variables["params"],
        ...                                        tx=jt.adam(1e-3))
        >>> state = state.apply_gradients(grads=grads)
    """

    tx: Any = struct.field(pytree_node=True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register_serialization(cls)  # subclasses (extra fields) keep flax's layout

    @classmethod
    def create(cls, *, apply_fn: Any, params: Any, tx: Any, **kwargs: Any) -> TrainState:
        """A state at ``step=0`` with ``opt_state = tx.init(params)`` (flax's)."""
        tx = as_transform(tx, where="jtricks.flax.TrainState.create")
        return super().create(apply_fn=apply_fn, params=params, tx=tx, **kwargs)


def _saved_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)
            if f.metadata.get("pytree_node", True) and f.name != "tx"]


def _to_state_dict(state: TrainState) -> dict:
    return {name: serialization.to_state_dict(getattr(state, name))
            for name in _saved_fields(type(state))}


def _from_state_dict(state: TrainState, saved: dict) -> TrainState:
    names = _saved_fields(type(state))
    missing = [n for n in names if n not in saved]
    unknown = [k for k in saved if k not in names]
    if missing or unknown:
        raise ValueError(
            f"jtricks.flax.TrainState: the state dict does not match {type(state).__name__} "
            f"at {serialization.current_path() or 'the root'}: missing {missing}, unknown "
            f"{unknown}. It restores what flax's TrainState saves ({names}); the "
            "transform comes from the state you restore into."
        )
    return state.replace(**{n: serialization.from_state_dict(getattr(state, n), saved[n],
                                                             name=n) for n in names})


def _register_serialization(cls: type) -> None:
    serialization.register_serialization_state(cls, _to_state_dict, _from_state_dict,
                                               override=True)


_register_serialization(TrainState)
