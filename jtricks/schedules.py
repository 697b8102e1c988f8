"""Learning-rate (and any hyperparameter) schedules as pytrees.

A schedule is a :class:`Schedule`: a frozen dataclass pytree whose numeric fields are
leaves, called with the 0-based update count: ``lr = schedule(count)``. Because the
constants are data, a jitted step compiles once for ``cosine_decay(1e-3, 1000)`` and
``cosine_decay(3e-4, 1000)``, and a sweep over peak values can be ``vmap``-ped::

    scheds = [jt.schedules.cosine_decay(v, 1000) for v in (1e-3, 3e-4)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *scheds)
    lrs = jax.vmap(lambda s: s(count))(stacked)        # one program, two values

Structural choices (``staircase``, whether an ``end_value`` exists, the kind of
schedule, the number of pieces) live in the treedef. Every schedule gives the same
values as its optax twin (``optax.exponential_decay``, ``optax.cosine_decay_schedule``,
...), but refuses bad constants with an error where optax would log and carry on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks.base import Struct, static_field

__all__ = [
    "Schedule",
    "FunctionSchedule",
    "Constant",
    "ExponentialDecay",
    "PiecewiseConstant",
    "Linear",
    "CosineDecay",
    "WarmupCosineDecay",
    "OneCycle",
    "Join",
    "constant",
    "exponential_decay",
    "piecewise_constant",
    "linear",
    "cosine_decay",
    "warmup_cosine_decay",
    "one_cycle",
    "join",
]


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


# --- validation helpers -------------------------------------------------------------


def _check_positive(where: str, name: str, value: Any, fix: str = "") -> None:
    hp.check_range(where, name, value, low=0.0, low_open=True, fix=fix)


def _check_nonnegative(where: str, name: str, value: Any, fix: str = "") -> None:
    hp.check_range(where, name, value, low=0.0, fix=fix)


def _check_finite(where: str, name: str, value: Any) -> None:
    hp.check_range(where, name, value)


def _python_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _ratio(num: Any, den: Any) -> Any:
    """``num / den``, or 0 where ``den == 0`` (computed in Python when both are)."""
    if _python_number(num) and _python_number(den):
        return 0.0 if den == 0 else num / den
    safe = jnp.where(den == 0, 1, den)
    return jnp.where(den == 0, 0.0, num / safe)


def _cosine(init_value: Any, decay_steps: Any, alpha: Any, exponent: Any,
            count: jax.Array) -> jax.Array:
    """``init * ((1 - alpha) * (0.5 * (1 + cos(pi * min(t, T) / T))) ** p + alpha)``."""
    t = jnp.minimum(count, decay_steps)
    half_cos = 0.5 * (1 + jnp.cos(jnp.pi * t / decay_steps))
    return init_value * ((1 - alpha) * half_cos**exponent + alpha)


# --- the schedules ------------------------------------------------------------------


class Constant(Schedule):
    """``value`` at every step; see :func:`constant`."""

    value: Any

    def __call__(self, count):
        del count
        return jnp.asarray(self.value)


def constant(value: ArrayLike) -> Constant:
    """The same value at every step: ``v(k) = value``.

    Example:
        >>> jt.schedules.constant(1e-3)(10)
        Array(0.001, dtype=float32, weak_type=True)
    """
    _check_finite("constant", "value", value)
    return Constant(value=value)


class ExponentialDecay(Schedule):
    """``init * rate ** ((k - begin) / steps)``; see :func:`exponential_decay`."""

    init_value: Any
    decay_rate: Any
    transition_steps: Any
    transition_begin: Any
    end_value: Any
    staircase: bool = static_field(default=False)

    def __call__(self, count):
        t = count - self.transition_begin
        p = t / self.transition_steps
        if self.staircase:
            p = jnp.floor(p)
        value = jnp.where(t <= 0, self.init_value,
                          self.init_value * jnp.power(self.decay_rate, p))
        if self.end_value is not None:
            # end_value is a floor for a decay and a ceiling for a growth.
            value = jnp.where(self.decay_rate < 1, jnp.maximum(value, self.end_value),
                              jnp.minimum(value, self.end_value))
        return value


def exponential_decay(init_value: ArrayLike, decay_rate: ArrayLike,
                      transition_steps: ArrayLike, transition_begin: ArrayLike = 0,
                      staircase: bool = False,
                      end_value: ArrayLike | None = None) -> ExponentialDecay:
    """Multiplies the value by ``decay_rate`` every ``transition_steps`` steps.

    With ``t = k - transition_begin`` for update ``k``::

        v(k) = init_value                                   if t <= 0
        v(k) = init_value * decay_rate ** (t / transition_steps)   otherwise

    where ``t / transition_steps`` is rounded down when ``staircase=True``; the
    result is clipped at ``end_value`` (from below when ``decay_rate < 1``, from
    above when it grows). The lesson's "multiply the rate by 0.98 after every epoch"
    is ``exponential_decay(lr, 0.98, steps_per_epoch, staircase=True)``, which gives
    ``lr * 0.98 ** epoch``.

    Note the argument order: ``(init_value, decay_rate, transition_steps)``, whereas
    ``optax.exponential_decay`` takes ``(init_value, transition_steps, decay_rate)``;
    pass keywords when porting code.

    Args:
        init_value: the value before decay starts.
        decay_rate: the factor per ``transition_steps`` steps, > 0 (< 1 decays).
        transition_steps: steps per factor of ``decay_rate``, > 0.
        transition_begin: steps to hold ``init_value`` before decaying, >= 0.
        staircase: decay in discrete jumps instead of continuously.
        end_value: optional bound the value never passes.

    Example:
        >>> sched = jt.schedules.exponential_decay(0.1, 0.98, 100, staircase=True)
        >>> float(sched(250))  # 0.1 * 0.98 ** 2
        0.09604...
    """
    where = "exponential_decay"
    rate = hp.concrete(decay_rate)
    steps = hp.concrete(transition_steps)
    if (rate is not None and steps is not None and np.all(rate > 1)
            and np.all((steps > 0) & (steps < 1))):
        raise ValueError(
            f"{where}: got decay_rate={decay_rate!r} and transition_steps="
            f"{transition_steps!r}; these look swapped. jtricks takes (init_value, "
            "decay_rate, transition_steps) while optax.exponential_decay takes "
            "(init_value, transition_steps, decay_rate); pass them by keyword."
        )
    _check_finite(where, "init_value", init_value)
    _check_positive(where, "decay_rate", decay_rate,
                    fix="Use a factor such as 0.98 (decay) or 1.02 (growth); for a "
                    "constant value use jt.schedules.constant.")
    _check_positive(where, "transition_steps", transition_steps,
                    fix="It is the number of steps per factor of decay_rate, e.g. the "
                    "number of steps per epoch.")
    _check_nonnegative(where, "transition_begin", transition_begin,
                       fix="It is the number of steps to hold init_value; use 0 to "
                       "start decaying at once.")
    if end_value is not None:
        _check_finite(where, "end_value", end_value)
    return ExponentialDecay(init_value=init_value, decay_rate=decay_rate,
                            transition_steps=transition_steps,
                            transition_begin=transition_begin, end_value=end_value,
                            staircase=bool(staircase))


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
    _check_finite(where, "init_value", init_value)
    pairs = dict(boundaries_and_scales or {})
    for boundary, factor in pairs.items():
        if not _python_number(boundary) or boundary < 0:
            raise ValueError(
                f"{where}: every boundary must be a step number >= 0, got "
                f"{boundary!r} in boundaries_and_scales={boundaries_and_scales!r}. "
                "Use {step: scale}, e.g. {1000: 0.1}."
            )
        _check_nonnegative(where, f"the scale at boundary {boundary}", factor,
                           fix="Scales multiply the value and must be >= 0, e.g. 0.1.")
    ordered = sorted(pairs.items())
    return PiecewiseConstant(init_value=init_value,
                             boundaries=tuple(b for b, _ in ordered),
                             scales=tuple(s for _, s in ordered))


class Linear(Schedule):
    """Linear ramp from ``init_value`` to ``end_value``; see :func:`linear`."""

    init_value: Any
    end_value: Any
    transition_steps: Any
    transition_begin: Any

    def __call__(self, count):
        t = jnp.clip(count - self.transition_begin, 0, self.transition_steps)
        frac = 1 - t / self.transition_steps
        return (self.init_value - self.end_value) * frac + self.end_value


def linear(init_value: ArrayLike, end_value: ArrayLike, transition_steps: ArrayLike,
           transition_begin: ArrayLike = 0) -> Linear:
    """Moves linearly from ``init_value`` to ``end_value`` over ``transition_steps``.

    With ``B = transition_begin`` and ``T = transition_steps``::

        v(k) = I + (E - I) * clip(k - B, 0, T) / T

    so the value is ``I`` up to step ``B`` and ``E`` from step ``B + T`` on
    (``optax.linear_schedule``).

    Args:
        init_value: the starting value ``I``.
        end_value: the final value ``E``.
        transition_steps: the length ``T`` of the ramp, > 0.
        transition_begin: steps ``B`` to hold ``init_value`` first, >= 0.

    Example:
        >>> warmup = jt.schedules.linear(0.0, 1e-3, 500)
    """
    where = "linear"
    _check_finite(where, "init_value", init_value)
    _check_finite(where, "end_value", end_value)
    _check_positive(where, "transition_steps", transition_steps,
                    fix="It is the length of the ramp in steps; for a constant value "
                    "use jt.schedules.constant.")
    _check_nonnegative(where, "transition_begin", transition_begin,
                       fix="Use 0 to start the ramp at once.")
    return Linear(init_value=init_value, end_value=end_value,
                  transition_steps=transition_steps, transition_begin=transition_begin)


class CosineDecay(Schedule):
    """Half-cosine from ``init_value`` to ``alpha * init_value``; see :func:`cosine_decay`."""

    init_value: Any
    decay_steps: Any
    alpha: Any
    exponent: Any

    def __call__(self, count):
        return _cosine(self.init_value, self.decay_steps, self.alpha, self.exponent, count)


def cosine_decay(init_value: ArrayLike, decay_steps: ArrayLike, alpha: ArrayLike = 0.0,
                 exponent: ArrayLike = 1.0) -> CosineDecay:
    """Cosine annealing (Loshchilov & Hutter, SGDR) over ``decay_steps`` steps.

    With ``T = decay_steps`` and ``t = min(k, T)``::

        v(k) = init_value * ((1 - alpha) * (0.5 * (1 + cos(pi * t / T))) ** exponent + alpha)

    Args:
        init_value: the value at step 0.
        decay_steps: the length ``T`` of the decay, > 0.
        alpha: the final value as a fraction of ``init_value``.
        exponent: sharpens (> 1) or flattens (< 1) the cosine; > 0.

    Example:
        >>> sched = jt.schedules.cosine_decay(1e-3, 10_000)
    """
    where = "cosine_decay"
    _check_finite(where, "init_value", init_value)
    _check_positive(where, "decay_steps", decay_steps,
                    fix="It is the number of steps over which to decay, e.g. the "
                    "total number of training steps.")
    _check_finite(where, "alpha", alpha)
    _check_positive(where, "exponent", exponent)
    return CosineDecay(init_value=init_value, decay_steps=decay_steps, alpha=alpha,
                       exponent=exponent)


class WarmupCosineDecay(Schedule):
    """Linear warmup, then cosine decay; see :func:`warmup_cosine_decay`."""

    init_value: Any
    peak_value: Any
    warmup_steps: Any
    decay_steps: Any
    end_value: Any
    exponent: Any

    def __call__(self, count):
        w = self.warmup_steps
        # Warmup: a linear ramp init -> peak over w steps (max() keeps w = 0 finite).
        t = jnp.clip(count, 0, w)
        frac = 1 - t / jnp.maximum(w, 1)
        warm = (self.init_value - self.peak_value) * frac + self.peak_value
        alpha = _ratio(self.end_value, self.peak_value)
        decay = _cosine(self.peak_value, self.decay_steps - w, alpha, self.exponent,
                        count - w)
        return jnp.where(count < w, warm, decay)


def warmup_cosine_decay(init_value: ArrayLike, peak_value: ArrayLike,
                        warmup_steps: ArrayLike, decay_steps: ArrayLike,
                        end_value: ArrayLike = 0.0,
                        exponent: ArrayLike = 1.0) -> WarmupCosineDecay:
    """A linear warmup to ``peak_value``, then a cosine decay to ``end_value``.

    ``decay_steps`` is the length of the whole schedule and includes the warmup (as in
    ``optax.warmup_cosine_decay_schedule``). With ``W = warmup_steps`` and
    ``D = decay_steps``::

        v(k) = init + (peak - init) * k / W                            for k < W
        v(k) = cosine_decay(peak, D - W, end / peak, exponent)(k - W)  for k >= W

    Args:
        init_value: the value at step 0.
        peak_value: the value reached at the end of the warmup.
        warmup_steps: the length ``W`` of the warmup, >= 0.
        decay_steps: the total length ``D``, warmup included; ``D > W``.
        end_value: the value from step ``D`` on.
        exponent: the cosine's exponent (see :func:`cosine_decay`), > 0.

    Example:
        >>> sched = jt.schedules.warmup_cosine_decay(0.0, 1e-3, 500, 10_000)
    """
    where = "warmup_cosine_decay"
    for name, value in (("init_value", init_value), ("peak_value", peak_value),
                        ("end_value", end_value)):
        _check_finite(where, name, value)
    _check_nonnegative(where, "warmup_steps", warmup_steps,
                       fix="Use 0 for no warmup.")
    _check_positive(where, "decay_steps", decay_steps,
                    fix="It is the total number of steps, warmup included.")
    _check_positive(where, "exponent", exponent)
    w, d = hp.concrete(warmup_steps), hp.concrete(decay_steps)
    if w is not None and d is not None and np.any(w >= d):
        raise ValueError(
            f"{where}: decay_steps must be greater than warmup_steps, got warmup_steps="
            f"{warmup_steps!r} and decay_steps={decay_steps!r}. decay_steps is the "
            "length of the whole schedule and includes the warmup (as in optax); for "
            f"a cosine phase of n steps after the warmup pass decay_steps={warmup_steps!r}"
            " + n."
        )
    return WarmupCosineDecay(init_value=init_value, peak_value=peak_value,
                             warmup_steps=warmup_steps, decay_steps=decay_steps,
                             end_value=end_value, exponent=exponent)


class OneCycle(Schedule):
    """Cosine up to ``peak_value`` then down; see :func:`one_cycle`."""

    transition_steps: Any
    rise_steps: Any
    peak_value: Any
    div_factor: Any
    final_div_factor: Any

    def __call__(self, count):
        r, n = self.rise_steps, self.transition_steps
        # The three levels are rounded like optax's (start in fp32, then products).
        start = jnp.asarray(self.peak_value / self.div_factor)
        top = start * self.div_factor
        end = top * (1 / (self.div_factor * self.final_div_factor))

        def half_cosine(a, b, frac):  # a at frac = 0, b at frac = 1
            return b + (a - b) / 2 * (jnp.cos(jnp.pi * frac) + 1)

        rise = half_cosine(start, top, count / jnp.maximum(r, 1))
        fall = half_cosine(top, end, (count - r) / jnp.maximum(n - r, 1))
        return jnp.where(count < r, rise, jnp.where(count < n, fall, end))


def one_cycle(transition_steps: ArrayLike, peak_value: ArrayLike,
              pct_start: ArrayLike = 0.3, div_factor: ArrayLike = 25.0,
              final_div_factor: ArrayLike = 1e4) -> OneCycle:
    """The one-cycle policy (Smith & Topin): cosine up to ``peak_value``, then down.

    With ``N = transition_steps``, ``R = floor(pct_start * N)``,
    ``start = peak_value / div_factor`` and ``end = start / final_div_factor``, and
    ``c(a, b, f) = b + (a - b) / 2 * (cos(pi * f) + 1)`` (``a`` at ``f = 0``, ``b`` at
    ``f = 1``)::

        v(k) = c(start, peak, k / R)                for k < R
        v(k) = c(peak, end, (k - R) / (N - R))      for R <= k < N
        v(k) = end                                  for k >= N

    Equals ``optax.cosine_onecycle_schedule``.

    Args:
        transition_steps: the length ``N`` of the cycle, > 0.
        peak_value: the largest value, reached at step ``R``.
        pct_start: the fraction of the cycle spent rising, in [0, 1).
        div_factor: ``peak_value / div_factor`` is the value at step 0; > 0.
        final_div_factor: the final value is the initial one divided by this; > 0.

    Example:
        >>> sched = jt.schedules.one_cycle(10_000, peak_value=1e-2)
    """
    where = "one_cycle"
    _check_positive(where, "transition_steps", transition_steps,
                    fix="It is the length of the whole cycle in steps.")
    _check_finite(where, "peak_value", peak_value)
    hp.check_range(where, "pct_start", pct_start, low=0.0, high=1.0, high_open=True,
                   fix="It is the fraction of the cycle spent warming up, e.g. 0.3.")
    _check_positive(where, "div_factor", div_factor)
    _check_positive(where, "final_div_factor", final_div_factor)
    n, pct = hp.concrete(transition_steps), hp.concrete(pct_start)
    if n is not None and pct is not None and n.ndim == 0 and pct.ndim == 0:
        # Round exactly as int() does on Python floats, so the boundary equals optax's.
        rise_steps = int(float(pct) * float(n))
    else:
        rise_steps = jnp.floor(jnp.asarray(pct_start) * transition_steps).astype(jnp.int32)
    return OneCycle(transition_steps=transition_steps, rise_steps=rise_steps,
                    peak_value=peak_value, div_factor=div_factor,
                    final_div_factor=final_div_factor)


class Join(Schedule):
    """Runs ``schedules[i]`` from ``boundaries[i-1]`` on; see :func:`join`."""

    schedules: tuple
    boundaries: tuple

    def __call__(self, count):
        value = self.schedules[0](count)
        for boundary, schedule in zip(self.boundaries, self.schedules[1:]):
            value = jnp.where(count < boundary, value, schedule(count - boundary))
        return value


def join(schedules: Sequence[Callable], boundaries: Sequence[ArrayLike]) -> Join:
    """Runs schedules one after the other, each restarted from its own step 0.

    With boundaries ``b_1 <= ... <= b_n`` (and ``b_0 = 0``), step ``k`` in
    ``[b_i, b_{i+1})`` gets ``schedules[i](k - b_i)`` (``optax.join_schedules``).

    Args:
        schedules: ``n + 1`` schedules (jtricks schedules or plain functions).
        boundaries: ``n`` non-decreasing steps >= 0 where the next schedule starts.

    Example:
        >>> warm = jt.schedules.linear(0.0, 1e-3, 100)
        >>> decay = jt.schedules.cosine_decay(1e-3, 900)
        >>> sched = jt.schedules.join([warm, decay], [100])
    """
    where = "join"
    schedules = tuple(schedules)
    boundaries = tuple(boundaries)
    if not schedules:
        raise ValueError(f"{where}: schedules is empty; give at least one schedule.")
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(
                f"{where}: schedules[{i}] must be a schedule (a callable count -> "
                f"value), got {type(s).__name__}: {s!r}. Wrap a number with "
                "jt.schedules.constant(value)."
            )
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"{where}: {len(schedules)} schedules need {len(schedules) - 1} boundaries "
            f"(one per switch), got {len(boundaries)}: {boundaries!r}."
        )
    for i, b in enumerate(boundaries):
        _check_nonnegative(where, f"boundaries[{i}]", b)
    known = [hp.concrete(b) for b in boundaries]
    for i in range(1, len(boundaries)):
        prev, cur = known[i - 1], known[i]
        if prev is not None and cur is not None and np.any(cur < prev):
            raise ValueError(
                f"{where}: boundaries must be non-decreasing, got {boundaries!r} "
                f"(boundaries[{i}] < boundaries[{i - 1}]). List the steps where each "
                "next schedule starts, in order."
            )
    return Join(schedules=tuple(hp.as_hyper(s) for s in schedules), boundaries=boundaries)
