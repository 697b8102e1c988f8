"""Optimizers that rework Adam's moments: AdEMAMix (two momenta), Simplified AdEMAMix,
ADOPT (normalise, then average), ACProp (asynchronous centred moment) and MADGRAD
(dual averaging). Each is optax's chain of building blocks, so states nest as optax's.

Defaults and argument order equal optax's (``optax.contrib``). ``learning_rate`` (and
every scalar hyperparameter) accepts a float, an array or a schedule; update ``k``
uses a schedule's value at ``k``, counting from 0.
"""

from __future__ import annotations

from typing import Any

from jtricks import hyperparams as hp
from jtricks.base import Chain, chain
from jtricks.transforms.acprop import scale_by_acprop
from jtricks.transforms.ademamix import scale_by_ademamix, scale_by_simplified_ademamix
from jtricks.transforms.adopt import _fourth_root, scale_by_adopt
from jtricks.transforms.decay import add_decayed_weights
from jtricks.transforms.madgrad import scale_by_madgrad
from jtricks.transforms.scaling import scale_by_learning_rate

__all__ = ["ademamix", "simplified_ademamix", "adopt", "acprop", "madgrad"]


def ademamix(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, b3: Any = 0.9999,
             alpha: Any = 5.0, eps: Any = 1e-8, eps_root: Any = 0.0, mu_dtype: Any = None,
             weight_decay: Any = 0.0, mask: Any = None) -> Chain:
    """AdEMAMix (Pagliardini, Ablin & Grangier, 2024): AdamW whose numerator adds a
    slow momentum to the fast one.

    ::

        m1 <- b1 * m1 + (1 - b1) * g
        m2 <- b3 * m2 + (1 - b3) * g
        nu <- b2 * nu + (1 - b2) * g**2
        w  <- w - lr(k) * ((m1 / (1 - b1**t) + alpha * m2)
                           / (sqrt(nu / (1 - b2**t) + eps_root) + eps) + weight_decay * w)

    Old gradients weigh for thousands of steps: smaller ``b3`` (0.999) suits short
    runs, and the paper warms ``b3`` and ``alpha`` up with schedules.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the fast momentum, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        b3: decay of the slow momentum, in [0, 1); a number or a schedule.
        alpha: weight of the slow momentum, finite and >= 0; a number or a schedule.
        eps: added outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of the moments in the state; ``None`` keeps the params'.
        weight_decay: decay rate, >= 0, multiplied by the learning rate.
        mask: ``None`` (decay every leaf), a tree of bools like the params, or a
            callable ``params -> such a tree``.

    Example:
        >>> tx = jt.ademamix(1e-3, b3=0.999, weight_decay=1e-2)
    """
    with hp.reporting_as("ademamix"):
        return chain(
            scale_by_ademamix(b1=b1, b2=b2, b3=b3, alpha=alpha, eps=eps, eps_root=eps_root,
                              mu_dtype=mu_dtype),
            add_decayed_weights(weight_decay, mask),
            scale_by_learning_rate(learning_rate),
        )


def simplified_ademamix(learning_rate: Any, b1: Any = 0.99, b2: Any = 0.95,
                        alpha: Any = 0.0, eps: Any = 1e-8, eps_root: Any = 0.0,
                        weight_decay: Any = 0.0, mask: Any = None) -> Chain:
    """Simplified AdEMAMix (Morwani et al., 2025): one undamped momentum plus ``alpha``
    times the gradient, over Adam's denominator (``alpha = 0`` is Adam with a rescaled
    rate and ``b1``).

    ::

        m <- b1 * m + g
        n <- b2 * n + (1 - b2) * g**2
        w <- w - lr(k) * ((m + alpha * g) / (sqrt(n / (1 - b2**t) + eps_root) + eps)
                          + weight_decay * w)

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the momentum, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        alpha: weight of the current gradient, finite and >= 0.
        eps: added outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        weight_decay: decay rate, >= 0, multiplied by the learning rate.
        mask: ``None`` (decay every leaf), a tree of bools like the params, or a
            callable ``params -> such a tree``.

    Example:
        >>> tx = jt.simplified_ademamix(1e-4, alpha=2.0)
    """
    with hp.reporting_as("simplified_ademamix"):
        return chain(
            scale_by_simplified_ademamix(b1=b1, b2=b2, alpha=alpha, eps=eps,
                                         eps_root=eps_root),
            add_decayed_weights(weight_decay, mask),
            scale_by_learning_rate(learning_rate),
        )


