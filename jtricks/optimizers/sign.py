"""Sign-based optimizers: Lion, signSGD and Signum, as optax's chains of blocks.

Defaults and argument order equal optax's. ``learning_rate`` (and every scalar
hyperparameter) accepts a float, an array or a schedule.
"""

from __future__ import annotations

from typing import Any

from jtricks import hyperparams as hp
from jtricks.base import Chain, chain
from jtricks.transforms.decay import add_decayed_weights
from jtricks.transforms.ema import ema
from jtricks.transforms.scaling import scale_by_learning_rate
from jtricks.transforms.sign import scale_by_lion, scale_by_sign

__all__ = ["lion", "sign_sgd", "signum"]


def lion(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.99, mu_dtype: Any = None,
         weight_decay: Any = 1e-3, mask: Any = None) -> Chain:
    """Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms").

    ::

        u <- sign(b1 * m + (1 - b1) * g)
        m <- b2 * m + (1 - b2) * g
        w <- w - lr(k) * (u + weight_decay * w)

    Every coordinate moves by ``lr`` (plus the decay), so Lion wants a learning rate
    3-10x smaller than AdamW's and a weight decay 3-10x larger. The decay applies
    where ``mask`` is True.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: weight of the momentum in the direction, in [0, 1).
        b2: decay of the momentum, in [0, 1).
        mu_dtype: dtype of the momentum in the state; ``None`` keeps the params'.
        weight_decay: decay rate, >= 0, as :func:`jtricks.add_decayed_weights`
            takes it (multiplied by the learning rate).
        mask: ``None`` (decay every leaf), a tree of bools like the params, or a
            callable ``params -> such a tree``.

    Example:
        >>> tx = jt.lion(1e-4, weight_decay=1e-2)
    """
    with hp.reporting_as("lion"):
        return chain(scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype),
                     add_decayed_weights(weight_decay, mask),
                     scale_by_learning_rate(learning_rate))


def sign_sgd(learning_rate: Any) -> Chain:
    """signSGD (Bernstein et al., 2018): a step of ``lr`` against each gradient sign.

    ::

        w <- w - lr(k) * sign(g)

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.

    Example:
        >>> tx = jt.sign_sgd(1e-3)
    """
    with hp.reporting_as("sign_sgd"):
        return chain(scale_by_sign(), scale_by_learning_rate(learning_rate))


def signum(learning_rate: Any, beta: Any = 0.9, accumulator_dtype: Any = None) -> Chain:
    """Signum (Bernstein et al., 2018): signSGD on a moving average of the gradients.

    ::

        e <- beta * e + (1 - beta) * g          (not debiased: only its sign is used)
        w <- w - lr(k) * sign(e)

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        beta: decay of the moving average, in [0, 1); a float, an array or a schedule.
        accumulator_dtype: dtype of the average in the state; ``None`` keeps the
            params'.

    Example:
        >>> tx = jt.signum(1e-3, beta=0.9)
    """
    with hp.reporting_as("signum"):
        hp.check_decay("signum", "beta", beta)
        return chain(
            ema(beta, debias=False, accumulator_dtype=accumulator_dtype),
            scale_by_sign(),
            scale_by_learning_rate(learning_rate),
        )
