"""The transform protocol: hyperparameters are pytree leaves, logic is static.

A :class:`Transform` is a frozen dataclass registered as a pytree. Its fields are
its hyperparameters (the pytree children, so they may be floats, arrays, tracers or
schedules) unless declared with :func:`static_field` (structural options such as
``nesterov`` or a mask, kept in the treedef). ``init`` and ``update`` are methods,
so their identity is the class's: a jitted step that takes the transform as an
argument compiles once per *structure*, not once per learning rate.

The protocol is optax's::

    state = tx.init(params)
    updates, state = tx.update(grads, state, params, **extra)
    params = jt.apply_updates(params, updates)

and a transform unpacks as ``init, update = tx`` so ``optax.chain`` accepts it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import tree as jtree
from jtricks.struct import Struct, static_field

PyTree = Any
Params = PyTree
Updates = PyTree
OptState = PyTree

__all__ = [
    "Struct",
    "static_field",
    "Schedule",
    "FunctionSchedule",
    "is_schedule",
    "count_of",
    "value_at",
    "Transform",
    "LrFactor",
    "EmptyState",
    "Stateless",
    "Chain",
    "chain",
    "Identity",
    "identity",
    "Foreign",
    "as_transform",
    "apply_updates",
]


class Schedule(Struct):
    """Base class of schedules: ``schedule(count) -> value`` for the 0-based update count.

    The schedules themselves live in :mod:`jtricks.schedules`; the base is here because
    every hyperparameter may be one, so the protocol needs to recognise it.

    ``a * b`` (two schedules) and ``2.0 * a`` (a number and a schedule) build the
    product schedule :class:`jtricks.schedules.Product`.
    """

    # Set by jtricks.schedules.compose on import (it imports this module, so the
    # product cannot be imported here): ``(a, b) -> a * b`` or NotImplemented.
    _product = None
    # NumPy scalars and arrays defer ``np.float32(2) * schedule`` to __rmul__.
    __array_ufunc__ = None

    def __call__(self, count: jax.Array) -> jax.Array:
        raise NotImplementedError

    def __mul__(self, other: Any) -> Any:
        if Schedule._product is None:
            return NotImplemented
        return Schedule._product(self, other)

    def __rmul__(self, other: Any) -> Any:
        if Schedule._product is None:
            return NotImplemented
        return Schedule._product(other, self)


class FunctionSchedule(Schedule):
    """Wraps a plain function ``count -> value`` (an optax schedule, a lambda).

    The function is static (part of the treedef), so a transform holding it can
    still be passed to ``jit``; its constants are not data and will not be swept.
    """

    fn: Callable[[jax.Array], Any] = static_field()

    def __call__(self, count):
        return self.fn(count)


def is_schedule(value: Any) -> bool:
    """True for a schedule: anything callable that is not an array."""
    return callable(value) and not isinstance(value, (jax.Array, np.ndarray))


def count_of(state: Any) -> jax.Array | None:
    """The ``count`` field of a NamedTuple state, or ``None`` if it has none.

    (``getattr(state, "count")`` would find the tuple method ``count`` instead.)
    """
    return state.count if "count" in getattr(state, "_fields", ()) else None


def value_at(value: Any, count: jax.Array) -> Any:
    """The hyperparameter's value for the update whose 0-based index is ``count``."""
    return value(count) if is_schedule(value) else value


class LrFactor(NamedTuple):
    """One factor of the step size an update applied, as a transform reports it.

    Attributes:
        kind: ``"rate"`` for a learning rate, ``"scale"`` for a multiplier of it
            (a plateau's scale).
        value: the factor this update used (a scalar, possibly traced).
        coverage: ``None`` when it applies to every parameter, else a tree of Python
            bools shaped like the params (the leaves a mask or partition gave it).
    """

    kind: str
    value: Any
    coverage: Any = None


def _placing_state(init: Callable) -> Callable:
    """``init`` whose state lives on the params' mesh: the leaves it built from the
    params keep their shardings, and what it built from nothing (counts, scales, keys,
    small statistics) is replicated over the same mesh rather than left on one device.
    One rule for every transform, so none can forget it; a no-op off a mesh and under
    tracing."""

    def init_on_params_mesh(self, params):
        return jtree.replicated_like(params, init(self, params), only_unplaced=True)

    init_on_params_mesh.__name__ = init.__name__
    init_on_params_mesh.__qualname__ = init.__qualname__
    init_on_params_mesh.__doc__ = init.__doc__
    init_on_params_mesh.__wrapped__ = init
    init_on_params_mesh._placed = True
    return init_on_params_mesh


