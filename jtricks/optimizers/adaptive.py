"""Adaptive optimizers: Adagrad, RMSProp, Adam and AdamW as short chains of blocks.

Defaults equal optax's. Each ``learning_rate`` (and every other scalar
hyperparameter) accepts a float, an array (a tracer too) or a schedule
``count -> value``; update ``k`` uses the schedule's value at ``k``, counting from 0.
"""

from __future__ import annotations

from typing import Any

from jtricks import hyperparams as hp
from jtricks.base import Chain, chain
from jtricks.optimizers.sgd import momentum_tail
from jtricks.transforms.adaptive import (
    scale_by_adam,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
)
from jtricks.transforms.decay import add_decayed_weights
from jtricks.transforms.scaling import scale_by_learning_rate

__all__ = ["adagrad", "rmsprop", "adam", "adamw"]


def adagrad(learning_rate: Any, initial_accumulator_value: Any = 0.1,
            eps: Any = 1e-7) -> Chain:
    """Adagrad (Duchi et al., 2011): per-coordinate steps shrinking with the sum of
    squared gradients so far.

    ::

        s <- s + g**2                       (s starts at initial_accumulator_value)
        w <- w - lr(k) * g / sqrt(s + eps)

    Same numbers as ``optax.adagrad``.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        initial_accumulator_value: the starting value of ``s``, >= 0.
        eps: added inside the square root, >= 0.

    Example:
        >>> tx = jt.adagrad(0.1)
    """
    with hp.reporting_as("adagrad"):
        return chain(scale_by_rss(initial_accumulator_value, eps),
                     scale_by_learning_rate(learning_rate))


def rmsprop(learning_rate: Any, decay: Any = 0.9, eps: Any = 1e-8, initial_scale: Any = 0.0,
            eps_in_sqrt: bool = True, centered: bool = False, momentum: Any = None,
            nesterov: bool = False, bias_correction: bool = False) -> Chain:
    """RMSProp (Hinton, 2012; centered: Graves, 2013), with optional momentum.

    ``eps`` sits inside the square root (optax's default, unlike PyTorch)::

        nu <- decay * nu + (1 - decay) * g**2
        s  <- g / sqrt(nu + eps)                         (centered=False)
        s  <- g / sqrt(max(nu - mu**2, 0) + eps)         (centered=True, with
              mu <- decay * mu + (1 - decay) * g)
        u  <- -lr(k) * s

    then, when ``momentum`` is given, a trace of the *scaled* update (as in optax)::

        t <- u + momentum * t;   w <- w + t              (or u + momentum * t, Nesterov)

    Same numbers as ``optax.rmsprop`` with its defaults.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        decay: the running mean's decay rate, in [0, 1).
        eps: added inside the square root, >= 0.
        initial_scale: the starting value of ``nu`` (0 as in optax and PyTorch).
        eps_in_sqrt: ``False`` divides by ``sqrt(nu) + eps`` (PyTorch's placement).
        centered: divide by the running standard deviation (static).
        momentum: momentum coefficient in [0, 1), or ``None`` for none.
        nesterov: use Nesterov momentum (needs ``momentum``).
        bias_correction: debias ``nu`` (and ``mu``) by ``1 - decay**t`` as Adam does.

    Example:
        >>> tx = jt.rmsprop(1e-3, momentum=0.9)
    """
    with hp.reporting_as("rmsprop"):
        scaling = scale_by_stddev if centered else scale_by_rms
        return chain(
            scaling(decay, eps, initial_scale, eps_in_sqrt, bias_correction),
            scale_by_learning_rate(learning_rate),
            momentum_tail("rmsprop", momentum, nesterov),
        )


def adam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
         eps_root: Any = 0.0, mu_dtype: Any = None, *, nesterov: bool = False) -> Chain:
    """Adam (Kingma & Ba, 2015): "if unsure, use Adam".

    ::

        m <- b1 * m + (1 - b1) * g
        v <- b2 * v + (1 - b2) * g**2
        w <- w - lr(k) * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t) + eps_root) + eps)

    ``nesterov=True`` gives NAdam (see :func:`scale_by_adam`). Same numbers and
    argument order as ``optax.adam``.

    Example:
        >>> tx = jt.adam(1e-3)
        >>> state = tx.init(params)
        >>> updates, state = tx.update(grads, state, params)
        >>> params = jt.apply_updates(params, updates)
    """
    with hp.reporting_as("adam"):
        return chain(
            scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
                          nesterov=nesterov),
            scale_by_learning_rate(learning_rate),
        )


def adamw(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
          eps_root: Any = 0.0, mu_dtype: Any = None, weight_decay: Any = 1e-4,
          mask: Any = None, *, nesterov: bool = False) -> Chain:
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    ::

        m <- b1 * m + (1 - b1) * g
        v <- b2 * v + (1 - b2) * g**2
        w <- w - lr(k) * ((m / (1 - b1**t)) / (sqrt(v / (1 - b2**t) + eps_root) + eps)
                          + weight_decay * w)

    The decay is multiplied by the learning rate (as in optax and PyTorch) and
    applies only where ``mask`` is True. Same numbers and argument order as
    ``optax.adamw``.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the first moment, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of the first moment (e.g. ``jnp.float32`` for bf16 params).
        weight_decay: decay rate, >= 0; a number or an array.
        mask: ``None`` (decay every leaf), a tree of bools like the params, or a
            callable ``params -> such a tree`` (e.g. to skip biases).
        nesterov: NAdamW: Nesterov momentum in the Adam part (static).

    Example:
        >>> decay_matrices = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
        >>> tx = jt.adamw(1e-3, weight_decay=1e-2, mask=decay_matrices)
    """
    with hp.reporting_as("adamw"):
        return chain(
            scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
                          nesterov=nesterov),
            add_decayed_weights(weight_decay, mask),
            scale_by_learning_rate(learning_rate),
        )
