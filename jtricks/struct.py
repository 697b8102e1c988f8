"""Frozen dataclass pytrees: numbers are leaves, structure is static.

:class:`Struct` is the base of every jtricks object that travels through ``jit`` as
data: transforms, schedules, scalers, training states. Its fields are pytree
children unless declared with :func:`static_field` (structural options such as
``nesterov`` or a mask, kept in the treedef and compared by value).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import numpy as np

__all__ = ["Struct", "static_field"]


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
