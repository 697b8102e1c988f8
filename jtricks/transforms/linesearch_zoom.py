"""The zoom line search: a step satisfying the strong Wolfe conditions (Nocedal &
Wright, Algorithms 3.5 and 3.6), with Hager & Zhang's approximate decrease test."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field
from jtricks.transforms import linesearch as ls

__all__ = ["ZoomLinesearchInfo", "ScaleByZoomLinesearchState", "ScaleByZoomLinesearch",
           "scale_by_zoom_linesearch"]


class ZoomLinesearchInfo(NamedTuple):
    """What the last search found (optax's ``ZoomLinesearchInfo``).

    Attributes:
        num_linesearch_steps: the objective evaluations it made.
        decrease_error: by how much the accepted step misses sufficient decrease
            (0 when met; a positive value means the search failed).
        curvature_error: by how much it misses the curvature condition (0 when met).
    """

    num_linesearch_steps: jax.Array
    decrease_error: jax.Array
    curvature_error: jax.Array


class ScaleByZoomLinesearchState(NamedTuple):
    """optax's ``ScaleByZoomLinesearchState``.

    Attributes:
        learning_rate: the step the last search accepted.
        value: the objective at the accepted params (reused by
            :func:`jtricks.value_and_grad_from_state`).
        grad: its gradient there, shaped like params.
        info: a :class:`ZoomLinesearchInfo`.
    """

    learning_rate: jax.Array
    value: jax.Array
    grad: Any
    info: ZoomLinesearchInfo


class _Line(NamedTuple):
    """What stays fixed during one search: the line ``params + t * updates``, the
    objective's value and slope at ``t = 0`` and the first trial step."""

    params: Any
    updates: Any
    value_and_grad: Callable
    kwargs: dict
    value_init: Any
    slope_init: Any
    guess: Any


class _Search(NamedTuple):
    """The search's loop carry: the last trial, the bracket ``[low, high]`` (``low``
    has the smaller value, it need not be the smaller step), the third point of the
    cubic fit, and the best step with sufficient decrease seen so far."""

    count: Any
    stepsize: Any
    value: Any
    grad: Any
    slope: Any
    decrease_error: Any
    curvature_error: Any
    error: Any
    interval_found: Any
    done: Any
    failed: Any
    low: Any
    value_low: Any
    slope_low: Any
    high: Any
    value_high: Any
    slope_high: Any
    cubic_ref: Any
    value_cubic_ref: Any
    safe_stepsize: Any
    safe_value: Any
    safe_grad: Any


def _cubic_min(a, fa, fpa, b, fb, c, fc):
    """The critical point of the cubic through (a, fa), (b, fb), (c, fc) with slope fpa
    at a; NaN when it has none (the caller then falls back)."""
    db, dc = b - a, c - a
    denom = (db * dc) ** 2 * (db - dc)
    basis = jnp.array([[dc**2, -(db**2)], [-(dc**3), db**3]])
    rhs = jnp.array([fb - fa - fpa * db, fc - fa - fpa * dc])
    p3, p2 = jnp.dot(basis, rhs, precision=jax.lax.Precision.HIGHEST) / denom
    return a + (-p2 + jnp.sqrt(p2 * p2 - 3.0 * p3 * fpa)) / (3.0 * p3)


def _quad_min(a, fa, fpa, b, fb):
    """The critical point of the parabola through (a, fa), (b, fb) with slope fpa at a."""
    db = b - a
    curv = (fb - fa - fpa * db) / (db**2)
    return a - fpa / (2.0 * curv)


class ScaleByZoomLinesearch(Transform):
    """Scales the update by a strong-Wolfe step; see :func:`scale_by_zoom_linesearch`."""

    max_linesearch_steps: Any
    max_learning_rate: Any
    tol: Any
    increase_factor: Any
    slope_rtol: Any
    curv_rtol: Any
    approx_dec_rtol: Any
    stepsize_precision: Any
    initial_guess_strategy: str = static_field(default="keep")
    verbose: bool = static_field(default=False)

    def init(self, params):
        hp.check_float_params("scale_by_zoom_linesearch", params)
        dtype = ls.value_dtype(params)
        return ScaleByZoomLinesearchState(
            learning_rate=jnp.asarray(1.0, dtype), value=jnp.asarray(jnp.inf, dtype),
            grad=jtree.zeros_like(params),
            info=ZoomLinesearchInfo(num_linesearch_steps=jnp.asarray(0),
                                    decrease_error=jnp.asarray(jnp.inf),
                                    curvature_error=jnp.asarray(jnp.inf)))

    # --- the two tests a step must pass ----------------------------------------------

    def _decrease_error(self, t, value, slope, line: _Line):
        """How far ``t`` misses sufficient decrease (Armijo; with ``approx_dec_rtol``,
        Hager & Zhang's approximate form near a minimum); NaN counts as infinite."""
        err = value - line.value_init - self.slope_rtol * t * line.slope_init
        if self.approx_dec_rtol is not None:
            approx = slope - (2 * self.slope_rtol - 1.0) * line.slope_init
            # Only trusted once the value is within a relative tolerance of the start.
            near = value - line.value_init - self.approx_dec_rtol * jnp.abs(line.value_init)
            err = jnp.minimum(jnp.maximum(approx, near), err)
        err = jnp.maximum(err, 0.0)
        return jnp.where(jnp.isnan(err), jnp.inf, err)

    def _curvature_error(self, slope, line: _Line):
        err = jnp.maximum(jnp.abs(slope) - self.curv_rtol * jnp.abs(line.slope_init), 0.0)
        return jnp.where(jnp.isnan(err), jnp.inf, err)

    def _probe(self, line: _Line, t):
        """The objective at ``params + t * updates``: value, gradient, slope along the
        line, and the two errors with their maximum."""
        value, grad = line.value_and_grad(ls.add_scale(line.params, t, line.updates),
                                          **line.kwargs)
        slope = ls.real_vdot(ls.conj(grad), line.updates)
        dec = self._decrease_error(t, value, slope, line)
        curv = self._curvature_error(slope, line)
        return value, grad, slope, dec, curv, jnp.maximum(dec, curv)

    # --- one iteration: widen the bracket, or zoom into it ---------------------------

    def _widen(self, line: _Line, s: _Search) -> _Search:
        """Algorithm 3.5: try a larger step until one brackets an acceptable step."""
        t = jnp.where(s.count == 0, line.guess, self.increase_factor * s.stepsize)
        at_max = jnp.asarray(False)
        if self.max_learning_rate is not None:
            at_max = t >= self.max_learning_rate
            t = jnp.minimum(t, self.max_learning_rate)
        value, grad, slope, dec, curv, err = self._probe(line, t)
        safe = ls.select(dec <= self.tol, [t, value, grad],
                         [s.safe_stepsize, s.safe_value, s.safe_grad])
        high_is_new = (dec > 0.0) | ((value >= s.value) & (s.count > 0))
        low_is_new = (slope >= 0.0) & ~high_is_new
        prev, new = [s.stepsize, s.value, s.slope], [t, value, slope]
        low, value_low, slope_low, high, value_high, slope_high = ls.select(
            low_is_new, new + prev, prev + new)
        found = high_is_new | low_is_new | (err <= self.tol)
        # At the largest step with nothing bracketed, no larger step can be tried.
        done = (err <= self.tol) | (at_max & ~found)
        failed = (s.count + 1 >= self.max_linesearch_steps) & ~done
        out = _Search(jtree.increment(s.count), t, value, grad, slope, dec, curv, err,
                      found, done, failed, low, value_low, slope_low, high, value_high,
                      slope_high, low, value_low, *safe)
        return ls.cast_like(out, s)

    def _trial_step(self, s: _Search):
        """The next trial inside the bracket: the cubic's minimiser, else the
        parabola's, else the midpoint (each only well inside the bracket)."""
        delta = jnp.abs(s.high - s.low)
        left, right = jnp.minimum(s.high, s.low), jnp.maximum(s.high, s.low)
        cubic = _cubic_min(s.low, s.value_low, s.slope_low, s.high, s.value_high,
                           s.cubic_ref, s.value_cubic_ref)
        use_cubic = (cubic > left + 0.2 * delta) & (cubic < right - 0.2 * delta)
        quad = _quad_min(s.low, s.value_low, s.slope_low, s.high, s.value_high)
        use_quad = ~use_cubic & (quad > left + 0.1 * delta) & (quad < right - 0.1 * delta)
        middle = jnp.where(use_cubic, cubic, jnp.where(use_quad, quad, (s.low + s.high) / 2.0))
        return middle, delta <= self.stepsize_precision

    def _zoom(self, line: _Line, s: _Search) -> _Search:
        """Algorithm 3.6: shrink the bracket around an acceptable step."""
        t, too_small = self._trial_step(s)
        value, grad, slope, dec, curv, err = self._probe(line, t)
        better = (dec <= self.tol) & (value < s.safe_value)
        safe = ls.select(better, [t, value, grad], [s.safe_stepsize, s.safe_value,
                                                     s.safe_grad])
        high_is_new = (dec > 0.0) | (value >= s.value_low)
        high_is_low = (slope * (s.high - s.low) >= 0.0) & ~high_is_new
        new, low_, high_ = [t, value, slope], [s.low, s.value_low, s.slope_low], \
            [s.high, s.value_high, s.slope_high]
        high = ls.select(high_is_new, new, ls.select(high_is_low, low_, high_))
        low = ls.select(~high_is_new, new, low_)
        # The point that left the bracket is the cubic's third point next time.
        ref = ls.select(high_is_new | high_is_low, high_[:2], low_[:2])
        done = err <= self.tol
        # Stop on a bracket below stepsize_precision only once a step with sufficient
        # decrease is in hand (steep objectives need very small steps).
        failed = (((s.count + 1) >= self.max_linesearch_steps)
                  | (too_small & (safe[0] > 0.0))) & ~done
        out = _Search(jtree.increment(s.count), t, value, grad, slope, dec, curv, err,
                      s.interval_found, done, failed, *low, *high, *ref, *safe)
        return ls.cast_like(out, s)

    def _fall_back(self, s: _Search) -> _Search:
        """On failure, take the best step with sufficient decrease if there is one
        (or whenever the last trial left the objective's domain)."""
        use_safe = (s.safe_stepsize > 0.0) | jnp.isinf(s.decrease_error)
        t, value, grad = ls.select(use_safe, [s.safe_stepsize, s.safe_value, s.safe_grad],
                                   [s.stepsize, s.value, s.grad])
        return ls.cast_like(s._replace(stepsize=t, value=value, grad=grad), s)

    def _step(self, line: _Line, s: _Search) -> _Search:
        s = jax.lax.cond(s.interval_found, lambda x: self._zoom(line, x),
                         lambda x: self._widen(line, x), s)
        return jax.lax.cond(s.failed, self._fall_back, lambda x: x, s)

    def _start(self, updates, params, value, grad, learning_rate) -> tuple[_Line, _Search]:
        dtype = ls.value_dtype(params)
        guess = jnp.asarray(1.0) if self.initial_guess_strategy == "one" else learning_rate
        slope = ls.real_vdot(updates, grad)
        value = jnp.asarray(value)
        zero, inf, false = jnp.asarray(0.0), jnp.asarray(jnp.inf), jnp.asarray(False)
        s = _Search(jnp.asarray(0), jnp.asarray(0.0, dtype), jnp.asarray(value, dtype),
                    grad, slope, inf, inf, inf, false, false, false,
                    zero, value, slope, zero, value, slope, zero, value, zero, value, grad)
        return _Line(params, updates, None, {}, value, slope, guess), s

    def update(self, updates, state, params=None, *, value=None, grad=None, value_fn=None,
               **extra_args):
        where = "scale_by_zoom_linesearch.update"
        kwargs = ls.objective_kwargs(where, value, grad, value_fn, extra_args)
        hp.require_params(where, params, "the line search evaluates the objective at "
                          "params + step * updates")
        line, s = self._start(updates, params, value, grad, state.learning_rate)
        line = line._replace(value_and_grad=jax.value_and_grad(value_fn), kwargs=kwargs)
        s = jax.lax.while_loop(lambda x: ~(x.done | x.failed),
                               lambda x: self._step(line, x), s)
        if self.verbose:
            ls.report_failure(
                (s.decrease_error > self.tol) | (s.curvature_error > self.tol),
                "scale_by_zoom_linesearch: no step met both Wolfe conditions in {n} "
                "evaluations (slope at 0: {slope}); taking step {t} with decrease error "
                "{dec} and curvature error {curv}.", n=s.count, slope=line.slope_init,
                t=s.stepsize, dec=s.decrease_error, curv=s.curvature_error)
        new = ScaleByZoomLinesearchState(
            learning_rate=s.stepsize, value=s.value, grad=s.grad,
            info=ZoomLinesearchInfo(s.count, s.decrease_error, s.curvature_error))
        return ls.scale(s.stepsize, updates), ls.cast_like(new, state)


def scale_by_zoom_linesearch(
    max_linesearch_steps: Any,
    max_learning_rate: Any = None,
    tol: Any = 0.0,
    increase_factor: Any = 2.0,
    slope_rtol: Any = 1e-4,
    curv_rtol: Any = 0.9,
    approx_dec_rtol: Any = 1e-6,
    stepsize_precision: Any = 1e-5,
    initial_guess_strategy: str = "keep",
    verbose: bool = False,
) -> ScaleByZoomLinesearch:
    """Scales the update ``u`` by a step ``t`` meeting the strong Wolfe conditions
    (optax's ``scale_by_zoom_linesearch``; Nocedal & Wright, 1999, Algorithms 3.5-3.6;
    Hager & Zhang, 2006).

    With ``f`` the objective, ``w`` the params, ``c1 = slope_rtol``,
    ``c2 = curv_rtol``, ``c3 = approx_dec_rtol`` and ``eps = tol``::

        decrease:   f(w + t u) <= f(w) + c1 t <u, grad f(w)> + eps
                    (or, where f(w + t u) <= f(w) + c3 |f(w)|, Hager & Zhang's
                     <grad f(w + t u), u> <= (2 c1 - 1) <grad f(w), u> + eps)
        curvature:  |<grad f(w + t u), u>| <= c2 |<grad f(w), u>| + eps
        u <- t u

    The first phase tries ``t0`` (1, or the last accepted step with
    ``initial_guess_strategy="keep"``), then ``increase_factor`` times larger steps up
    to ``max_learning_rate`` until a bracket holds an acceptable step; the second
    zooms into it by cubic, quadratic or bisection steps. After
    ``max_linesearch_steps`` evaluations (or once the bracket is narrower than
    ``stepsize_precision``) it takes the best step with sufficient decrease seen.

    The update takes optax's extra arguments: ``tx.update(u, state, params, *,
    value, grad, value_fn, **extra_args)`` with ``value, grad`` the objective and its
    gradient at ``params`` and ``extra_args`` the keyword arguments ``value_fn``
    takes. The state stores the value and gradient at the accepted params for
    :func:`jtricks.value_and_grad_from_state`.

    Args:
        max_linesearch_steps: the most objective evaluations per search, an integer
            >= 1.
        max_learning_rate: the largest step tried, > 0, or ``None`` for no bound.
        tol: slack on both conditions, >= 0.
        increase_factor: the factor between trial steps of the first phase, > 1.
        slope_rtol: ``c1``, in [0, 1).
        curv_rtol: ``c2``, > 0 (``inf`` turns the curvature test off).
        approx_dec_rtol: ``c3``, >= 0, or ``None`` for the plain decrease test only.
        stepsize_precision: the bracket width below which the search stops, >= 0.
        initial_guess_strategy: ``"one"`` (best after a quasi-Newton direction) or
            ``"keep"`` (best after plain gradient steps). Static.
        verbose: print a line when a search fails (static).

    Example:
        >>> tx = jt.chain(jt.sgd(1.0), jt.scale_by_zoom_linesearch(15))
        >>> updates, state = tx.update(grad, state, params, value=value, grad=grad,
        ...                            value_fn=f)
    """
    where = "scale_by_zoom_linesearch"
    names = ("max_linesearch_steps", "max_learning_rate", "tol", "increase_factor",
             "slope_rtol", "curv_rtol", "approx_dec_rtol", "stepsize_precision")
    values = (max_linesearch_steps, max_learning_rate, tol, increase_factor, slope_rtol,
              curv_rtol, approx_dec_rtol, stepsize_precision)
    for name, v in zip(names, values):
        hp.no_schedule(where, name, v, fix="A line search keeps no step count.")
    hp.check_integer(where, "max_linesearch_steps", max_linesearch_steps, low=1)
    if max_learning_rate is not None:
        hp.check_positive(where, "max_learning_rate", max_learning_rate)
    hp.check_nonnegative(where, "tol", tol)
    hp.check_range(where, "increase_factor", increase_factor, low=1.0, low_open=True,
                   fix="The first phase multiplies the step by it; 2 is usual.")
    hp.check_range(where, "slope_rtol", slope_rtol, low=0.0, high=1.0, high_open=True)
    hp.check_positive(where, "curv_rtol", curv_rtol)
    if approx_dec_rtol is not None:
        hp.check_nonnegative(where, "approx_dec_rtol", approx_dec_rtol)
    hp.check_nonnegative(where, "stepsize_precision", stepsize_precision)
    if initial_guess_strategy not in ("one", "keep"):
        raise ValueError(f"{hp.reporter(where)}: initial_guess_strategy must be 'one' or "
                         f"'keep', got {initial_guess_strategy!r}.")
    return ScaleByZoomLinesearch(*values, initial_guess_strategy=initial_guess_strategy,
                                 verbose=bool(verbose))