def adopt(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.9999, eps: Any = 1e-6,
          mu_dtype: Any = None, *, nesterov: bool = False, use_clipping: bool = True,
          clip_value_fn: Any = _fourth_root) -> Chain:
    """ADOPT (Taniguchi et al., 2024): Adam that normalises the gradient by the second
    moment of the steps before it, clips it, and only then averages it.

    ::

        x  <- clip(g / max(sqrt(nu), eps), -c(k), c(k))
        m  <- b1 * m + (1 - b1) * x
        nu <- b2 * nu + (1 - b2) * g**2
        w  <- w - lr(k) * m

    The first update is 0 (it only records ``nu = g**2``); ``c(k) = k ** 0.25``.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the momentum, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: the smallest divisor, > 0.
        mu_dtype: dtype of the momentum in the state; ``None`` keeps the params'.
        nesterov: Nesterov momentum (static).
        use_clipping: clip the normalised gradient (static; recommended from scratch).
        clip_value_fn: the bound ``c`` as a function of the 0-based step.

    Example:
        >>> tx = jt.adopt(1e-3)
    """
    with hp.reporting_as("adopt"):
        return chain(
            scale_by_adopt(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype, nesterov=nesterov,
                           use_clipping=use_clipping, clip_value_fn=clip_value_fn),
            scale_by_learning_rate(learning_rate),
        )


def acprop(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-16,
           eps_root: Any = 1e-16, weight_decay: Any = 0.0, mask: Any = None) -> Chain:
    """ACProp (Zhuang et al., 2021): AdaBelief's centred second moment, applied
    asynchronously to the raw gradient.

    ::

        w <- w - lr(k) * (g / (sqrt(s / (1 - b2**k)) + eps) + weight_decay * w)
        s <- b2 * s + (1 - b2) * (g - m)**2 + eps_root
        m <- b1 * m + (1 - b1) * g

    with ``s`` and ``m`` taken before the step in the first line (the denominator is
    1 at ``k = 0``).

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the first moment, in [0, 1).
        b2: decay of the centred second moment, in [0, 1).
        eps: added outside the square root, >= 0.
        eps_root: added to ``s`` at every step, >= 0.
        weight_decay: decay rate, >= 0, multiplied by the learning rate.
        mask: ``None`` (decay every leaf), a tree of bools like the params, or a
            callable ``params -> such a tree``.

    Example:
        >>> tx = jt.acprop(1e-3)
    """
    with hp.reporting_as("acprop"):
        return chain(
            scale_by_acprop(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
            add_decayed_weights(weight_decay, mask),
            scale_by_learning_rate(learning_rate),
        )


def madgrad(learning_rate: Any, momentum: Any = 0.9, weight_decay: Any = 0.0,
            eps: Any = 1e-6) -> Chain:
    """MADGRAD (Defazio & Jelassi, 2021): momentumized, adaptive dual averaging from
    the initial parameters ``x0``; the weight decay is added to the gradient first
    (L2, not decoupled), as in optax.

    ::

        g    <- g + weight_decay * w
        lamb =  (lr(k) + eps) * sqrt(k + 1)
        G    <- G + lamb * g**2
        s    <- s + lamb * g
        w    <- (1 - momentum) * (x0 - s / (cbrt(G) + eps)) + momentum * w

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        momentum: weight of the current iterate, in [0, 1).
        weight_decay: L2 coefficient added to the gradient, >= 0.
        eps: added to the rate and to the denominator, >= 0.

    Example:
        >>> tx = jt.madgrad(1e-2)
    """
    with hp.reporting_as("madgrad"):
        return chain(
            add_decayed_weights(weight_decay),
            scale_by_madgrad(learning_rate=learning_rate, momentum=momentum, eps=eps),
        )
