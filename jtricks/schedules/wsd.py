"""Warmup-stable-decay (trapezoidal) schedules, the common shape of LLM pre-training."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks.base import Schedule, static_field
from jtricks.schedules._steps import step_count
from jtricks.schedules.decay import ramp_value

__all__ = ["WarmupStableDecay", "warmup_stable_decay"]

_DECAYS = ("linear", "cosine", "sqrt")


def _decayed(kind: str, peak: Any, end: Any, frac: Any) -> Any:
    """``peak`` at ``frac = 0`` to ``end`` at ``frac = 1`` along the named shape."""
    if kind == "linear":
        return peak + (end - peak) * frac
    if kind == "cosine":
        return end + (peak - end) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
    return end + (peak - end) * (1 - jnp.sqrt(frac))


class WarmupStableDecay(Schedule):
    """Warmup, a constant plateau, then a decay; see :func:`warmup_stable_decay`."""

    peak_value: Any
    warmup_steps: Any
    stable_steps: Any
    decay_steps: Any
    end_value: Any
    init_value: Any
    decay: str = static_field(default="linear")

    def __call__(self, count):
        w, s, d = self.warmup_steps, self.stable_steps, self.decay_steps
        # max(W, 1) keeps the (then unused) ramp finite when there is no warmup.
        warm = ramp_value(self.init_value, self.peak_value, jnp.maximum(w, 1), 0, count)
        frac = jnp.clip((count - w - s) / d, 0, 1)
        down = _decayed(self.decay, self.peak_value, self.end_value, frac)
        return jnp.where(count < w, warm, jnp.where(count < w + s, self.peak_value, down))


def warmup_stable_decay(peak_value: ArrayLike, warmup_steps: ArrayLike,
                        stable_steps: ArrayLike, decay_steps: ArrayLike,
                        end_value: ArrayLike = 0.0, decay: str = "linear", *,
                        init_value: ArrayLike = 0.0) -> WarmupStableDecay:
    """Warmup-stable-decay ("trapezoidal", WSD): a linear warmup to ``peak_value``,
    a plateau, then a short decay to ``end_value``.

    With ``W, S, D`` the three lengths and ``f = clip((k - W - S) / D, 0, 1)``::

        v(k) = init + (peak - init) * k / W              for k < W
        v(k) = peak                                      for W <= k < W + S
        v(k) = peak + (end - peak) * f                   decay="linear"
        v(k) = end + (peak - end) * (1 + cos(pi * f)) / 2    decay="cosine"
        v(k) = end + (peak - end) * (1 - sqrt(f))        decay="sqrt"

    so ``end_value`` holds from step ``W + S + D`` on. The "1 - sqrt" cooldown is the
    one Hägele et al. (2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed
    Training Durations") found best; a run can be extended by re-entering the plateau
    from any checkpoint taken before the decay.

    Args:
        peak_value: the plateau's value.
        warmup_steps: the length ``W`` of the warmup, >= 0 (0: start at the peak).
        stable_steps: the length ``S`` of the plateau, >= 0.
        decay_steps: the length ``D`` of the decay, > 0.
        end_value: the value from step ``W + S + D`` on.
        decay: the decay's shape, ``"linear"``, ``"cosine"`` or ``"sqrt"`` (static).
        init_value: the value at step 0 (a jtricks keyword; 0 by default).

    Example:
        >>> sched = jt.schedules.warmup_stable_decay(1e-3, 100, 800, 100)
        >>> [round(float(sched(k)), 6) for k in (50, 500, 950, 1000)]
        [0.0005, 0.001, 0.0005, 0.0]
    """
    where = "warmup_stable_decay"
    if decay not in _DECAYS:
        raise ValueError(f"{where}: decay must be one of {_DECAYS}, got {decay!r}.")
    warmup_steps, stable_steps, decay_steps = (step_count(warmup_steps),
                                               step_count(stable_steps),
                                               step_count(decay_steps))
    hp.check_finite(where, "peak_value", peak_value)
    hp.check_finite(where, "end_value", end_value)
    hp.check_finite(where, "init_value", init_value)
    hp.check_nonnegative(where, "warmup_steps", warmup_steps, fix="Use 0 for no warmup.")
    hp.check_nonnegative(where, "stable_steps", stable_steps,
                         fix="It is the number of steps held at peak_value.")
    hp.check_positive(where, "decay_steps", decay_steps,
                      fix="It is the length of the final decay, e.g. 10-20% of training; "
                      "for no decay use jt.schedules.warmup_constant.")
    return WarmupStableDecay(peak_value=peak_value, warmup_steps=warmup_steps,
                             stable_steps=stable_steps, decay_steps=decay_steps,
                             end_value=end_value, init_value=init_value, decay=decay)
