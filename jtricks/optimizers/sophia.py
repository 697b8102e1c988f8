"""Sophia: a clipped second-order optimizer (optax's ``contrib.sophia``)."""

from __future__ import annotations

from typing import Any

from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks.base import Chain, chain
from jtricks.transforms.decay import add_decayed_weights
from jtricks.transforms.scaling import scale_by_learning_rate
from jtricks.transforms.sophia import DEFAULT_HESSIAN_DIAGONAL_FN, scale_by_sophia

__all__ = ["sophia"]


def sophia(learning_rate: Any, b1: ArrayLike = 0.965, b2: ArrayLike = 0.99,
           eps: ArrayLike = 1e-8, weight_decay: ArrayLike = 1e-4,
           weight_decay_mask: Any = None, gamma: ArrayLike = 0.01,
           clip_threshold: ArrayLike | None = 1.0, update_interval: ArrayLike = 10,
           hessian_diagonal_fn: Any = DEFAULT_HESSIAN_DIAGONAL_FN,
           mu_dtype: Any = None, verbose: bool = False,
           print_win_rate_every_n_steps: ArrayLike = 0) -> Chain:
    """Sophia (Liu, Li, Hall, Liang & Ma, 2023, "Sophia: A Scalable Stochastic
    Second-order Optimizer for Language Model Pre-training", arXiv:2305.14342).

    Momentum divided by a moving average ``h`` of the Hessian's diagonal, refreshed
    every ``update_interval`` updates, clipped per coordinate, then decoupled weight
    decay. With ``t`` the 1-based step and ``k = t - 1``::

        m <- b1 * m + (1 - b1) * g
        s <- clip((m / (1 - b1**t)) / max(gamma * h, eps), -clip_threshold, clip_threshold)
        w <- w - lr(k) * (s + weight_decay * w)          (decay where the mask is True)
        if k % update_interval == 0:                     (after s: s uses the older h)
            h <- b2 * h + (1 - b2) * d,   d = z * (H z),  z a Rademacher probe

    The default estimator (Hutchinson's, Sophia-H with a Rademacher probe as in optax)
    needs the objective: pass ``obj_fn``, a scalar function of the params alone, to
    ``update`` as a keyword (every extra keyword reaches ``hessian_diagonal_fn``).
    Same signature, state and numbers as ``optax.contrib.sophia``.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        b1: momentum decay, in [0, 1).
        b2: decay of the Hessian-diagonal average, in [0, 1).
        eps: floor of the denominator, >= 0.
        weight_decay: decoupled weight decay, >= 0.
        weight_decay_mask: ``None`` (decay every leaf), a tree of bools like the
            params or a callable ``params -> such a tree``.
        gamma: the Hessian's scale, >= 0.
        clip_threshold: per-coordinate bound, > 0, or ``None`` for no clipping.
        update_interval: updates between Hessian estimates, an integer >= 1.
        hessian_diagonal_fn: the estimator (a jtricks or optax transform).
        mu_dtype: dtype of the momentum (``None``: the params').
        verbose: print the share of unclipped coordinates (the "win rate").
        print_win_rate_every_n_steps: how often ``verbose`` prints, >= 1 then.

    Example:
        >>> tx = jt.sophia(1e-3)
        >>> state = tx.init(params)
        >>> obj_fn = lambda p: loss_fn(p, batch)
        >>> updates, state = tx.update(jax.grad(obj_fn)(params), state, params,
        ...                            obj_fn=obj_fn)
    """
    with hp.reporting_as("sophia"):
        return chain(
            scale_by_sophia(b1=b1, b2=b2, eps=eps, gamma=gamma,
                            clip_threshold=clip_threshold, update_interval=update_interval,
                            hessian_diagonal_fn=hessian_diagonal_fn, mu_dtype=mu_dtype,
                            verbose=verbose,
                            print_win_rate_every_n_steps=print_win_rate_every_n_steps),
            add_decayed_weights(weight_decay, mask=weight_decay_mask),
            scale_by_learning_rate(learning_rate),
        )
