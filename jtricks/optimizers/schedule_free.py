"""Schedule-Free SGD and AdamW (Defazio et al., 2024): :func:`schedule_free` around a
momentum-free base optimizer, as optax's ``contrib.schedule_free_sgd`` / ``_adamw``.

Each ``learning_rate`` is a float or an array; ``warmup_steps`` turns it into optax's
linear warmup from 0, the one schedule these optimizers are meant to run with.
"""

from __future__ import annotations

from typing import Any

from jtricks import hyperparams as hp
from jtricks.base import chain
from jtricks.optimizers.sgd import sgd
from jtricks.schedules.warmups import warmup_constant
from jtricks.transforms.adaptive import scale_by_rms
from jtricks.transforms.decay import add_decayed_weights
from jtricks.transforms.scaling import scale_by_learning_rate
from jtricks.transforms.schedule_free import ScheduleFree, schedule_free

__all__ = ["schedule_free_sgd", "schedule_free_adamw"]


def _warmed_up(learning_rate: Any, warmup_steps: Any) -> Any:
    """``learning_rate``, or a linear warmup from 0 to it over ``warmup_steps``."""
    if warmup_steps is None:
        return learning_rate
    return warmup_constant(0.0, learning_rate, warmup_steps)


def schedule_free_sgd(learning_rate: Any = 1.0, warmup_steps: int | None = None,
                      b1: Any = 0.9, weight_decay: Any = None, weight_lr_power: Any = 2.0,
                      state_dtype: Any = None) -> ScheduleFree:
    """Schedule-Free SGD: plain SGD steps ``z``, the params interpolate between ``z``
    and the running average ``x``
    (see :func:`~jtricks.transforms.schedule_free.schedule_free`)::

        z <- z - lr(t) * (g + weight_decay * y)         (g taken at the params y)
        x <- (1 - c_t) * x + c_t * z,   c_t = lr_max**p / sum of lr_max**p so far
        y <- b1 * x + (1 - b1) * z

    with ``lr(t)`` the warmup (if any) and ``p = weight_lr_power``. The decay is
    scaled by the learning rate, as in PyTorch. Evaluate at
    ``schedule_free_eval_params(state, params)``. Same numbers and state as optax's
    ``contrib.schedule_free_sgd``.

    Paper: A. Defazio, X. Yang, H. Mehta, K. Mishchenko, A. Khaled, A. Cutkosky,
    "The Road Less Scheduled", 2024 (arXiv:2405.15682).

    Args:
        learning_rate: SGD's step size, >= 0 (a float or an array).
        warmup_steps: the length of a linear warmup from 0, an integer > 0, or
            ``None`` for none.
        b1: the interpolation weight, in (0, 1].
        weight_decay: the decay rate, >= 0, or ``None`` for none.
        weight_lr_power: the power of the learning rate in the averaging weight, >= 0.
        state_dtype: dtype of ``z`` (static); ``None`` keeps the params' dtypes.

    Example:
        >>> tx = jt.schedule_free_sgd(0.1, warmup_steps=100)
    """
    with hp.reporting_as("schedule_free_sgd"):
        hp.check_learning_rate("schedule_free_sgd", learning_rate)
        learning_rate = _warmed_up(learning_rate, warmup_steps)
        base = sgd(learning_rate)
        if weight_decay is not None:
            base = chain(add_decayed_weights(weight_decay), base)
        return schedule_free(base, learning_rate, b1=b1, weight_lr_power=weight_lr_power,
                             state_dtype=state_dtype)


def schedule_free_adamw(learning_rate: Any = 0.0025, warmup_steps: int | None = None,
                        b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
                        weight_decay: Any = 0.0, weight_lr_power: Any = 2.0,
                        state_dtype: Any = None) -> ScheduleFree:
    """Schedule-Free AdamW: momentum-free AdamW steps ``z``, the params interpolate
    between ``z`` and the running average ``x``
    (see :func:`~jtricks.transforms.schedule_free.schedule_free`)::

        nu <- b2 * nu + (1 - b2) * g**2
        z  <- z - lr(t) * (g / (sqrt(nu / (1 - b2**t)) + eps) + weight_decay * y)
        x  <- (1 - c_t) * x + c_t * z,   c_t = lr_max**p / sum of lr_max**p so far
        y  <- b1 * x + (1 - b1) * z

    The base is ``chain(scale_by_rms(b2, eps, eps_in_sqrt=False,
    bias_correction=True), add_decayed_weights(weight_decay),
    scale_by_learning_rate(lr))``: Adam with ``b1 = 0`` without its all-zero first
    moment, as optax builds it. Evaluate at ``schedule_free_eval_params(state,
    params)``. Same numbers and state as optax's ``contrib.schedule_free_adamw``.

    Paper: A. Defazio, X. Yang, H. Mehta, K. Mishchenko, A. Khaled, A. Cutkosky,
    "The Road Less Scheduled", 2024 (arXiv:2405.15682).

    Args:
        learning_rate: the step size, >= 0 (a float or an array).
        warmup_steps: the length of a linear warmup from 0, an integer > 0, or
            ``None`` for none.
        b1: the interpolation weight, in (0, 1].
        b2: the decay of the second moment, in [0, 1).
        eps: added to the root of the second moment, >= 0.
        weight_decay: the decay rate, >= 0.
        weight_lr_power: the power of the learning rate in the averaging weight, >= 0.
        state_dtype: dtype of ``z`` (static); ``None`` keeps the params' dtypes.

    Example:
        >>> tx = jt.schedule_free_adamw(1e-3, warmup_steps=100, weight_decay=1e-4)
    """
    with hp.reporting_as("schedule_free_adamw"):
        hp.check_learning_rate("schedule_free_adamw", learning_rate)
        hp.check_decay("schedule_free_adamw", "b2", b2)  # named b2, not the rms's decay
        learning_rate = _warmed_up(learning_rate, warmup_steps)
        base = chain(scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True),
                     add_decayed_weights(weight_decay), scale_by_learning_rate(learning_rate))
        return schedule_free(base, learning_rate, b1=b1, weight_lr_power=weight_lr_power,
                             state_dtype=state_dtype)
