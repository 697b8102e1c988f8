"""Weight penalties added to the loss: L2 (weight decay) and L1 (sparsity).

The lesson's "penalty on large weights added to the loss". Each function returns a
scalar (accumulated in fp32) to be scaled and added to the data loss::

    loss = data_loss + lam * jt.regularization.l2(params, mask=jt.regularization.kernels_only)

A ``mask`` chooses the penalised leaves: a tree of bools shaped like ``params``, or a
callable ``params -> such a tree``. Biases and normalisation scales are usually left
out; :func:`kernels_only` does that for the common layout, and :func:`by_path` builds
a mask from a predicate on each leaf's readable path.

``lam * l2(params)`` has gradient ``lam * params``: the same step as
``jt.add_decayed_weights(lam)`` for SGD (for Adam the two differ: a loss penalty is
rescaled by the adaptive denominator, decoupled decay in ``adamw`` is not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jtricks import tree as jtree

__all__ = ["l2", "l1", "kernels_only", "by_path"]

PyTree = Any


def kernels_only(params: PyTree) -> PyTree:
    """A mask that is true for leaves of rank >= 2 (dense and conv kernels, embeddings)
    and false for biases, normalisation scales and scalars.

    Example:
        >>> penalty = jt.regularization.l2(params, mask=jt.regularization.kernels_only)
    """
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def by_path(predicate: Callable[[str, Any], bool]) -> Callable[[PyTree], PyTree]:
    """A mask from ``predicate(name, leaf) -> bool``, ``name`` a readable path such as
    ``Dense_0/kernel`` (see :func:`jtricks.tree.path_name`).

    Example:
        >>> no_norms = jt.regularization.by_path(lambda name, p: "norm" not in name.lower())
        >>> penalty = jt.regularization.l2(params, mask=no_norms)
    """
    def mask(params: PyTree) -> PyTree:
        return jax.tree_util.tree_map_with_path(
            lambda path, p: bool(predicate(jtree.path_name(path), p)), params)

    return mask


def _penalty(where: str, params: PyTree, mask: Any, leaf_sum: Callable) -> jax.Array:
    leaves = jax.tree.leaves(params)
    if mask is None:
        chosen = leaves
    else:
        flags = jax.tree.leaves(jtree.resolve_mask(mask, params, where=f"{where}: mask"))
        chosen = [p for p, m in zip(leaves, flags) if m]
    for p in chosen:
        if not jnp.issubdtype(jnp.result_type(p), jnp.inexact):
            raise TypeError(
                f"{where}: every penalised leaf must be floating point, got dtype "
                f"{jnp.result_type(p)}. Exclude it with a mask."
            )
    total = jnp.zeros((), jnp.float32)
    for p in chosen:
        p = jnp.asarray(p)
        total = total + leaf_sum(p.astype(jtree.acc_dtype(p)))
    return total


def l2(params: PyTree, mask: Any = None) -> jax.Array:
    """Half the squared L2 norm of the (masked) parameters::

        l2(params) = 0.5 * sum_i p_i**2

    The factor one half makes the gradient ``params`` itself, so ``lam * l2`` is
    weight decay with rate ``lam``.

    Args:
        params: any tree of float arrays.
        mask: ``None`` (all leaves), a tree of bools shaped like ``params``, or a
            callable ``params -> such a tree`` (e.g. :func:`kernels_only`).

    Returns:
        A scalar, fp32 (or wider for fp64 params).

    Example:
        >>> loss = data_loss + 1e-4 * jt.regularization.l2(params, jt.regularization.kernels_only)
    """
    return 0.5 * _penalty("l2", params, mask, lambda p: jnp.sum(p * p))


def l1(params: PyTree, mask: Any = None) -> jax.Array:
    """The L1 norm of the (masked) parameters, which drives small weights to zero::

        l1(params) = sum_i |p_i|

    Args:
        params: any tree of float arrays.
        mask: ``None`` (all leaves), a tree of bools shaped like ``params``, or a
            callable ``params -> such a tree``.

    Returns:
        A scalar, fp32 (or wider for fp64 params).

    Example:
        >>> loss = data_loss + 1e-5 * jt.regularization.l1(params)
    """
    return _penalty("l1", params, mask, lambda p: jnp.sum(jnp.abs(p)))
