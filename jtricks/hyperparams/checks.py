"""Checks of concrete values: each rule written once, each error naming the function
the user called, the argument, the value and the fix."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import tree as jtree
from jtricks.base import is_schedule
from jtricks.hyperparams.values import concrete

__all__ = [
    "reporting_as", "reporter", "check", "check_range", "check_finite", "check_positive",
    "check_nonnegative", "check_integer", "check_decay", "check_eps", "check_learning_rate",
    "check_initial", "check_threshold", "no_schedule", "check_finite_data",
    "check_float_params", "require_params",
]

_reporter: contextvars.ContextVar[str | None] = contextvars.ContextVar("reporter",
                                                                       default=None)


@contextlib.contextmanager
def reporting_as(where: str) -> Iterator[None]:
    """Within the block, every check names ``where`` (the function the user called)
    instead of the building block that runs it."""
    token = _reporter.set(_reporter.get() or where)
    try:
        yield
    finally:
        _reporter.reset(token)


def reporter(where: str) -> str:
    """The name errors report: the function the user called (see :func:`reporting_as`),
    else ``where``."""
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
    where = reporter(where)
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
            f"{reporter(where)}: {name} fills the accumulator once, in init, so it cannot "
            f"be a schedule; got {value!r}. Pass a number or an array, e.g. {name}=0.1."
        )
    check_range(where, name, value, low=0.0,
                fix=f"{name} starts a running sum of squares; use a value >= 0.")


def no_schedule(where: str, name: str, value: Any, fix: str = "") -> None:
    """Refuses a schedule for a hyperparameter of a stateless transform."""
    if is_schedule(value):
        raise TypeError(
            f"{reporter(where)}: {name} must be a number or an array, got a schedule "
            f"{value!r}. {reporter(where)} keeps no step count, so it cannot evaluate a "
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


def check_real_params(where: str, params: Any, why: str) -> None:
    """Refuses complex parameters where the method is defined for real ones only."""
    check_float_params(where, params)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if jnp.iscomplexobj(leaf):
            raise TypeError(
                f"{where}: parameter at {jtree.keystr(path)} is complex "
                f"({jnp.result_type(leaf)}); {why}. Split it into real and imaginary parts "
                "(jt.split_real_and_imaginary), or use jt.adam for it (jt.partition)."
            )


def require_params(where: str, params: Any, why: str) -> None:
    """Refuses ``params=None`` for a transform whose update reads the parameters."""
    if params is None:
        raise ValueError(
            f"{where}: params is None, but {why}. Call tx.update(grads, state, params)."
        )
