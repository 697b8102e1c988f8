"""What the line searches share: inner products over trees, the arguments an update
hands on to the objective, and :func:`value_and_grad_from_state`.

A line search's ``update`` takes, besides optax's usual arguments, the objective's
``value`` and ``grad`` at the current params, the objective ``value_fn`` itself and
any further keyword arguments ``value_fn`` needs (a batch, a target). The search
stores the value and gradient at the point it accepts, so a deterministic objective
is evaluated once per step::

    value_and_grad = value_and_grad_from_state(f)
    value, grad = value_and_grad(params, state=state)
    updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=f)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["value_and_grad_from_state"]


# --- tree arithmetic, leaf order and precision as optax's (so the numbers agree) ------

def vdot(a: Any, b: Any) -> jax.Array:
    """``sum_leaves <conj(a), b>``: each leaf contracted over all its axes at the
    highest precision, then the leaves summed left to right."""
    def leaf(x, y):
        x, y = jnp.asarray(x), jnp.asarray(y)
        if jnp.iscomplexobj(x):
            x = jnp.conj(x)
        return jnp.tensordot(x, y, x.ndim, precision=jax.lax.Precision.HIGHEST)

    dots = jax.tree.leaves(jax.tree.map(leaf, a, b))
    return sum(dots[1:], dots[0]) if dots else jnp.zeros(())


def real_vdot(a: Any, b: Any) -> jax.Array:
    """The real part of :func:`vdot`."""
    return jnp.real(vdot(a, b))


def sq_norm(tree: Any) -> jax.Array:
    """``sum_leaves sum |x|**2`` in the leaves' own dtype (optax's squared norm)."""
    sums = [jnp.sum(jnp.square(jnp.real(x)) + jnp.square(jnp.imag(x)))
            for x in jax.tree.leaves(tree)]
    return sum(sums[1:], sums[0]) if sums else jnp.zeros(())


def conj(tree: Any) -> Any:
    return jax.tree.map(jnp.conj, tree)


def add_scale(x: Any, scalar: Any, y: Any) -> Any:
    """``x + scalar * y`` leaf by leaf."""
    scalar = jnp.asarray(scalar)
    return jax.tree.map(lambda a, b: a + scalar * b, x, y)


def scale(scalar: Any, tree: Any) -> Any:
    return jax.tree.map(lambda x: scalar * x, tree)


def select(condition: Any, on_true: Any, on_false: Any) -> Any:
    """``on_true`` where ``condition`` holds, else ``on_false`` (trees alike)."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), on_true, on_false)


def cast_like(tree: Any, like: Any) -> Any:
    """``tree`` with each leaf cast to the dtype of ``like``'s leaf (a loop carry must
    keep its types from one iteration to the next)."""
    return jax.tree.map(lambda x, ref: jnp.asarray(x).astype(jnp.result_type(ref)),
                        tree, like)


def value_dtype(params: Any) -> Any:
    """The real dtype of the first parameter: the dtype of stored values and steps."""
    return jnp.real(jnp.empty((), jax.tree.leaves(params)[0].dtype)).dtype


# --- the arguments of a line search's update ------------------------------------------

