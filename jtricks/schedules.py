"""Learning-rate (and any hyperparameter) schedules as pytrees.

A schedule is a :class:`Schedule`: a frozen dataclass pytree whose numeric fields are
leaves, called with the 0-based update count: ``lr = schedule(count)``. Because the
constants are data, a jitted step compiles once for ``cosine_decay(1e-3, 1000)`` and
``cosine_decay(3e-4, 1000)``, and a sweep over peak values can be ``vmap``-ped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from jtricks.base import Struct, static_field

__all__ = ["Schedule", "FunctionSchedule"]


class Schedule(Struct):
    """Base class of schedules: ``schedule(count) -> value``."""

    def __call__(self, count: jax.Array) -> jax.Array:
        raise NotImplementedError


class FunctionSchedule(Schedule):
    """Wraps a plain function ``count -> value`` (an optax schedule, a lambda).

    The function is static (part of the treedef), so a transform holding it can
    still be passed to ``jit``; its constants are not data and will not be swept.
    """

    fn: Callable[[jax.Array], Any] = static_field()

    def __call__(self, count):
        return self.fn(count)
