"""The backtracking line search: shrink the step until it decreases the objective
enough (the Armijo condition; Nocedal & Wright, 1999, Algorithm 3.1)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field
from jtricks.transforms import linesearch as ls

__all__ = ["BacktrackingLinesearchInfo", "ScaleByBacktrackingLinesearchState",
           "ScaleByBacktrackingLinesearch", "scale_by_backtracking_linesearch"]


class BacktrackingLinesearchInfo(NamedTuple):
    """What the last search found (optax's ``BacktrackingLinesearchInfo``).

    Attributes:
        num_linesearch_steps: the objective evaluations it made.
        decrease_error: by how much the accepted step misses sufficient decrease
            (0 when met).
    """

    num_linesearch_steps: jax.Array
    decrease_error: jax.Array


class ScaleByBacktrackingLinesearchState(NamedTuple):
    """optax's ``ScaleByBacktrackingLinesearchState``.

    Attributes:
        learning_rate: the step the last search accepted.
        value: the objective at the accepted params.
        grad: its gradient there with ``store_grad=True``, else ``None``.
        info: a :class:`BacktrackingLinesearchInfo`.
    """

    learning_rate: jax.Array
    value: jax.Array
    grad: Any
    info: BacktrackingLinesearchInfo


class _Backtrack(NamedTuple):
    """The loop carry: the trial step, the value (and gradient) there, its error."""

    learning_rate: Any
    new_value: Any
    new_grad: Any
    decrease_error: Any
    iter_num: Any


class ScaleByBacktrackingLinesearch(Transform):
    """Scales the update by an Armijo step; see :func:`scale_by_backtracking_linesearch`."""

    max_backtracking_steps: Any
    slope_rtol: Any
    decrease_factor: Any
    increase_factor: Any
    max_learning_rate: Any
    atol: Any
    rtol: Any
    store_grad: bool = static_field(default=False)
    verbose: bool = static_field(default=False)

    def init(self, params):
        hp.check_float_params("scale_by_backtracking_linesearch", params)
        dtype = ls.value_dtype(params)
        return ScaleByBacktrackingLinesearchState(
            learning_rate=jnp.asarray(1.0, dtype), value=jnp.asarray(jnp.inf, dtype),
            grad=jtree.zeros_like(params) if self.store_grad else None,
            info=BacktrackingLinesearchInfo(num_linesearch_steps=jnp.asarray(0),
                                            decrease_error=jnp.asarray(jnp.inf, dtype)))

    def _decrease_error(self, t, slope, value, new_value):
        err = new_value - (1.0 + self.rtol) * value - t * self.slope_rtol * slope
        return jnp.maximum(jnp.where(jnp.isnan(err), jnp.inf, err), 0.0)

    def _trial(self, objective, params, updates, slope, value, b: _Backtrack) -> _Backtrack:
        """One trial: the step shrinks by ``decrease_factor`` from the second on; with
        ``store_grad`` the gradient is taken (by transposing the linearisation) only
        at the trial that ends the search."""
        t = jnp.where(b.iter_num > 0, self.decrease_factor * b.learning_rate,
                      b.learning_rate)
        point = ls.add_scale(params, t, updates)
        grad = b.new_grad
        if self.store_grad:
            new_value, jvp = jax.linearize(objective, point)
            err = self._decrease_error(t, slope, value, new_value)
            ends = (err <= self.atol) | (b.iter_num == self.max_backtracking_steps)
            grad = jax.lax.cond(ends, lambda p: jax.linear_transpose(jvp, p)(
                jnp.ones_like(new_value))[0], lambda p: grad, point)
        else:
            new_value = objective(point)
            err = self._decrease_error(t, slope, value, new_value)
        return ls.cast_like(_Backtrack(t, new_value, grad, err, b.iter_num + 1), b)

    def update(self, updates, state, params=None, *, value=None, grad=None, value_fn=None,
               **extra_args):
        where = "scale_by_backtracking_linesearch.update"
        kwargs = ls.objective_kwargs(where, value, grad, value_fn, extra_args)
        hp.require_params(where, params, "the line search evaluates the objective at "
                          "params + step * updates")
        slope = ls.real_vdot(updates, ls.conj(grad))

        def objective(p):
            return value_fn(p, **kwargs)

        # Start from a step a little larger than the last, within max_learning_rate.
        start = _Backtrack(jnp.minimum(self.increase_factor * state.learning_rate,
                                       self.max_learning_rate),
                           value, jtree.zeros_like(params), jnp.asarray(jnp.inf), 0)
        b = jax.lax.while_loop(
            lambda b: ~(b.decrease_error <= self.atol)
            & (b.iter_num <= self.max_backtracking_steps),
            lambda b: self._trial(objective, params, updates, slope, value, b), start)
        # An infinite error (NaN or inf values all along) makes no step at all.
        t = jnp.where(jnp.isinf(b.decrease_error), 0.0, b.learning_rate)
        if self.verbose:
            ls.report_failure(b.decrease_error > self.atol,
                              "scale_by_backtracking_linesearch: no step met sufficient "
                              "decrease (value {value}, slope {slope}); step {t}, decrease "
                              "error {dec}.", value=value, slope=slope, t=t,
                              dec=b.decrease_error)
        new = ScaleByBacktrackingLinesearchState(
            learning_rate=t, value=b.new_value,
            grad=b.new_grad if self.store_grad else None,
            info=BacktrackingLinesearchInfo(b.iter_num, b.decrease_error))
        return ls.scale(t, updates), ls.cast_like(new, state)


def scale_by_backtracking_linesearch(
    max_backtracking_steps: Any,
    slope_rtol: Any = 1e-4,
    decrease_factor: Any = 0.8,
    increase_factor: Any = 1.5,
    max_learning_rate: Any = 1.0,
    atol: Any = 0.0,
    rtol: Any = 0.0,
    store_grad: bool = False,
    verbose: bool = False,
) -> ScaleByBacktrackingLinesearch:
    """Scales the update ``u`` by the first step ``t`` of a shrinking sequence that
    decreases the objective enough (optax's ``scale_by_backtracking_linesearch``;
    Nocedal & Wright, 1999; Vaswani et al., 2019).

    With ``f`` the objective, ``w`` the params and ``t_prev`` the last accepted step::

        t <- min(increase_factor * t_prev, max_learning_rate)
        while f(w + t u) > (1 + rtol) f(w) + slope_rtol * t * <u, grad f(w)> + atol
              and at most max_backtracking_steps times:
            t <- decrease_factor * t
        t <- 0 if every trial gave NaN or inf
        u <- t u

    ``u`` must be a descent direction (``<u, grad f(w)> < 0``), e.g. after
    ``jt.sgd(1.0)``. The update takes optax's extra arguments: ``tx.update(u, state,
    params, *, value, grad, value_fn, **extra_args)``.

    Args:
        max_backtracking_steps: the most shrinking steps per search, an integer >= 0.
        slope_rtol: the fraction of the linear decrease required, in [0, 1).
        decrease_factor: the shrinking factor, in (0, 1).
        increase_factor: the first trial's growth over the last step, >= 1 (``inf``
            starts every search at ``max_learning_rate``).
        max_learning_rate: the largest step tried, > 0.
        atol: absolute slack on the condition, >= 0.
        rtol: relative slack on the value, >= 0.
        store_grad: also store the gradient at the accepted params, so
            :func:`jtricks.value_and_grad_from_state` can reuse it (static).
        verbose: print a line when a search fails (static).

    Example:
        >>> tx = jt.chain(jt.sgd(1.0), jt.scale_by_backtracking_linesearch(15))
        >>> updates, state = tx.update(grad, state, params, value=value, grad=grad,
        ...                            value_fn=f)
    """
    where = "scale_by_backtracking_linesearch"
    names = ("max_backtracking_steps", "slope_rtol", "decrease_factor", "increase_factor",
             "max_learning_rate", "atol", "rtol")
    values = (max_backtracking_steps, slope_rtol, decrease_factor, increase_factor,
              max_learning_rate, atol, rtol)
    for name, v in zip(names, values):
        hp.no_schedule(where, name, v, fix="A line search keeps no step count.")
    hp.check_integer(where, "max_backtracking_steps", max_backtracking_steps, low=0)
    hp.check_range(where, "slope_rtol", slope_rtol, low=0.0, high=1.0, high_open=True)
    hp.check_range(where, "decrease_factor", decrease_factor, low=0.0, high=1.0,
                   low_open=True, high_open=True,
                   fix="Each failed trial multiplies the step by it; 0.5-0.8 is usual.")
    hp.check_range(where, "increase_factor", increase_factor, low=1.0)
    hp.check_positive(where, "max_learning_rate", max_learning_rate)
    hp.check_nonnegative(where, "atol", atol)
    hp.check_nonnegative(where, "rtol", rtol)
    return ScaleByBacktrackingLinesearch(*values, store_grad=bool(store_grad),
                                         verbose=bool(verbose))
