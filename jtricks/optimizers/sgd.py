"""First-order descent: SGD with optional (Nesterov) momentum, and its normalised form.

Each ``learning_rate`` (and every other scalar hyperparameter) accepts a float, an
array (a tracer too) or a schedule ``count -> value``; update ``k`` uses the
schedule's value at ``k``, counting from 0.
"""

from __future__ import annotations

from typing import Any

from jtricks import hyperparams as hp
from jtricks.base import Chain, Transform, chain, identity
from jtricks.transforms.clipping import normalize_by_global_norm
from jtricks.transforms.momentum import trace
from jtricks.transforms.scaling import scale_by_learning_rate

__all__ = ["sgd", "normalized_sgd", "momentum_tail"]


def momentum_tail(where: str, momentum: Any, nesterov: bool,
                  accumulator_dtype: Any = None) -> Transform:
    """``trace(momentum, nesterov)``, or ``identity()`` when ``momentum is None``.

    The trace calls its coefficient ``decay``; it is checked here under the name the
    user passed (``momentum``).
    """
    if momentum is None:
        if nesterov:
            raise ValueError(
                f"{where}: nesterov=True needs a momentum, got momentum=None. Pass "
                "momentum=0.9 (for example), or drop nesterov."
            )
        return identity()
    hp.check_decay(where, "momentum", momentum)
    return trace(momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype)


def sgd(learning_rate: Any, momentum: Any = None, nesterov: bool = False,
        accumulator_dtype: Any = None) -> Chain:
    """Stochastic gradient descent, with optional (Nesterov) momentum.

    Plain (``momentum=None``)::

        w <- w - lr(k) * g

    With momentum ``m`` (the trace ``t`` starts at 0)::

        t <- g + m * t
        w <- w - lr(k) * t                  (nesterov=False)
        w <- w - lr(k) * (g + m * t)        (nesterov=True)

    For a constant rate this is the lesson's velocity form ``v <- m * v - lr * g;
    w <- w + v`` (``v = -lr * t``). Same numbers as ``optax.sgd``.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        momentum: the momentum coefficient in [0, 1), or ``None`` for none; a
            float, an array or a schedule.
        nesterov: use Nesterov momentum (needs ``momentum``).
        accumulator_dtype: dtype of the momentum trace (e.g. ``jnp.float32`` for
            bf16 params); ``None`` keeps the params' dtype.

    Example:
        >>> tx = jt.sgd(0.1, momentum=0.9)
    """
    with hp.reporting_as("sgd"):
        return chain(momentum_tail("sgd", momentum, nesterov, accumulator_dtype),
                     scale_by_learning_rate(learning_rate))


def normalized_sgd(learning_rate: Any, eps: Any = 1e-6) -> Chain:
    """Gradient descent along the gradient's direction only (the lesson's rule).

    With ``||g||`` the global L2 norm over all leaves::

        w <- w - lr(k) * g / (||g|| + eps)

    so every step has length ``lr`` (up to ``eps``), however large or small the
    gradient. optax has no twin; its ``normalize_by_update_norm`` followed by
    ``scale_by_learning_rate`` gives the same numbers.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        eps: added to the norm (outside it), >= 0; a number or an array.

    Example:
        >>> tx = jt.normalized_sgd(0.01)
    """
    with hp.reporting_as("normalized_sgd"):
        return chain(normalize_by_global_norm(eps), scale_by_learning_rate(learning_rate))
