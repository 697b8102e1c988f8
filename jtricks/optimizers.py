"""Named optimizers: short chains of building blocks, defaults equal to optax's.

Each ``learning_rate`` (and every other scalar hyperparameter) accepts a float, an
array (a tracer too) or a schedule ``count -> value``; update ``k`` uses the
schedule's value at ``k``, counting from 0.
"""

from __future__ import annotations

from typing import Any

from jtricks.base import Chain, chain
from jtricks.transforms.adaptive import check_decay, check_eps, scale_by_adam
from jtricks.transforms.scaling import scale_by_learning_rate

__all__ = ["adam"]


def _check_lr(where: str, learning_rate: Any) -> None:
    from jtricks import hyperparams as hp

    hp.check_range(where, "learning_rate", learning_rate, low=0.0,
                   fix="A learning rate must be non-negative, e.g. 1e-3.")


def adam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
         eps_root: Any = 0.0, mu_dtype: Any = None) -> Chain:
    """Adam (Kingma & Ba, 2015): "if unsure, use Adam".

    ::

        m <- b1 * m + (1 - b1) * g
        v <- b2 * v + (1 - b2) * g**2
        w <- w - lr(k) * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t) + eps_root) + eps)

    Example:
        >>> tx = jt.adam(1e-3)
        >>> state = tx.init(params)
        >>> updates, state = tx.update(grads, state, params)
        >>> params = jt.apply_updates(params, updates)
    """
    _check_lr("adam", learning_rate)
    for name, value in (("b1", b1), ("b2", b2)):
        check_decay("adam", name, value)
    check_eps("adam", "eps", eps)
    check_eps("adam", "eps_root", eps_root)
    return chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype),
        scale_by_learning_rate(learning_rate),
    )
