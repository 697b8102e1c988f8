"""Piecewise schedules: values scaled at boundary steps, held or interpolated between,
and the one-cycle policies built from three such pieces.

``boundaries_and_scales = {b_1: s_1, ..., b_n: s_n}`` (sorted by step) defines the
levels ``L_0 = init_value`` and ``L_i = L_{i-1} * s_i``. :func:`piecewise_constant`
jumps from level to level at each boundary; :func:`piecewise_interpolate` moves from
``L_{i-1}`` at step ``b_{i-1}`` to ``L_i`` at step ``b_i`` (``b_0 = 0``) along a line or
a half cosine and holds ``L_n`` from ``b_n`` on.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks.base import Schedule, static_field
from jtricks.schedules._steps import step_count

__all__ = [
    "PiecewiseConstant",
    "PiecewiseInterpolate",
    "CosineOnecycle",
    "LinearOnecycle",
    "piecewise_constant",
    "piecewise_interpolate",
    "cosine_onecycle",
    "one_cycle",
    "linear_onecycle",
]

_KINDS = ("linear", "cosine")


# --- pieces and interpolation -------------------------------------------------------


def _pieces(where: str, boundaries_and_scales: Mapping[int, ArrayLike] | None
            ) -> tuple[tuple, tuple]:
    """The checked ``(boundaries, scales)`` of a ``{step: scale}`` mapping, by step."""
    pairs = dict(boundaries_and_scales or {})
    for boundary, factor in pairs.items():
        hp.check(where, "every boundary", boundary, lambda b: b >= 0, "a step number >= 0",
                 fix=f"In boundaries_and_scales={boundaries_and_scales!r}: use "
                 "{step: scale}, e.g. {1000: 0.1}.")
        hp.check_nonnegative(where, f"the scale at boundary {boundary}", factor,
                             fix="Scales multiply the value and must be >= 0, e.g. 0.1.")
    ordered = sorted(pairs.items())
    return (tuple(step_count(b) for b, _ in ordered), tuple(s for _, s in ordered))


def _between(kind: str, start: Any, end: Any, frac: jax.Array) -> jax.Array:
    """``start`` at ``frac = 0`` to ``end`` at ``frac = 1``, straight or as a half cosine."""
    if kind == "linear":
        return (end - start) * frac + start
    return end + (start - end) / 2 * (jnp.cos(jnp.pi * frac) + 1)


def interpolate_value(kind: str, init_value: Any, boundaries: tuple, scales: tuple,
                      count: jax.Array) -> jax.Array:
    """The piecewise interpolation of the module docstring at step ``count``.

    The levels are running products in the value's precision (``cumprod``), each
    piece's fraction is ``(k - b_{i-1}) / max(b_i - b_{i-1}, 1)``; an empty piece
    (a boundary at step 0) holds no step.
    """
    levels = jnp.cumprod(jnp.stack((init_value, *scales)))
    starts = (0, *boundaries)
    value = jnp.where(count >= starts[-1], levels[-1], 0.0)
    for i, (lo, hi) in enumerate(pairwise(starts)):
        frac = (count - lo) / jnp.maximum(hi - lo, 1)
        inside = (lo <= count) & (count < hi)
        value = jnp.where(inside, _between(kind, levels[i], levels[i + 1], frac), value)
    return value


def _phase_end(pct: Any, steps: Any) -> Any:
    """``int(pct * steps)``: the step where a phase of a one-cycle policy ends.

    Rounded exactly as ``int()`` rounds Python floats when both are known (so the
    boundary equals optax's), else floored in JAX.
    """
    n, p = hp.concrete(steps), hp.concrete(pct)
    if n is not None and p is not None and n.ndim == 0 and p.ndim == 0:
        return int(float(p) * float(n))
    return jnp.floor(jnp.asarray(pct) * steps)


# --- piecewise constant and interpolated --------------------------------------------


class PiecewiseConstant(Schedule):
    """``init * prod(scale_i for boundary_i <= k)``; see :func:`piecewise_constant`."""

    init_value: Any
    boundaries: tuple
    scales: tuple

    def __call__(self, count):
        value = jnp.asarray(self.init_value)  # products rounded in fp32, as optax's
        for boundary, factor in zip(self.boundaries, self.scales):
            value = jnp.where(count >= boundary, value * factor, value)
        return value


def piecewise_constant(init_value: ArrayLike,
                       boundaries_and_scales: Mapping[int, ArrayLike] | None = None
                       ) -> PiecewiseConstant:
    """Multiplies the value by ``scale`` from step ``boundary`` on, for each pair.

    ::

        v(k) = init_value * prod(scale for boundary, scale in pairs if k >= boundary)

    (``optax.piecewise_constant_schedule``).

    Args:
        init_value: the value before the first boundary.
        boundaries_and_scales: ``{step: scale}`` with steps >= 0 and scales >= 0;
            ``None`` or ``{}`` gives a constant.

    Example:
        >>> sched = jt.schedules.piecewise_constant(0.1, {100: 0.1, 200: 0.1})
        >>> float(sched(150))
        0.01...
    """
    where = "piecewise_constant"
    hp.check_finite(where, "init_value", init_value)
    boundaries, scales = _pieces(where, boundaries_and_scales)
    return PiecewiseConstant(init_value=init_value, boundaries=boundaries, scales=scales)


class PiecewiseInterpolate(Schedule):
    """Levels at boundaries, interpolated between; see :func:`piecewise_interpolate`."""

    interpolate_type: str = static_field()
    init_value: Any
    boundaries: tuple
    scales: tuple

    def __call__(self, count):
        return interpolate_value(self.interpolate_type, self.init_value, self.boundaries,
                                 self.scales, count)


def piecewise_interpolate(interpolate_type: str, init_value: ArrayLike,
                          boundaries_and_scales: Mapping[int, ArrayLike] | None = None
                          ) -> PiecewiseInterpolate:
    """Moves between levels scaled at boundary steps, along lines or half cosines.

    With the boundaries ``b_1 < ... < b_n`` (``b_0 = 0``), the levels
    ``L_0 = init_value``, ``L_i = L_{i-1} * scale_i`` and ``f = (k - b_{i-1}) /
    (b_i - b_{i-1})`` in piece ``i``::

        v(k) = L_{i-1} + (L_i - L_{i-1}) * f                    linear, b_{i-1} <= k < b_i
        v(k) = L_i + (L_{i-1} - L_i) / 2 * (cos(pi * f) + 1)    cosine, b_{i-1} <= k < b_i
        v(k) = L_n                                              k >= b_n

    The scales multiply into the levels: ``{4: 0.1, 8: 0.01}`` goes from
    ``init_value`` to ``0.1 * init_value`` at step 4 and to ``0.001 * init_value`` at
    step 8 (``optax.piecewise_interpolate_schedule``).

    Args:
        interpolate_type: ``"linear"`` or ``"cosine"`` (static: part of the structure).
        init_value: the level ``L_0`` at step 0.
        boundaries_and_scales: ``{step: scale}`` with steps >= 0 and scales >= 0;
            ``None`` or ``{}`` gives a constant.

    Example:
        >>> sched = jt.schedules.piecewise_interpolate("linear", 1.0, {4: 0.1, 8: 0.01})
        >>> [round(float(sched(k)), 4) for k in (0, 2, 4, 6, 8)]
        [1.0, 0.55, 0.1, 0.0505, 0.001]
    """
    where = "piecewise_interpolate"
    if interpolate_type not in _KINDS:
        raise ValueError(
            f"{where}: interpolate_type must be 'linear' or 'cosine', got "
            f"{interpolate_type!r}. 'linear' moves along straight lines between the "
            "levels, 'cosine' along half cosines."
        )
    hp.check_finite(where, "init_value", init_value)
    boundaries, scales = _pieces(where, boundaries_and_scales)
    return PiecewiseInterpolate(interpolate_type=interpolate_type, init_value=init_value,
                                boundaries=boundaries, scales=scales)


# --- one-cycle policies -------------------------------------------------------------


def _check_onecycle(where: str, transition_steps: Any, peak_value: Any, pct_start: Any,
                    div_factor: Any, final_div_factor: Any) -> None:
    hp.check_positive(where, "transition_steps", transition_steps,
                      fix="It is the length of the whole cycle in steps.")
    hp.check_finite(where, "peak_value", peak_value)
    hp.check_range(where, "pct_start", pct_start, low=0.0, high=1.0, high_open=True,
                   fix="It is the fraction of the cycle spent warming up, e.g. 0.3.")
    hp.check_positive(where, "div_factor", div_factor,
                      fix="The cycle starts at peak_value / div_factor, e.g. 25.")
    hp.check_positive(where, "final_div_factor", final_div_factor,
                      fix="The cycle ends at peak_value / (div_factor * "
                      "final_div_factor), e.g. 1e4.")


class CosineOnecycle(Schedule):
    """Cosine up to ``peak_value`` then down; see :func:`cosine_onecycle`."""

    transition_steps: Any
    rise_steps: Any
    peak_value: Any
    div_factor: Any
    final_div_factor: Any

    def __call__(self, count):
        d = self.div_factor
        return interpolate_value("cosine", self.peak_value / d,
                                 (self.rise_steps, self.transition_steps),
                                 (d, 1 / (d * self.final_div_factor)), count)


def cosine_onecycle(transition_steps: ArrayLike, peak_value: ArrayLike,
                    pct_start: ArrayLike = 0.3, div_factor: ArrayLike = 25.0,
                    final_div_factor: ArrayLike = 1e4) -> CosineOnecycle:
    """The one-cycle policy (Smith & Topin): cosine up to ``peak_value``, then down.

    With ``N = transition_steps``, ``R = int(pct_start * N)``,
    ``start = peak_value / div_factor`` and ``end = start / final_div_factor``, and
    ``c(a, b, f) = b + (a - b) / 2 * (cos(pi * f) + 1)`` (``a`` at ``f = 0``, ``b`` at
    ``f = 1``)::

        v(k) = c(start, peak, k / R)                for k < R
        v(k) = c(peak, end, (k - R) / (N - R))      for R <= k < N
        v(k) = end                                  for k >= N

    Equals ``optax.cosine_onecycle_schedule``; ``one_cycle`` is the same function
    under its earlier jtricks name.

    Args:
        transition_steps: the length ``N`` of the cycle, > 0.
        peak_value: the largest value, reached at step ``R``.
        pct_start: the fraction of the cycle spent rising, in [0, 1).
        div_factor: ``peak_value / div_factor`` is the value at step 0; > 0.
        final_div_factor: the final value is the initial one divided by this; > 0.

    Example:
        >>> sched = jt.schedules.cosine_onecycle(10_000, peak_value=1e-2)
        >>> [round(float(sched(k)), 6) for k in (0, 3_000, 10_000)]
        [0.0004, 0.01, 0.0]
    """
    where = "cosine_onecycle"
    transition_steps = step_count(transition_steps)
    _check_onecycle(where, transition_steps, peak_value, pct_start, div_factor,
                    final_div_factor)
    return CosineOnecycle(transition_steps=transition_steps,
                          rise_steps=step_count(_phase_end(pct_start, transition_steps)),
                          peak_value=peak_value, div_factor=div_factor,
                          final_div_factor=final_div_factor)


one_cycle = cosine_onecycle


class LinearOnecycle(Schedule):
    """Linear up to ``peak_value``, back, then down; see :func:`linear_onecycle`."""

    transition_steps: Any
    rise_steps: Any
    cycle_steps: Any
    peak_value: Any
    div_factor: Any
    final_div_factor: Any

    def __call__(self, count):
        d = self.div_factor
        return interpolate_value(
            "linear", self.peak_value / d,
            (self.rise_steps, self.cycle_steps, self.transition_steps),
            (d, 1 / d, 1 / self.final_div_factor), count)


def linear_onecycle(transition_steps: ArrayLike, peak_value: ArrayLike,
                    pct_start: ArrayLike = 0.3, pct_final: ArrayLike = 0.85,
                    div_factor: ArrayLike = 25.0,
                    final_div_factor: ArrayLike = 1e4) -> LinearOnecycle:
    """The one-cycle policy in three straight lines (Smith & Topin, super-convergence).

    With ``N = transition_steps``, ``R = int(pct_start * N)``, ``F = int(pct_final *
    N)``, ``start = peak_value / div_factor`` and ``end = start / final_div_factor``,
    each phase a straight line between the values at its ends::

        v(k): start -> peak   for 0 <= k < R
              peak -> start   for R <= k < F
              start -> end    for F <= k < N
              end             for k >= N

    (``optax.linear_onecycle_schedule``).

    Args:
        transition_steps: the length ``N`` of the cycle, > 0.
        peak_value: the largest value, reached at step ``R``.
        pct_start: the fraction of the cycle spent rising, in [0, 1).
        pct_final: the fraction of the cycle spent rising and falling back to
            ``start``, in (pct_start, 1); the rest anneals to ``end``.
        div_factor: ``peak_value / div_factor`` is the value at step 0; > 0.
        final_div_factor: the final value is the initial one divided by this; > 0.

    Example:
        >>> sched = jt.schedules.linear_onecycle(1000, 0.1)
        >>> [round(float(sched(k)), 4) for k in (0, 300, 850, 1000)]
        [0.004, 0.1, 0.004, 0.0]
    """
    where = "linear_onecycle"
    transition_steps = step_count(transition_steps)
    _check_onecycle(where, transition_steps, peak_value, pct_start, div_factor,
                    final_div_factor)
    rise, cycle = (step_count(_phase_end(pct_start, transition_steps)),
                   step_count(_phase_end(pct_final, transition_steps)))
    low, r = hp.concrete(pct_start), hp.concrete(rise)
    if low is not None:
        hp.check(where, "pct_final", pct_final, lambda p: (p > low) & (p < 1),
                 f"in (pct_start, 1) = ({pct_start!r}, 1)",
                 fix="It is the fraction of the cycle spent rising and falling back, "
                 "e.g. 0.85; the rest of the cycle anneals to the final value.")
    if r is not None:
        hp.check(where, "int(pct_final * transition_steps)", cycle, lambda f: f > r,
                 f"after int(pct_start * transition_steps) = {rise!r}",
                 fix=f"With transition_steps={transition_steps!r} the fall phase has no "
                 "step; move pct_final away from pct_start or use more steps.")
    return LinearOnecycle(transition_steps=transition_steps, rise_steps=rise,
                          cycle_steps=cycle, peak_value=peak_value, div_factor=div_factor,
                          final_div_factor=final_div_factor)
