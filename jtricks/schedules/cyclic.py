"""Cyclical schedules in PyTorch's formulas: ``CyclicLR`` and
``CosineAnnealingWarmRestarts``, both closed-form in the step (so a traced step works)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks.base import Schedule, static_field
from jtricks.schedules._steps import step_count

__all__ = ["Cyclic", "CosineWarmRestarts", "cyclic", "cosine_warm_restarts"]

_MODES = ("triangular", "triangular2", "exp_range")


class Cyclic(Schedule):
    """A triangular wave between ``base`` and ``max``; see :func:`cyclic`."""

    base: Any
    max: Any
    step_size: Any
    gamma: Any
    mode: str = static_field(default="triangular")

    def __call__(self, count):
        k = jnp.asarray(count, jnp.float32)
        cycle = jnp.floor(1 + k / (2 * self.step_size))
        x = jnp.abs(k / self.step_size - 2 * cycle + 1)
        height = (self.max - self.base) * jnp.maximum(0.0, 1 - x)
        if self.mode == "triangular2":
            height = height / 2.0 ** (cycle - 1)
        elif self.mode == "exp_range":
            height = height * jnp.asarray(self.gamma, jnp.float32) ** k
        return self.base + height


def cyclic(base: ArrayLike, max: ArrayLike, step_size: ArrayLike,
           mode: str = "triangular", gamma: ArrayLike = 1.0) -> Cyclic:
    """Cyclical learning rates (Smith 2017), with PyTorch ``CyclicLR``'s formulas.

    Each cycle rises from ``base`` to ``max`` over ``step_size`` steps and falls back
    over as many (``step_size_up = step_size_down`` in PyTorch). With ``s = step_size``::

        cycle = floor(1 + k / (2 s))
        x     = |k / s - 2 cycle + 1|
        v(k)  = base + (max - base) * max(0, 1 - x) * scale

    where ``scale`` is 1 (``"triangular"``), ``1 / 2**(cycle - 1)`` (``"triangular2"``:
    the height halves every cycle) or ``gamma**k`` (``"exp_range"``). Step ``k`` here
    is PyTorch's ``last_epoch`` for the ``k``-th optimizer step, so the values match
    a ``CyclicLR`` stepped once per batch.

    Args:
        base: the value at the bottom of each cycle (PyTorch's ``base_lr``).
        max: the value at the top of the first cycle (``max_lr``), >= ``base``.
        step_size: steps from bottom to top, > 0 (``step_size_up``).
        mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"`` (static).
        gamma: the per-step factor of ``"exp_range"``, in (0, 1].

    Example:
        >>> sched = jt.schedules.cyclic(1e-4, 1e-2, 100)
        >>> [round(float(sched(k)), 6) for k in (0, 50, 100, 200)]
        [0.0001, 0.00505, 0.01, 0.0001]
    """
    where = "cyclic"
    if mode not in _MODES:
        raise ValueError(f"{where}: mode must be one of {_MODES}, got {mode!r}.")
    step_size = step_count(step_size)
    hp.check_finite(where, "base", base)
    hp.check_finite(where, "max", max)
    low = hp.concrete(base)
    if low is not None:
        hp.check(where, "max", max, lambda m: m >= low, f">= base ({base!r})",
                 fix="max is the top of the cycle and base its bottom; swap them?")
    hp.check_positive(where, "step_size", step_size,
                      fix="It is the number of steps from the bottom of a cycle to its "
                      "top, e.g. 2-10 epochs of steps.")
    hp.check_range(where, "gamma", gamma, low=0.0, high=1.0, low_open=True,
                   fix="gamma shrinks the cycle's height per step in exp_range mode, "
                   "e.g. 0.9999.")
    return Cyclic(base=base, max=max, step_size=step_size, gamma=gamma, mode=mode)


class CosineWarmRestarts(Schedule):
    """Cosine annealing restarted every cycle; see :func:`cosine_warm_restarts`."""

    init_value: Any
    t_0: Any
    t_mult: Any
    eta_min: Any

    def __call__(self, count):
        k = jnp.asarray(count, jnp.float32)
        t0 = jnp.asarray(self.t_0, jnp.float32)
        m = jnp.asarray(self.t_mult, jnp.float32)
        grows = m > 1
        base = jnp.where(grows, m, 2.0)  # a safe log base where t_mult == 1

        def start(n):
            # The first step of cycle n: t0 * (1 + m + ... + m**(n-1)), an integer, so
            # rounding removes the error of the float power.
            return jnp.round(jnp.where(grows, t0 * (base**n - 1) / (base - 1), t0 * n))

        guess = jnp.where(grows, jnp.floor(jnp.log1p(k / t0 * (base - 1)) / jnp.log(base)),
                          jnp.floor(k / t0))
        # The float guess can be one off next to a restart; settle it exactly.
        n = jnp.where(k >= start(guess + 1), guess + 1, guess)
        n = jnp.maximum(jnp.where(k < start(n), n - 1, n), 0)
        length = jnp.round(t0 * jnp.where(grows, base**n, 1.0))
        t_cur = k - start(n)
        return self.eta_min + (self.init_value - self.eta_min) * 0.5 * (
            1 + jnp.cos(jnp.pi * t_cur / length))


def cosine_warm_restarts(init_value: ArrayLike, t_0: ArrayLike, t_mult: ArrayLike = 1,
                         eta_min: ArrayLike = 0.0) -> CosineWarmRestarts:
    """Cosine annealing with warm restarts (Loshchilov & Hutter, SGDR), in PyTorch
    ``CosineAnnealingWarmRestarts``' formulas, closed-form in the step.

    Cycle ``i`` lasts ``T_i = t_0 * t_mult**i`` steps and starts at
    ``S_i = t_0 * (t_mult**i - 1) / (t_mult - 1)`` (``t_0 * i`` for ``t_mult = 1``).
    With ``i`` the cycle holding step ``k`` and ``T_cur = k - S_i``::

        v(k) = eta_min + (init_value - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2

    ``i`` is ``floor(log(k / t_0 * (t_mult - 1) + 1) / log(t_mult))`` (PyTorch's
    closed form), settled exactly against ``S_i`` next to each restart, so it works
    with a traced ``k``. Unlike :func:`sgdr` the cycles need not be listed.

    Args:
        init_value: the value at the start of every cycle (PyTorch's initial lr).
        t_0: the length of the first cycle, an integer >= 1.
        t_mult: the factor by which each cycle is longer than the last, an integer
            >= 1.
        eta_min: the value each cycle anneals towards.

    Example:
        >>> sched = jt.schedules.cosine_warm_restarts(0.1, 10, t_mult=2)
        >>> [round(float(sched(k)), 4) for k in (0, 5, 10, 20, 30)]   # restarts: 10, 30
        [0.1, 0.05, 0.1, 0.05, 0.1]
    """
    where = "cosine_warm_restarts"
    hp.check_finite(where, "init_value", init_value)
    hp.check_finite(where, "eta_min", eta_min)
    hp.check_integer(where, "t_0", t_0, low=1,
                     fix="It is the length of the first cycle in steps, as in PyTorch.")
    hp.check_integer(where, "t_mult", t_mult, low=1,
                     fix="Each cycle is t_mult times longer than the last; use 1 for "
                     "equal cycles or 2 to double them.")
    return CosineWarmRestarts(init_value=init_value, t_0=t_0, t_mult=t_mult,
                              eta_min=eta_min)
