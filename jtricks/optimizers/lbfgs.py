"""L-BFGS as optax composes it: the quasi-Newton direction, a sign flip or a learning
rate, and a line search."""

from __future__ import annotations

from typing import Any

from jtricks import hyperparams as hp
from jtricks.base import Chain, chain, identity
from jtricks.transforms.lbfgs import scale_by_lbfgs
from jtricks.transforms.linesearch import value_and_grad_from_state
from jtricks.transforms.linesearch_zoom import scale_by_zoom_linesearch
from jtricks.transforms.scaling import scale, scale_by_learning_rate

__all__ = ["lbfgs", "value_and_grad_from_state"]


def lbfgs(
    learning_rate: Any = None,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: Any = scale_by_zoom_linesearch(  # noqa: B008 (immutable, as optax's)
        max_linesearch_steps=20, initial_guess_strategy="one"),
) -> Chain:
    """L-BFGS (Liu & Nocedal, 1989; Nocedal & Wright, 1999, Algorithms 7.4-7.5) with
    a zoom line search by default: optax's ``lbfgs``, state for state.

    ::

        d <- P_k g                              (scale_by_lbfgs: the two-loop product)
        u <- -d          or  -lr(k) * d         (learning_rate None, or given)
        u <- t u                                (the line search's step t)
        w <- w + u

    The chain is ``chain(scale_by_lbfgs(memory_size, scale_init_precond), scale(-1)
    or scale_by_learning_rate(learning_rate), linesearch)``; ``linesearch=None`` puts
    :func:`jtricks.identity` in its place. With a line search, the update needs
    optax's extra arguments ``value``, ``grad`` and ``value_fn`` (and whatever keyword
    arguments ``value_fn`` takes); :func:`value_and_grad_from_state` reuses the value
    and gradient the search computed at the accepted params.

    Args:
        learning_rate: ``None`` (the line search sets the step), or a step size >= 0:
            a float, an array or a schedule.
        memory_size: the number of (dw, du) pairs kept, an integer >= 1.
        scale_init_precond: start from the scaled identity ``gamma_k I``.
        linesearch: a line search transform (jtricks' or optax's), or ``None``. The
            default is ``scale_by_zoom_linesearch(max_linesearch_steps=20,
            initial_guess_strategy="one")``.

    Example:
        >>> f = lambda x: jnp.sum(x ** 2)
        >>> solver = jt.lbfgs()
        >>> params = jnp.array([1., 2., 3.])
        >>> state = solver.init(params)
        >>> value_and_grad = jt.value_and_grad_from_state(f)
        >>> for _ in range(2):
        ...     value, grad = value_and_grad(params, state=state)
        ...     updates, state = solver.update(grad, state, params, value=value,
        ...                                    grad=grad, value_fn=f)
        ...     params = jt.apply_updates(params, updates)
    """
    with hp.reporting_as("lbfgs"):
        if learning_rate is None:
            step = scale(-1.0)
        else:
            step = scale_by_learning_rate(learning_rate)
        return chain(scale_by_lbfgs(memory_size=memory_size,
                                    scale_init_precond=scale_init_precond),
                     step, identity() if linesearch is None else linesearch)