def objective_kwargs(where: str, value: Any, grad: Any, value_fn: Any,
                     extra_args: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``extra_args`` that ``value_fn`` takes by name.

    Refuses a missing ``value``, ``grad`` or ``value_fn``, and any extra argument
    ``value_fn`` does not name (it would be silently dropped otherwise).
    """
    for name, given in (("value", value), ("grad", grad), ("value_fn", value_fn)):
        if given is None:
            raise TypeError(
                f"{where}: {name} is missing. A line search evaluates the objective along "
                "the update: call tx.update(grads, state, params, value=value, grad=grad, "
                "value_fn=f, **args_of_f) with value, grad = jax.value_and_grad(f)(params) "
                "(or jt.value_and_grad_from_state(f)(params, state=state))."
            )
    if not callable(value_fn):
        raise TypeError(f"{where}: value_fn must be a function params -> scalar, got "
                        f"{type(value_fn).__name__}: {value_fn!r}.")
    names = set(inspect.signature(value_fn).parameters)
    unused = sorted(k for k in extra_args if k not in names)
    if unused:
        raise TypeError(
            f"{where}: keyword arguments {unused} are not parameters of value_fn "
            f"{getattr(value_fn, '__name__', value_fn)!r}, which takes {sorted(names)}. "
            "Pass only the arguments value_fn accepts by name."
        )
    return dict(extra_args)


def report_failure(failed: jax.Array, message: str, **values: Any) -> None:
    """Prints ``message`` (formatted with ``values``) on a step where ``failed``."""
    jax.lax.cond(failed, lambda v: jax.debug.print(message, ordered=True, **v),
                 lambda v: None, values)


# --- value_and_grad_from_state --------------------------------------------------------

def _is_named_tuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _find_all(tree: Any, key: str, path: str = "") -> list[tuple[str, Any]]:
    """Every NamedTuple field or dict entry called ``key`` in ``tree`` (at any depth)."""
    if _is_named_tuple(tree):
        items = [(f".{name}", getattr(tree, name)) for name in tree._fields]
    elif isinstance(tree, dict):
        items = [(f"[{k!r}]", v) for k, v in tree.items()]
    elif isinstance(tree, (list, tuple)):
        items = [(f"[{i}]", v) for i, v in enumerate(tree)]
    else:
        return []
    found = [(path + p, v) for p, v in items if p in (f".{key}", f"[{key!r}]")]
    for p, v in items:
        found += _find_all(v, key, path + p)
    return found


def _stored(state: Any, key: str) -> Any:
    found = _find_all(state, key)
    if len(found) > 1:
        raise ValueError(
            f"value_and_grad_from_state: the state holds several entries named {key!r}, at "
            f"{', '.join('state' + p for p, _ in found)}; it needs exactly one (the line "
            "search's). Use one line search per optimizer."
        )
    return found[0][1] if found else None


def value_and_grad_from_state(
    value_fn: Callable[..., Any],
) -> Callable[..., tuple[Any, Any]]:
    """Like ``jax.value_and_grad(value_fn)``, but reuses the value and gradient a line
    search stored in the optimizer state (optax's ``value_and_grad_from_state``).

    The returned function is called as ``f(params, *args, state=state, **kwargs)``.
    It reads the state's ``value`` and ``grad`` (those of the params the last line
    search accepted); where the stored value is not finite (the first step, or a
    failed search) it computes both with ``jax.value_and_grad(value_fn)`` instead::

        (value, grad) <- (state.value, state.grad)          if state.value is finite
                         value_and_grad(value_fn)(params)   otherwise

    Only valid for a deterministic objective: the stored pair belongs to the params
    the line search accepted, evaluated on the arguments it was given.

    Args:
        value_fn: the objective, ``value_fn(params, *args, **kwargs) -> scalar``,
            differentiable by JAX.

    Returns:
        ``f(params, *args, state, **kwargs) -> (value, grad)``.

    Example:
        >>> f = lambda x: jnp.sum(x ** 2)
        >>> tx = jt.lbfgs()
        >>> params = jnp.array([1., 2., 3.])
        >>> state = tx.init(params)
        >>> value_and_grad = jt.value_and_grad_from_state(f)
        >>> value, grad = value_and_grad(params, state=state)
        >>> updates, state = tx.update(grad, state, params, value=value, grad=grad,
        ...                            value_fn=f)
    """
    def value_and_grad(params: Any, *fn_args: Any, state: Any, **fn_kwargs: Any):
        value, grad = _stored(state, "value"), _stored(state, "grad")
        if value is None or grad is None:
            raise ValueError(
                "value_and_grad_from_state: the state holds no "
                f"{'value' if value is None else 'grad'} to reuse. Use an optimizer with "
                "a line search that stores them (jt.lbfgs(), jt.scale_by_zoom_linesearch, "
                "or jt.scale_by_backtracking_linesearch(..., store_grad=True)), or call "
                "jax.value_and_grad(value_fn) instead."
            )

        def fresh(p, args, kwargs):
            # In the stored pair's dtypes, so both branches agree (bf16 params store
            # a bf16 value while the objective may return fp32).
            return cast_like(jax.value_and_grad(value_fn)(p, *args, **kwargs), (value, grad))

        return jax.lax.cond(jnp.isfinite(value), lambda *_: (value, grad), fresh,
                            params, fn_args, fn_kwargs)

    return value_and_grad
