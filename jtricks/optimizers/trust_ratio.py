"""Layer-wise adaptive optimizers: LAMB, LARS and Fromage, as short chains of blocks.

Each scales every parameter array's step by a ratio of norms of that array (its
trust ratio), so large and small layers learn at comparable relative speeds; they
are built for large-batch training. Defaults, chains and states equal optax's.
"""

from __future__ import annotations

from typing import Any

from jtricks import hyperparams as hp
from jtricks.base import Chain, Schedule, chain
from jtricks.optimizers.sgd import momentum_tail
from jtricks.transforms.adaptive import scale_by_adam
from jtricks.transforms.decay import AddDecayedWeights, add_decayed_weights
from jtricks.transforms.masking import masked
from jtricks.transforms.scaling import scale_by_learning_rate
from jtricks.transforms.trust_ratio import scale_by_trust_ratio

__all__ = ["lamb", "lars", "fromage"]


def lamb(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-6,
         eps_root: Any = 0.0, weight_decay: Any = 0.0, mask: Any = None) -> Chain:
    """LAMB (You et al., 2020): Adam's direction, rescaled layer by layer.

    With ``a`` Adam's bias-corrected direction (see :func:`~jtricks.scale_by_adam`)
    and ``p`` one parameter array::

        r <- a + weight_decay * p                   (where mask is True)
        w <- w - lr(k) * (||p|| / ||r||) * r        (ratio 1 if either norm is 0)

    Same chain and numbers as ``optax.lamb``.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the first moment, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: added to Adam's denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        weight_decay: decoupled decay rate, >= 0; a number, an array or a schedule.
        mask: where to decay: ``None`` (everywhere), a tree of bools or a callable.

    Example:
        >>> tx = jt.lamb(1e-3, weight_decay=1e-2)
    """
    with hp.reporting_as("lamb"):
        return chain(
            scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
            add_decayed_weights(weight_decay, mask),
            scale_by_trust_ratio(),
            scale_by_learning_rate(learning_rate),
        )


def lars(learning_rate: Any, weight_decay: Any = 0.0, weight_decay_mask: Any = True,
         trust_coefficient: Any = 0.001, eps: Any = 0.0, trust_ratio_mask: Any = True,
         momentum: Any = 0.9, nesterov: bool = False) -> Chain:
    """LARS (You et al., 2017): SGD with momentum and a layer-wise trust ratio.

    With ``p`` one parameter array and ``g`` its gradient::

        r <- g + weight_decay * p                         (where weight_decay_mask)
        r <- trust_coefficient * ||p|| / (||r|| + eps) * r (where trust_ratio_mask;
                                                          unchanged if a norm is 0)
        t <- -lr(k) * r + momentum * t;   w <- w + t      (Nesterov: -lr*r + momentum*t)

    Same chain and numbers as ``optax.lars`` (whose masks default to ``True``:
    every leaf).

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        weight_decay: decay rate, >= 0; a number, an array or a schedule.
        weight_decay_mask: where to decay (a tree of bools, a prefix such as
            ``True``, or a callable).
        trust_coefficient: multiplier of the trust ratio, >= 0.
        eps: added to the update's norm, >= 0.
        trust_ratio_mask: where to apply the trust ratio.
        momentum: the momentum coefficient, in [0, 1).
        nesterov: use Nesterov momentum (static).

    Example:
        >>> tx = jt.lars(0.1, weight_decay=1e-4)
    """
    with hp.reporting_as("lars"):
        return chain(
            add_decayed_weights(weight_decay, weight_decay_mask),
            masked(scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps),
                   trust_ratio_mask),
            scale_by_learning_rate(learning_rate),
            momentum_tail("lars", momentum, nesterov),
        )


class _FromageRate(Schedule):
    """``lr(k) / sqrt(1 + lr(k)**2)``: Fromage's effective step for a scheduled rate."""

    learning_rate: Any

    def __call__(self, count):
        lr = self.learning_rate(count)
        return 1 / (1 + lr**2) ** 0.5 * lr


class _FromageShrink(Schedule):
    """``1 / sqrt(1 + lr(k)**2) - 1``: Fromage's (negative) weight-decay factor."""

    learning_rate: Any

    def __call__(self, count):
        lr = self.learning_rate(count)
        return 1 / (1 + lr**2) ** 0.5 - 1


def fromage(learning_rate: Any, min_norm: Any = 1e-6) -> Chain:
    """Fromage (Bernstein et al., 2020): steps of a fixed size relative to each layer.

    With ``p`` one parameter array, ``g`` its gradient and ``m = 1 / sqrt(1 + lr**2)``::

        w <- w - lr(k) * m * (max(||p||, min_norm) / max(||g||, min_norm)) * g
               + (m - 1) * w

    i.e. a step of relative size ``lr`` along the gradient, then a shrink that keeps
    the weights' norm from growing. Same chain and numbers as ``optax.fromage``.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        min_norm: floor for both norms in the trust ratio, >= 0.

    Example:
        >>> tx = jt.fromage(1e-2)
    """
    with hp.reporting_as("fromage"):
        hp.check_learning_rate("fromage", learning_rate)
        if hp.is_schedule(learning_rate):
            rate = hp.as_hyper(learning_rate)
            step: Any = _FromageRate(learning_rate=rate)
            shrink: Any = _FromageShrink(learning_rate=rate)
        else:
            mult = 1 / (1 + learning_rate**2) ** 0.5
            step, shrink = learning_rate * mult, mult - 1
        return chain(
            scale_by_trust_ratio(min_norm),
            scale_by_learning_rate(step),
            AddDecayedWeights(weight_decay=shrink)  # a negative rate: the shrink factor,
        )
