"""MARS-AdamW (Yuan et al. 2024) as a short chain of blocks."""

from __future__ import annotations

from typing import Any

from jtricks import hyperparams as hp
from jtricks.base import Chain, chain
from jtricks.transforms.decay import add_decayed_weights
from jtricks.transforms.mars import scale_by_mars
from jtricks.transforms.scaling import scale_by_learning_rate

__all__ = ["mars"]


def mars(learning_rate: Any, b1: Any = 0.95, b2: Any = 0.99, eps: Any = 1e-8,
         gamma: Any = 0.025, weight_decay: Any = 0.0, mask: Any = None, *,
         per_leaf_clip: bool = False) -> Chain:
    """MARS-AdamW (Yuan et al. 2024, "MARS: Unleashing the Power of Variance
    Reduction for Training Large Models", arXiv:2411.10438), approximate form.

    With ``g_t`` the gradient at the 1-based step ``t`` (``g_0 = g_1``)::

        c_t  = g_t + gamma * b1 / (1 - b1) * (g_t - g_{t-1})
        c~_t = c_t / max(||c_t||_2, 1)
        m <- b1 * m + (1 - b1) * c~_t
        v <- b2 * v + (1 - b2) * c~_t**2
        w <- w - lr(k) * ((m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)
                          + weight_decay * w)

    The chain is ``scale_by_mars``, ``add_decayed_weights(weight_decay, mask)``,
    ``scale_by_learning_rate(learning_rate)``, as :func:`jtricks.adamw` is built.
    Defaults are the authors' (b1=0.95, b2=0.99, gamma=0.025, no weight decay; the
    paper's GPT-2 runs use learning rates 2e-3 to 6e-3 and weight_decay=1e-2). Every
    leaf gets MARS (the authors' code can hand 1-d leaves to plain AdamW instead; use
    :func:`jtricks.partition` for that).

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the first moment, in [0, 1); also scales the correction.
        b2: decay of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        gamma: strength of the gradient correction, >= 0; a float, array or schedule.
        weight_decay: decoupled decay rate, >= 0 (multiplied by the learning rate).
        mask: ``None`` (decay every leaf), a tree of bools like the params, or a
            callable ``params -> such a tree``.
        per_leaf_clip: clip each leaf's corrected gradient by its own norm, as the
            authors' PyTorch code does, instead of the whole tree's (static).

    Example:
        >>> tx = jt.mars(3e-3, weight_decay=1e-2)
        >>> state = tx.init(params)
        >>> updates, state = tx.update(grads, state, params)
    """
    with hp.reporting_as("mars"):
        return chain(scale_by_mars(b1, b2, eps, gamma, per_leaf_clip=per_leaf_clip),
                     add_decayed_weights(weight_decay, mask),
                     scale_by_learning_rate(learning_rate))
