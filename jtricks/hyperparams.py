"""Concrete values: validated when known, resolved at a step when scheduled.

A scalar hyperparameter is a Python number, an array (possibly a tracer, possibly
stacked for ``vmap``) or a schedule (a callable ``count -> value``). Validation runs
only on concrete values: under ``jit``/``vmap`` a tracer passes through unchecked,
so the same factory works both for users and for JAX transformations.

Every check of a concrete value in the package lives here, so each rule (what a
decay rate may be, what an integer count is) is written once and reads the same
wherever it is enforced. A named optimizer that builds a chain of blocks reports its
own name in every error its blocks raise::

    with hp.reporting_as("adam"):
        return chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(lr))

so ``jt.adam(1e-3, b1=1.0)`` says ``adam: b1 must be in [0, 1) ...`` and each value
is checked exactly once.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import tree as jtree
from jtricks.base import (
    FunctionSchedule,
    Schedule,
    Transform,
    count_of,
    is_schedule,
    value_at,
)

__all__ = [
    "is_schedule",
    "count_of",
    "as_hyper",
    "ScheduleCountState",
    "has_schedule",
    "with_count",
    "split_count",
    "next_count",
    "value_at",
    "concrete",
    "current",
    "learning_rates",
    "reporting_as",
    "check",
    "check_range",
    "check_finite",
    "check_positive",
    "check_nonnegative",
    "check_integer",
    "check_decay",
    "check_eps",
    "check_learning_rate",
    "check_initial",
    "check_threshold",
    "no_schedule",
    "check_finite_data",
    "check_float_params",
    "require_params",
]

_reporter: contextvars.ContextVar[str | None] = contextvars.ContextVar("reporter",
                                                                       default=None)


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


def current(tx: Transform, state: Any) -> dict[str, Any]:
    """Every hyperparameter of ``tx`` for its next update, by ``/``-joined path.

    Schedules are evaluated at the state's step; a chain's members are numbered, a
    partition's keyed by label, a wrapper's inner transform is under its field name
    (``inner``). optax members are seen through ``optax.inject_hyperparams`` only.

    Example:
        >>> tx = jt.chain(jt.clip_by_global_norm(1.0), jt.adam(sched))
        >>> jt.hyperparams.current(tx, state)["1/1/learning_rate"]   # sched(count)
    """
    out: dict[str, Any] = {}

    def walk(prefix: str, values: dict) -> None:
        for name, value in values.items():
            path = f"{prefix}/{name}" if prefix else str(name)
            if isinstance(value, dict):
                walk(path, value)
            else:
                out[path] = value

    walk("", tx.hyperparams_at(state))
    return out


def learning_rates(tx: Transform, params: Any, state: Any, new_state: Any
                   ) -> dict[str, jax.Array]:
    """The learning rate the update from ``state`` to ``new_state`` applied, per group.

    Each parameter's rate is the product of the factors that reach it: every
    ``scale_by_learning_rate`` (a schedule evaluated at the update's count) times
    every ``reduce_on_plateau`` scale over the same leaves (a masked plateau only over
    its mask). Leaves that share their factors form a group. One group gives
    ``{"learning_rate": lr}``; several (a ``partition`` with two rates, a masked
    plateau) give ``{"learning_rate/<name>": lr}``, ``<name>`` the longest path that
    every leaf of the group shares (or its first leaf's). Leaves no rate reaches
    (a frozen group) are left out. optax members report a rate only through
    ``optax.inject_hyperparams``; a rate inside any other optax transform is hidden
    in its closure and is not seen.
    """
    factors = tx.learning_rate_factors(params, state, new_state)
    if not any(f.kind == "rate" for f in factors):
        return {}
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    covers = [None if f.coverage is None else jax.tree.leaves(f.coverage) for f in factors]
    groups: dict[tuple[int, ...], list[tuple]] = {}
    for i, path in enumerate(paths):
        key = tuple(j for j, c in enumerate(covers) if c is None or c[i])
        if any(factors[j].kind == "rate" for j in key):
            groups.setdefault(key, []).append(path)

    def product(key):
        value = jnp.ones((), jnp.float32)
        for j in key:
            value = value * jnp.asarray(factors[j].value).astype(jnp.float32)
        return value

    if len(groups) == 1:
        return {"learning_rate": product(next(iter(groups)))}
    out = {}
    for key, members in groups.items():
        name = _group_name(members)
        if f"learning_rate/{name}" in out:
            name = jtree.path_name(members[0])
        out[f"learning_rate/{name}"] = product(key)
    return out


def _group_name(paths: list[tuple]) -> str:
    """The longest path prefix every member shares, readable (``encoder/layer_0``)."""
    prefix = list(paths[0])
    for path in paths[1:]:
        n = 0
        while n < min(len(prefix), len(path)) and prefix[n] == path[n]:
            n += 1
        prefix = prefix[:n]
    return jtree.path_name(tuple(prefix or paths[0]))


@contextlib.contextmanager
def reporting_as(where: str) -> Iterator[None]:
    """Within the block, every check names ``where`` (the function the user called)
    instead of the building block that runs it."""
    token = _reporter.set(_reporter.get() or where)
    try:
        yield
    finally:
        _reporter.reset(token)


def _where(where: str) -> str:
    return _reporter.get() or where


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
    where = _where(where)
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


def _range_rule(low: float | None, high: float | None, low_open: bool,
                high_open: bool) -> str:
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    if low is not None and high is not None:
        return f"in {lo}, {hi}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "finite"


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

    check(where, name, value, ok, _range_rule(low, high, low_open, high_open), fix)


def check_finite(where: str, name: str, value: Any, fix: str = "") -> None:
    """A finite real number (or array of them): NaN and both infinities fail."""
    check(where, name, value, np.isfinite, "finite", fix)


def check_positive(where: str, name: str, value: Any, fix: str = "") -> None:
    """A number > 0."""
    check_range(where, name, value, low=0.0, low_open=True, fix=fix)


def check_nonnegative(where: str, name: str, value: Any, fix: str = "") -> None:
    """A number >= 0."""
    check_range(where, name, value, low=0.0, fix=fix)


def check_integer(where: str, name: str, value: Any, low: int = 0, rule: str = "",
                  fix: str = "") -> None:
    """A whole number >= ``low`` (a Python int, an integral float or an array of them)."""
    check(where, name, value, lambda x: (x >= low) & (x == np.floor(x)),
          rule or f"an integer >= {low}", fix)


def check_decay(where: str, name: str, value: Any) -> None:
    """A moment decay rate (b1, b2, rho, momentum) must lie in [0, 1)."""
    check_range(where, name, value, low=0.0, high=1.0, high_open=True,
                fix=f"{name} is an exponential decay rate; typical values are 0.9-0.999.")


def check_eps(where: str, name: str, value: Any) -> None:
    """A numerical-stability constant must be >= 0."""
    check_range(where, name, value, low=0.0,
                fix=f"{name} guards a division; use a small positive value such as 1e-8.")


def check_learning_rate(where: str, value: Any, fix: str = "") -> None:
    """A learning rate is a step size: >= 0 (a number, an array or a schedule)."""
    check_range(where, "learning_rate", value, low=0.0,
                fix=fix or "A learning rate must be non-negative, e.g. 1e-3.")


def check_initial(where: str, name: str, value: Any) -> None:
    """An initial accumulator value is read once, by ``init``: a number or an array >= 0."""
    if is_schedule(value):
        raise TypeError(
            f"{_where(where)}: {name} fills the accumulator once, in init, so it cannot "
            f"be a schedule; got {value!r}. Pass a number or an array, e.g. {name}=0.1."
        )
    check_range(where, name, value, low=0.0,
                fix=f"{name} starts a running sum of squares; use a value >= 0.")


def no_schedule(where: str, name: str, value: Any, fix: str = "") -> None:
    """Refuses a schedule for a hyperparameter of a stateless transform."""
    if is_schedule(value):
        raise TypeError(
            f"{_where(where)}: {name} must be a number or an array, got a schedule "
            f"{value!r}. {_where(where)} keeps no step count, so it cannot evaluate a "
            "schedule. " + (fix or "Pass the current value as an array instead (the "
                            "transform is data: rebuilding it with a new value inside a "
                            "jitted step does not recompile).")
        )


def check_threshold(where: str, name: str, value: Any) -> None:
    """A clipping threshold must be a number or an array > 0."""
    no_schedule(where, name, value)
    check_positive(where, name, value,
                   fix=f"{name} is a clipping threshold; typical values are 1 to 10.")


def check_finite_data(where: str, x: Any) -> None:
    """Refuses NaN/inf in concrete data (statistics fitted on it would be NaN)."""
    if isinstance(x, jax.core.Tracer):
        return
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(np.asarray(x))))
    if bad:
        raise ValueError(
            f"{where}: x contains {bad} non-finite value(s) (NaN or inf); the fitted "
            "statistics would be NaN. Clean or impute them before fitting."
        )


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
