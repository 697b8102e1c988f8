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

import dataclasses
import inspect
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import tree as jtree

PyTree = Any
Params = PyTree
Updates = PyTree
OptState = PyTree

__all__ = [
    "Struct",
    "static_field",
    "Transform",
    "EmptyState",
    "Chain",
    "chain",
    "Identity",
    "identity",
    "Foreign",
    "apply_updates",
]


def static_field(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field kept in the treedef (not a leaf): structural options."""
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata["static"] = True
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _freeze(x: Any) -> Any:
    """A hashable stand-in for ``x`` used by hash/eq of static fields and structs.

    Python scalars compare by value (so two transforms built from the same floats are
    equal and hash alike, as flax's static ``TrainState.tx`` needs); arrays and other
    unhashable objects compare by identity (never by value, which would be ambiguous).
    """
    if isinstance(x, (bool, int, float, complex, str, bytes, type(None))):
        return (type(x).__name__, x)
    if isinstance(x, Struct):
        return x._frozen()
    if isinstance(x, dict):
        return ("dict", tuple(sorted((repr(k), _freeze(v)) for k, v in x.items())))
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return (type(x).__name__, tuple(_freeze(v) for v in x))
    if isinstance(x, tuple):  # NamedTuple
        return (type(x).__name__, tuple(_freeze(v) for v in x))
    if isinstance(x, (jax.Array, np.ndarray)) or not _is_hashable(x):
        return ("id", id(x))
    return ("obj", x)


def _is_hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


class _Static:
    """Wraps a static field value so the treedef can hash and compare it."""

    __slots__ = ("_hash", "_key", "value")

    def __init__(self, value: Any):
        self.value = value
        self._key = _freeze(value)
        self._hash = hash(self._key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, _Static) and self._hash == other._hash
                                 and self._key == other._key)

    def __repr__(self) -> str:
        return f"_Static({self.value!r})"


class Struct:
    """Base for frozen dataclass pytrees (transforms, schedules, scalers).

    Subclasses are turned into frozen dataclasses and registered with JAX
    automatically. Fields are children unless declared with :func:`static_field`.
    Equality and hashing compare Python-scalar fields by value and array fields by
    identity, so a struct built from Python numbers is hashable.
    """

    _data_fields: ClassVar[tuple[str, ...]] = ()
    _meta_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True, eq=False, repr=True)(cls)
        fields = dataclasses.fields(cls)
        cls._data_fields = tuple(f.name for f in fields if not f.metadata.get("static"))
        cls._meta_fields = tuple(f.name for f in fields if f.metadata.get("static"))
        jax.tree_util.register_pytree_with_keys(
            cls, cls._flatten_with_keys, cls._unflatten, cls._flatten
        )

    def _aux(self) -> tuple:
        # Built once per object and handed on by unflatten: jit compares the treedef
        # of its arguments on every call, and freezing a large static field (a
        # layout of thousands of shapes) each time would cost milliseconds.
        aux = self.__dict__.get("_static_aux")
        if aux is None:
            aux = tuple(_Static(getattr(self, n)) for n in self._meta_fields)
            object.__setattr__(self, "_static_aux", aux)
        return aux

    def _flatten_with_keys(self):
        children = tuple(
            (jax.tree_util.GetAttrKey(n), getattr(self, n)) for n in self._data_fields
        )
        return children, self._aux()

    def _flatten(self):
        return tuple(getattr(self, n) for n in self._data_fields), self._aux()

    @classmethod
    def _unflatten(cls, aux, children):
        # Bypass __init__: unflattening with tracers or sentinels must not validate.
        obj = object.__new__(cls)
        for name, value in zip(cls._data_fields, children):
            object.__setattr__(obj, name, value)
        for name, value in zip(cls._meta_fields, aux):
            object.__setattr__(obj, name, value.value)
        object.__setattr__(obj, "_static_aux", aux)
        return obj

    def _frozen(self) -> tuple:
        names = self._data_fields + self._meta_fields
        return (type(self), tuple(_freeze(getattr(self, n)) for n in names))

    def __hash__(self) -> int:
        return hash(self._frozen())

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._frozen() == other._frozen()

    def replace(self, **changes: Any):
        """A copy with some fields changed (no validation, like ``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


class Transform(Struct):
    """A gradient transformation: ``init(params) -> state`` and
    ``update(updates, state, params=None, **extra) -> (updates, state)``.

    Subclasses declare their hyperparameters as dataclass fields and implement
    ``init`` and ``update``. Factories (``jt.adam`` and friends) validate concrete
    values before building the dataclass; the class itself never validates, so it
    can be rebuilt from tracers by ``jit``/``vmap``.
    """

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


class EmptyState(NamedTuple):
    """The state of a stateless transform."""


class Identity(Transform):
    """Passes updates through unchanged."""

    def init(self, params):
        del params
        return EmptyState()

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


def chain(*transforms: Any) -> Chain:
    """Applies ``transforms`` one after the other: ``u -> t_n(...t_2(t_1(u)))``.

    Accepts jtricks transforms and optax ``GradientTransformation`` objects alike.

    Example:
        >>> import jtricks as jt
        >>> tx = jt.chain(jt.clip_by_global_norm(1.0), jt.adam(1e-3))
    """
    if len(transforms) == 1 and isinstance(transforms[0], (list, tuple)) and not hasattr(
        transforms[0], "init"
    ):
        transforms = tuple(transforms[0])
    return Chain(transforms=tuple(as_transform(t, where="chain") for t in transforms))


def apply_updates(params: Params, updates: Updates) -> Params:
    """Returns ``params + updates``, leaf by leaf.

    The sum is taken in the promoted dtype and cast back to each parameter's dtype
    (so bf16 params stay bf16 even when updates are fp32). ``None`` leaves in
    ``params`` pass through. Shapes must match exactly: a broadcastable mismatch
    is a bug (a bias update of shape (n, 1) would silently become a matrix) and is
    refused with the path of the offending leaf.
    """

    def add(path, p, u):
        if p is None:
            return None
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
