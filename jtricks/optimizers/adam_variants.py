"""Adam's relatives as named optimizers: AMSGrad, Adamax(W), AdaBelief, Yogi, RAdam,
NAdam(W). Each is optax's chain of building blocks, so states nest as optax's do.

Defaults and argument order equal optax's. ``learning_rate`` (and every scalar
hyperparameter) accepts a float, an array or a schedule; update
``k`` uses a schedule's value at ``k``, counting from 0.
"""

from __future__ import annotations

from typing import Any

from jtricks import hyperparams as hp
from jtricks.base import Chain, chain
from jtricks.optimizers.adaptive import adam, adamw
from jtricks.transforms.adam_variants import (
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_belief,
    scale_by_radam,
    scale_by_yogi,
)
from jtricks.transforms.decay import add_decayed_weights
from jtricks.transforms.scaling import scale_by_learning_rate

__all__ = ["amsgrad", "adamax", "adamaxw", "adabelief", "yogi", "radam", "nadam", "nadamw"]


def amsgrad(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
            eps_root: Any = 0.0, mu_dtype: Any = None, bias_correction_mu: bool = True,
            bias_correction_nu: bool = True) -> Chain:
    """AMSGrad (Reddi et al., 2018): Adam that never lets a coordinate's step grow
    because its second moment shrank.

    ::

        m     <- b1 * m + (1 - b1) * g
        v     <- b2 * v + (1 - b2) * g**2
        v_max <- max(v_max, v / (1 - b2**t))
        w     <- w - lr(k) * (m / (1 - b1**t)) / (sqrt(v_max + eps_root) + eps)

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the first moment, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: added outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of the first moment in the state; ``None`` keeps the params'.
        bias_correction_mu: debias ``m`` (both ``False`` is the paper's algorithm).
        bias_correction_nu: debias ``v`` before the maximum.

    Example:
        >>> tx = jt.amsgrad(1e-3)
    """
    with hp.reporting_as("amsgrad"):
        return chain(
            scale_by_amsgrad(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
                             bias_correction_mu=bias_correction_mu,
                             bias_correction_nu=bias_correction_nu),
            scale_by_learning_rate(learning_rate),
        )


def adamax(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8) -> Chain:
    """Adamax (Kingma & Ba, 2015, section 7): Adam with an infinity norm in place of
    the second moment.

    ::

        m <- b1 * m + (1 - b1) * g
        v <- max(|g| + eps, b2 * v)
        w <- w - lr(k) * (m / (1 - b1**t)) / v

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the first moment, in [0, 1).
        b2: decay of the infinity norm, in [0, 1).
        eps: added to ``|g|``, > 0.

    Example:
        >>> tx = jt.adamax(2e-3)
    """
    with hp.reporting_as("adamax"):
        return chain(scale_by_adamax(b1=b1, b2=b2, eps=eps),
                     scale_by_learning_rate(learning_rate))


def adamaxw(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
            weight_decay: Any = 1e-4, mask: Any = None) -> Chain:
    """AdamaxW: Adamax with decoupled weight decay (Loshchilov & Hutter, 2019).

    ::

        w <- w - lr(k) * ((m / (1 - b1**t)) / v + weight_decay * w)

    with ``m`` and ``v`` as in :func:`adamax`; the decay applies where ``mask`` is True.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the first moment, in [0, 1).
        b2: decay of the infinity norm, in [0, 1).
        eps: added to ``|g|``, > 0.
        weight_decay: decay rate, >= 0, as :func:`jtricks.add_decayed_weights`
            takes it (multiplied by the learning rate, as in optax and PyTorch).
        mask: ``None`` (decay every leaf), a tree of bools like the params, or a
            callable ``params -> such a tree``.

    Example:
        >>> tx = jt.adamaxw(2e-3, weight_decay=1e-2)
    """
    with hp.reporting_as("adamaxw"):
        return chain(scale_by_adamax(b1=b1, b2=b2, eps=eps),
                     add_decayed_weights(weight_decay, mask),
                     scale_by_learning_rate(learning_rate))


