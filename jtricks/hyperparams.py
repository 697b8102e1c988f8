"""Hyperparameter values: validated when concrete, resolved at a step when scheduled.

A scalar hyperparameter is a Python number, an array (possibly a tracer, possibly
stacked for ``vmap``) or a schedule (a callable ``count -> value``). Validation runs
only on concrete values: under ``jit``/``vmap`` a tracer passes through unchecked,
so the same factory works both for users and for JAX transformations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import tree as jtree

__all__ = [
    "is_schedule",
    "as_hyper",
    "value_at",
    "concrete",
    "check",
    "check_range",
    "check_float_params",
    "require_params",
]


def is_schedule(value: Any) -> bool:
    """True for a schedule: anything callable that is not an array."""
    return callable(value) and not isinstance(value, (jax.Array, np.ndarray))


def as_hyper(value: Any) -> Any:
    """Normalises a hyperparameter so the transform holding it stays a pytree.

    jtricks schedules are pytrees already; a plain function (an optax schedule, a
    lambda) is wrapped so it becomes static data of the treedef instead of a leaf.
    Numbers and arrays are kept exactly as given (Python floats stay weakly typed).
    """
    from jtricks.schedules import FunctionSchedule, Schedule

    if isinstance(value, Schedule) or not is_schedule(value):
        return value
    return FunctionSchedule(fn=value)


def value_at(value: Any, count: jax.Array) -> Any:
    """The hyperparameter's value for the update whose 0-based index is ``count``."""
    return value(count) if is_schedule(value) else value


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


def check(where: str, name: str, value: Any, ok: Callable[[np.ndarray], Any], rule: str,
          fix: str = "", error: type[Exception] = ValueError) -> None:
    """Raises ``error`` naming ``name``, the value and the fix when ``ok`` fails.

    ``ok`` receives the concrete value as a NumPy array and returns booleans; every
    element must pass (so a stacked sweep of values is checked element by element).
    Tracers and schedules are not checked.
    """
    arr = concrete(value)
    if arr is None:
        return
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{where}: {name} must be a real number, an array or a schedule, got "
            f"{type(value).__name__}: {value!r}."
        )
    with np.errstate(invalid="ignore"):
        passed = np.all(np.asarray(ok(arr.astype(np.float64))))
    if not passed:
        shown = value if arr.size <= 8 else f"array with values in [{arr.min()}, {arr.max()}]"
        msg = f"{where}: {name} must be {rule}, got {shown!r}."
        if fix:
            msg += f" {fix}"
        raise error(msg)


def check_range(where: str, name: str, value: Any, *, low: float | None = None,
                high: float | None = None, low_open: bool = False,
                high_open: bool = False, fix: str = "") -> None:
    """Checks ``low <= value <= high`` (``<`` where open); NaN always fails."""
    def ok(x):
        good = np.isfinite(x) | (np.isinf(x) & (high is None) & (x > 0))
        if low is not None:
            good &= (x > low) if low_open else (x >= low)
        if high is not None:
            good &= (x < high) if high_open else (x <= high)
        return good

    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    if low is not None and high is not None:
        rule = f"in {lo}, {hi}"
    elif low is not None:
        rule = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        rule = f"{'<' if high_open else '<='} {high:g}"
    else:
        rule = "finite"
    check(where, name, value, ok, rule, fix)


def check_float_params(where: str, params: Any) -> None:
    """Refuses integer or boolean parameters: gradient steps need floating dtypes."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{where}: parameter at {jtree.keystr(path)} has dtype {dtype}, but this "
                "optimizer needs floating-point parameters. Cast them first, e.g. "
                "jax.tree.map(lambda p: p.astype(jnp.float32), params)."
            )


def require_params(where: str, params: Any, why: str) -> None:
    """Refuses ``params=None`` for a transform whose update reads the parameters."""
    if params is None:
        raise ValueError(
            f"{where}: params is None, but {why}. Call tx.update(grads, state, params)."
        )
