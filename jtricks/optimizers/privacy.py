"""DP-SGD (Abadi et al., 2016): SGD on clipped, noised per-example gradients; optax's
``contrib.dpsgd``."""

from __future__ import annotations

from typing import Any

from jtricks import hyperparams as hp
from jtricks.base import Chain, chain
from jtricks.optimizers.sgd import momentum_tail
from jtricks.transforms.privacy import differentially_private_aggregate
from jtricks.transforms.scaling import scale_by_learning_rate

__all__ = ["dpsgd"]


def dpsgd(learning_rate: Any, l2_norm_clip: Any, noise_multiplier: Any, seed: Any,
          momentum: Any = None, nesterov: bool = False) -> Chain:
    """Differentially private SGD: per-example gradients are clipped, summed, noised
    and averaged
    (:func:`~jtricks.transforms.privacy.differentially_private_aggregate`), then
    SGD steps, with optional momentum. With ``B`` the batch size and ``C = l2_norm_clip``::

        g = (sum_i g_i * min(1, C / ||g_i||) + C * noise_multiplier * z) / B
        t <- g + momentum * t                      (when momentum is given)
        w <- w - lr(k) * t                         (or g without momentum)

    ``update`` takes per-example gradients (the batch on axis 0 of every leaf, from
    ``jax.vmap(jax.grad(loss), in_axes=(None, 0))``). The noise is drawn from the key
    ``seed`` and the state's split of it, as optax draws it. Same numbers and state
    as optax's ``contrib.dpsgd``.

    Paper: M. Abadi, A. Chu, I. Goodfellow, H. B. McMahan, I. Mironov, K. Talwar,
    L. Zhang, "Deep Learning with Differential Privacy", CCS 2016
    (arXiv:1607.00133).

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        l2_norm_clip: the largest global L2 norm an example's gradient keeps, > 0.
        noise_multiplier: the noise's standard deviation relative to
            ``l2_norm_clip``, >= 0.
        seed: an integer seed (or a typed key) for the noise; required.
        momentum: the momentum coefficient in [0, 1), or ``None`` for none.
        nesterov: use Nesterov momentum (needs ``momentum``).

    Example:
        >>> tx = jt.dpsgd(0.1, l2_norm_clip=1.0, noise_multiplier=1.1, seed=0)
    """
    with hp.reporting_as("dpsgd"):
        hp.check_learning_rate("dpsgd", learning_rate)
        return chain(differentially_private_aggregate(l2_norm_clip, noise_multiplier, seed),
                     momentum_tail("dpsgd", momentum, nesterov),
                     scale_by_learning_rate(learning_rate))