def adabelief(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-16,
              eps_root: Any = 1e-16, *, nesterov: bool = False) -> Chain:
    """AdaBelief (Zhuang et al., 2020): Adam whose denominator is the spread of the
    gradient around its running mean.

    ::

        m <- b1 * m + (1 - b1) * g
        s <- b2 * s + (1 - b2) * (g - m)**2 + eps_root
        w <- w - lr(k) * (m / (1 - b1**t)) / (sqrt(s / (1 - b2**t)) + eps)

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the first moment, in [0, 1).
        b2: decay of the squared prediction error, in [0, 1).
        eps: added outside the square root, >= 0.
        eps_root: added to ``s`` at every step, >= 0.
        nesterov: NAdam's look-ahead first moment (static).

    Example:
        >>> tx = jt.adabelief(1e-3)
    """
    with hp.reporting_as("adabelief"):
        return chain(scale_by_belief(b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                                     nesterov=nesterov),
                     scale_by_learning_rate(learning_rate))


def yogi(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-3) -> Chain:
    """Yogi (Zaheer et al., 2018): Adam whose second moment moves towards ``g**2`` by
    additive steps.

    ::

        m <- b1 * m + (1 - b1) * g
        v <- v - (1 - b2) * sign(v - g**2) * g**2          (m, v start at 1e-6)
        w <- w - lr(k) * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the first moment, in [0, 1).
        b2: rate of the second moment's steps, in [0, 1).
        eps: added outside the square root, >= 0.

    Example:
        >>> tx = jt.yogi(1e-2)
    """
    with hp.reporting_as("yogi"):
        return chain(scale_by_yogi(b1=b1, b2=b2, eps=eps),
                     scale_by_learning_rate(learning_rate))


def radam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
          eps_root: Any = 0.0, threshold: Any = 5.0, *, nesterov: bool = False) -> Chain:
    """RAdam (Liu et al., 2020): momentum SGD until the second moment has seen enough
    steps (``rho >= threshold``), then Adam with a variance rectification ``r``.

    ::

        rho = 2 / (1 - b2) - 1 - 2 * t * b2**t / (1 - b2**t)
        w  <- w - lr(k) * r * m_hat / (sqrt(v_hat + eps_root) + eps)   if rho >= threshold
        w  <- w - lr(k) * m_hat                                          otherwise

    ``r``, ``m_hat`` and ``v_hat`` are :func:`jtricks.scale_by_radam`'s.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the first moment, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: added outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        threshold: the ``rho`` from which the rectified step is taken, >= 4.
        nesterov: NAdam's look-ahead first moment (static).

    Example:
        >>> tx = jt.radam(1e-3)
    """
    with hp.reporting_as("radam"):
        return chain(scale_by_radam(b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                                    threshold=threshold, nesterov=nesterov),
                     scale_by_learning_rate(learning_rate))


def nadam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
          eps_root: Any = 0.0, mu_dtype: Any = None, *, nesterov: bool = True) -> Chain:
    """NAdam (Dozat, 2016): Adam with Nesterov momentum; ``optax.nadam``'s signature
    (``optax.adam`` with ``nesterov=True``).

    ::

        m_hat = b1 * m / (1 - b1**(t+1)) + (1 - b1) * g / (1 - b1**t)
        w    <- w - lr(k) * m_hat / (sqrt(v / (1 - b2**t) + eps_root) + eps)

    with ``m`` and ``v`` Adam's moments.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the first moment, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: added outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of the first moment in the state; ``None`` keeps the params'.
        nesterov: ``True`` (``False`` gives plain Adam); static.

    Example:
        >>> tx = jt.nadam(1e-3)
    """
    with hp.reporting_as("nadam"):
        return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)


def nadamw(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
           eps_root: Any = 0.0, mu_dtype: Any = None, weight_decay: Any = 1e-4,
           mask: Any = None, *, nesterov: bool = True) -> Chain:
    """NAdamW: NAdam with decoupled weight decay; ``optax.nadamw``'s signature
    (``optax.adamw`` with ``nesterov=True``).

    ::

        w <- w - lr(k) * (m_hat / (sqrt(v / (1 - b2**t) + eps_root) + eps)
                          + weight_decay * w)

    with ``m_hat`` as in :func:`nadam`; the decay applies where ``mask`` is True.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the first moment, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: added outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of the first moment in the state; ``None`` keeps the params'.
        weight_decay: decay rate, >= 0, as :func:`jtricks.add_decayed_weights`
            takes it (multiplied by the learning rate).
        mask: ``None`` (decay every leaf), a tree of bools like the params, or a
            callable ``params -> such a tree``.
        nesterov: ``True`` (``False`` gives plain AdamW); static.

    Example:
        >>> tx = jt.nadamw(1e-3, weight_decay=1e-2)
    """
    with hp.reporting_as("nadamw"):
        return adamw(learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask,
                     nesterov=nesterov)
