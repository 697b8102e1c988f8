"""GaLore: memory-efficient training by low-rank gradient projection (optax's
``contrib.galore``)."""

from __future__ import annotations

from typing import Any

from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks.base import Chain, chain
from jtricks.transforms.decay import add_decayed_weights
from jtricks.transforms.galore import scale_by_galore
from jtricks.transforms.scaling import scale_by_learning_rate

__all__ = ["galore"]


def galore(learning_rate: Any, rank: int = 128, update_proj_gap: int = 200,
           scale: float = 1.0, base_optimizer: Any = None, weight_decay: ArrayLike = 0.0,
           mask: Any = None, weight_dimension_numbers: Any = None) -> Chain:
    """GaLore (Zhao, Zhang, Chen, Wang, Anandkumar & Tian, 2024, "GaLore:
    Memory-Efficient LLM Training by Gradient Low-Rank Projection", arXiv:2403.03507).

    Adam (or ``base_optimizer``) runs on each matrix's gradient projected onto its
    top ``r = min(rank, m, n)`` singular directions, refreshed by an SVD every
    ``update_proj_gap`` updates; decoupled weight decay acts in the full space. For
    an ``m x n`` gradient ``G`` with ``m >= n`` (the other case projects from the
    right, ``R = G P``) and ``k`` the 0-based update index::

        if k % update_proj_gap == 0:   P <- U[:, :r],  U S V^T = svd(G)
        R <- P^T G
        N <- base_optimizer(R)                      (Adam's moments are r x n)
        w <- w - lr(k) * (scale * P N + weight_decay * w)

    Other leaves (by default every leaf that is not 2-D) take the base optimizer's
    step unprojected and unscaled. Same signature, state and numbers as
    ``optax.contrib.galore``.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        rank: the projection's rank, a Python int >= 1.
        update_proj_gap: updates between SVDs, an integer >= 1.
        scale: multiplies the projected-back updates, >= 0.
        base_optimizer: a gradient-only transform run in the low-rank space (it gets
            no params); ``None`` is ``scale_by_adam()``. Put weight decay in
            ``weight_decay``, not in the base optimizer.
        weight_decay: decoupled weight decay, >= 0.
        mask: ``None`` (decay every leaf), a tree of bools like the params or a
            callable ``params -> such a tree``.
        weight_dimension_numbers: which leaves are matrices and how (see
            :func:`scale_by_galore`).

    Example:
        >>> tx = jt.galore(1e-2, rank=16, update_proj_gap=100, weight_decay=1e-2)
        >>> state = tx.init(params)
        >>> updates, state = tx.update(grads, state, params)
    """
    with hp.reporting_as("galore"):
        return chain(
            scale_by_galore(rank=rank, update_proj_gap=update_proj_gap, scale=scale,
                            base_optimizer=base_optimizer,
                            weight_dimension_numbers=weight_dimension_numbers),
            add_decayed_weights(weight_decay, mask),
            scale_by_learning_rate(learning_rate),
        )