class Transform(Struct):
    """A gradient transformation: ``init(params) -> state`` and
    ``update(updates, state, params=None, **extra) -> (updates, state)``.

    Subclasses declare their hyperparameters as dataclass fields and implement
    ``init`` and ``update``. Factories (``jt.adam`` and friends) validate concrete
    values before building the dataclass; the class itself never validates, so it
    can be rebuilt from tracers by ``jit``/``vmap``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("init")
        if init is not None and not getattr(init, "_placed", False):
            cls.init = _placing_state(init)

    def init(self, params: Params) -> OptState:
        raise NotImplementedError

    def update(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra: Any
    ) -> tuple[Updates, OptState]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Callable]:
        # optax.chain unpacks each transform as `init, update = tx`.
        yield self.init
        yield self.update

    def __getitem__(self, index: int) -> Callable:
        # ... and code written for optax's NamedTuple indexes it: tx[0], tx[1].
        return (self.init, self.update)[index]

    def __len__(self) -> int:
        return 2

    # --- hyperparameters that report themselves -------------------------------------
    # Composite transforms (chain, masked, partition, wrappers) override these to
    # recurse into their members; the defaults cover a transform with numeric fields
    # and, optionally, one inner transform whose state is ``state.inner_state``.

    def hyperparams_at(self, state: OptState) -> dict[str, Any]:
        """This transform's hyperparameters for the next update, by name.

        A schedule is evaluated at ``state.count`` (the index of the next update);
        an inner transform's values come as a nested dict under its field's name.
        See :func:`jtricks.hyperparams.current` for the flat, by-path form.
        """
        count = count_of(state)
        out: dict[str, Any] = {}
        for name in self._data_fields:
            value = getattr(self, name)
            if isinstance(value, Transform):
                out[name] = value.hyperparams_at(getattr(state, "inner_state", None))
            elif isinstance(value, Schedule):
                out[name] = value if count is None else value(count)
            elif value is not None and not isinstance(value, (dict, list, tuple)):
                out[name] = value
        return out

    def learning_rate_factors(self, params: Params, state: OptState,
                              new_state: OptState) -> list[LrFactor]:
        """The step-size factors the update from ``state`` to ``new_state`` applied.

        Only transforms that scale by a learning rate (or rescale one, as a plateau
        does) report a factor; the default forwards to an inner transform.
        """
        for name in self._data_fields:
            inner = getattr(self, name)
            if isinstance(inner, Transform) and hasattr(state, "inner_state"):
                return inner.learning_rate_factors(params, state.inner_state,
                                                   new_state.inner_state)
        return []


class EmptyState(NamedTuple):
    """The state of a stateless transform."""


class Stateless(Transform):
    """Base of transforms that keep no state: ``init`` returns :class:`EmptyState`.

    Their hyperparameters cannot be schedules (there is no step count to evaluate
    one at); factories refuse them with :func:`jtricks.hyperparams.no_schedule`.
    """

    def init(self, params):
        del params
        return EmptyState()


class Identity(Stateless):
    """Passes updates through unchanged."""

    def update(self, updates, state, params=None, **extra):
        del params, extra
        return updates, state


def identity() -> Identity:
    """A transform that leaves updates unchanged (``u -> u``)."""
    return Identity()


class Foreign(Transform):
    """Adapts a transform from another library (e.g. optax) to live in a jtricks tree.

    Its functions are static, so a chain holding it can still be passed to ``jit``.
    Extra keyword arguments are forwarded only if its ``update`` accepts them.
    """

    init_fn: Callable = static_field()
    update_fn: Callable = static_field()
    takes_extra: bool = static_field(default=False)

    def init(self, params):
        return self.init_fn(params)

    def update(self, updates, state, params=None, **extra):
        if self.takes_extra:
            return self.update_fn(updates, state, params, **extra)
        return self.update_fn(updates, state, params)

    # A foreign transform's numbers are hidden in its closures; the one place optax
    # keeps them as data is the state of ``optax.inject_hyperparams``, read here.

    def hyperparams_at(self, state):
        found = _injected(state)
        if len(found) == 1:
            return dict(found[0])
        return {str(i): dict(h) for i, h in enumerate(found)}

    def learning_rate_factors(self, params, state, new_state):
        del params, state
        return [LrFactor("rate", h["learning_rate"]) for h in _injected(new_state)
                if "learning_rate" in h]


def _injected(state: Any) -> list[dict]:
    """The ``hyperparams`` dicts of every ``optax.inject_hyperparams`` state inside."""
    def is_injected(x):
        return hasattr(x, "hyperparams") and hasattr(x, "inner_state")

    nodes = jax.tree.leaves(state, is_leaf=is_injected)
    return [x.hyperparams for x in nodes if is_injected(x)]


def as_transform(tx: Any, *, where: str = "chain") -> Transform:
    """Returns ``tx`` as a jtricks :class:`Transform`, wrapping optax-style pairs."""
    if isinstance(tx, Transform):
        return tx
    init_fn = getattr(tx, "init", None)
    update_fn = getattr(tx, "update", None)
    if not (callable(init_fn) and callable(update_fn)):
        raise TypeError(
            f"{where}: expected a gradient transformation with `init` and `update` "
            f"(a jtricks Transform or an optax GradientTransformation), got "
            f"{type(tx).__name__}: {tx!r}. Build one with jt.adam(...), jt.scale(...), etc."
        )
    try:
        sig = inspect.signature(update_fn)
        takes_extra = any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()
        )
    except (TypeError, ValueError):
        takes_extra = False
    return Foreign(init_fn=init_fn, update_fn=update_fn, takes_extra=takes_extra)


class Chain(Transform):
    """Applies transforms in order; the state is the tuple of their states."""

    transforms: tuple[Transform, ...]

    def init(self, params):
        return tuple(t.init(params) for t in self.transforms)

    def update(self, updates, state, params=None, **extra):
        if not isinstance(state, tuple) or len(state) != len(self.transforms):
            got = len(state) if isinstance(state, tuple) else type(state).__name__
            raise ValueError(
                f"chain.update: state must be a tuple of {len(self.transforms)} inner "
                f"states (one per transform), got {got}. Pass the state returned by "
                "this chain's init(params)."
            )
        new_state = []
        for t, s in zip(self.transforms, state):
            updates, s = t.update(updates, s, params, **extra)
            new_state.append(s)
        return updates, tuple(new_state)


    def hyperparams_at(self, state):
        return {str(i): t.hyperparams_at(s) for i, (t, s) in
                enumerate(zip(self.transforms, state))}

    def learning_rate_factors(self, params, state, new_state):
        return [f for t, s, n in zip(self.transforms, state, new_state)
                for f in t.learning_rate_factors(params, s, n)]


def chain(*args: Any) -> Chain:
    """Applies the transforms ``args`` one after the other: ``u -> t_n(...t_2(t_1(u)))``.

    Accepts jtricks transforms and optax ``GradientTransformation`` objects alike.

    Example:
        >>> import jtricks as jt
        >>> tx = jt.chain(jt.clip_by_global_norm(1.0), jt.adam(1e-3))
    """
    if len(args) == 1 and isinstance(args[0], (list, tuple)) and not hasattr(args[0], "init"):
        args = tuple(args[0])
    return Chain(transforms=tuple(as_transform(t, where="chain") for t in args))


def apply_updates(params: Params, updates: Updates) -> Params:
    """Returns ``params + updates``, leaf by leaf.

    The sum is taken in the promoted dtype and cast back to each parameter's dtype
    (so bf16 params stay bf16 even when updates are fp32). ``None`` leaves in
    ``params`` pass through, and so does a non-array leaf whose update is ``None``
    (an equinox model's activation function or Python constant, as
    ``eqx.apply_updates`` treats them); an array with a ``None`` update is an error.
    Shapes must match exactly: a broadcastable mismatch is a bug (a bias update of
    shape (n, 1) would silently become a matrix) and is refused with the path of the
    offending leaf.
    """

    def add(path, p, u):
        if p is None:
            return None
        if u is None and not isinstance(p, (jax.Array, np.ndarray)):
            return p  # a non-array leaf (an equinox activation, a Python constant)
        if u is None:
            raise ValueError(
                f"apply_updates: update at {jtree.keystr(path)} is None but the "
                f"parameter is not (shape {jnp.shape(p)}). Return a zero update instead."
            )
        if jnp.shape(p) != jnp.shape(u):
            raise ValueError(
                f"apply_updates: shape mismatch at {jtree.keystr(path)}: params "
                f"{jnp.shape(p)} vs updates {jnp.shape(u)}. Updates must have exactly "
                "the parameter's shape (no broadcasting); check the transform or the "
                "gradient that produced them."
            )
        p = jnp.asarray(p)
        return (p + u).astype(p.dtype)

    return jtree.map_with_path(add, params, updates, names=("params", "updates"),
                               is_leaf=lambda x: x is None, where="apply_updates")
