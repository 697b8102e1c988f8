"""Kronecker-factored optimizers: SOAP and Shampoo, as short chains of blocks.

Neither is in optax; each follows its paper's algorithm, with defaults taken from
the authors' reference implementations (stated per function). Every scalar
hyperparameter is a pytree leaf: a new learning rate does not recompile, and
``jax.vmap`` over a stacked rate sweeps it in one program.
"""

from __future__ import annotations

from typing import Any

from jtricks import hyperparams as hp
from jtricks.base import Chain, chain
from jtricks.transforms.decay import add_decayed_weights
from jtricks.transforms.scaling import scale_by_learning_rate
from jtricks.transforms.shampoo import scale_by_shampoo
from jtricks.transforms.soap import scale_by_soap

__all__ = ["soap", "shampoo"]


def soap(learning_rate: Any, b1: Any = 0.95, b2: Any = 0.95, shampoo_beta: Any = None,
         eps: Any = 1e-8, precondition_frequency: Any = 10, max_precond_dim: int = 10000,
         weight_decay: Any = 0.01, mask: Any = None) -> Chain:
    """SOAP (Vyas et al., 2024, arXiv:2409.11321): Adam in Shampoo's eigenbasis.

    ::

        u <- scale_by_soap(g)                 (Adam on Q_L^T G Q_R; see scale_by_soap)
        w <- w - lr(k) * (u + weight_decay * w)      (where the mask says)

    Defaults are the reference implementation's (``lr=3e-3`` there; betas 0.95,
    0.95; ``shampoo_beta`` equal to ``b2``; ``eps=1e-8``; refresh every 10 steps;
    axes above 10000 unrotated; ``weight_decay=0.01``). The first update only seeds
    the factors (zero step, apart from weight decay). 0-d and 1-d leaves take
    Adam's step unrotated.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: Adam's first-moment decay, in [0, 1).
        b2: Adam's second-moment decay, in [0, 1).
        shampoo_beta: decay of the Kronecker factors, in [0, 1); ``None``: ``b2``.
        eps: added to Adam's denominator, >= 0.
        precondition_frequency: Adam steps between refreshes of the eigenbases (one
            power-iteration step with QR each), an integer >= 1.
        max_precond_dim: axes longer than this are not rotated (static).
        weight_decay: decoupled weight decay, >= 0 (times the learning rate).
        mask: ``None`` or a tree of bools / callable choosing the decayed leaves.

    Example:
        >>> tx = jt.soap(3e-3)
    """
    with hp.reporting_as("soap"):
        hp.check_learning_rate("soap", learning_rate)
        return chain(
            scale_by_soap(b1, b2, shampoo_beta, eps, precondition_frequency,
                          max_precond_dim),
            add_decayed_weights(weight_decay, mask),
            scale_by_learning_rate(learning_rate),
        )


def shampoo(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-12,
            precondition_frequency: Any = 100, block_size: int = 1024,
            graft_b2: Any = 0.999, graft_eps: Any = 1e-8,
            start_preconditioning_step: Any = None, weight_decay: Any = 0.0,
            mask: Any = None) -> Chain:
    """Shampoo with Adam grafting and blocking (Gupta et al., 2018; Anil et al., 2020;
    Shi et al., 2023, the distributed-Shampoo implementation).

    ::

        u <- scale_by_shampoo(g)     (Kronecker-factored roots, grafted to Adam's norm)
        w <- w - lr(k) * (u + weight_decay * w)      (decoupled, where the mask says)

    Defaults follow Shi et al.'s AdamW-grafting example (betas 0.9, 0.999,
    ``eps=1e-12``, roots every 100 steps, grafting Adam with 0.999 and 1e-8) with
    their default block size 1024 and no weight decay; preconditioning starts at
    the first root computation.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: decay of the filtered gradient, in [0, 1).
        b2: decay of the factors, in [0, 1] (1: AdaGrad-style sums).
        eps: added to the factors' eigenvalues, >= 0.
        precondition_frequency: steps between inverse-root computations, >= 1.
        block_size: the longest block along any axis (static).
        graft_b2: the grafting Adam's second-moment decay, in [0, 1).
        graft_eps: the grafting Adam's eps, >= 0.
        start_preconditioning_step: first step with Shampoo's direction (``None``:
            ``precondition_frequency``).
        weight_decay: decoupled weight decay, >= 0 (times the learning rate).
        mask: ``None`` or a tree of bools / callable choosing the decayed leaves.

    Example:
        >>> tx = jt.shampoo(1e-3, precondition_frequency=20)
    """
    with hp.reporting_as("shampoo"):
        hp.check_learning_rate("shampoo", learning_rate)
        return chain(
            scale_by_shampoo(b1, b2, eps, precondition_frequency, block_size, graft_b2,
                             graft_eps, start_preconditioning_step),
            add_decayed_weights(weight_decay, mask),
            scale_by_learning_rate(learning_rate),
        )
