"""Hyperparameter values: plain, arrays or schedules, and the count schedules need."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import tree as jtree
from jtricks.base import FunctionSchedule, Schedule, Transform, is_schedule

__all__ = ["as_hyper", "ScheduleCountState", "has_schedule", "with_count", "split_count",
           "next_count", "concrete"]


def as_hyper(value: Any) -> Any:
    """Normalises a hyperparameter so the transform holding it stays a pytree.

    jtricks schedules are pytrees already; a plain function (an optax schedule, a
    lambda) is wrapped so it becomes static data of the treedef instead of a leaf.
    Numbers and arrays are kept exactly as given (Python floats stay weakly typed).
    """
    if isinstance(value, Schedule) or not is_schedule(value):
        return value
    return FunctionSchedule(fn=value)


class ScheduleCountState(NamedTuple):
    """A transform's state, shaped as optax's, plus the count its schedules need.

    optax keeps no step count in the state of, e.g., ``trace`` or ``scale_by_rms``,
    because their hyperparameters cannot be schedules there. jtricks accepts a
    schedule for every scalar hyperparameter; only a transform that holds one keeps
    its state inside this wrapper, so every configuration optax can express has
    optax's state, field for field (and checkpoints cross between the libraries).

    Attributes:
        count: int32, the number of updates so far (indexes the schedules).
        state: the transform's own (optax-shaped) state.
    """

    count: jax.Array
    state: Any


def has_schedule(tx: Transform) -> bool:
    """Whether any hyperparameter field of ``tx`` is a schedule (a static property)."""
    return any(isinstance(getattr(tx, n), Schedule) for n in tx._data_fields)


def with_count(tx: Transform, state: Any) -> Any:
    """``state`` as ``init`` returns it: wrapped with a zero count iff ``tx`` holds a
    schedule."""
    if has_schedule(tx):
        return ScheduleCountState(count=jnp.zeros([], jnp.int32), state=state)
    return state


def split_count(state: Any) -> tuple[jax.Array | None, Any]:
    """``(count, inner state)``; the count is ``None`` for an unwrapped state."""
    if isinstance(state, ScheduleCountState):
        return state.count, state.state
    return None, state


def next_count(old: Any, new_state: Any) -> Any:
    """``new_state`` wrapped like ``old`` was, its count advanced by one update."""
    if isinstance(old, ScheduleCountState):
        return ScheduleCountState(count=jtree.increment(old.count), state=new_state)
    return new_state


def concrete(value: Any) -> np.ndarray | None:
    """``value`` as a NumPy array when it is known now, else ``None`` (tracer/schedule)."""
    if value is None or is_schedule(value):
        return None
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except Exception:  # anything we cannot inspect is not checked
        return None
