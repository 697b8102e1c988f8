"""Small leafwise transforms and utilities of optax's: ``zero_nans``,
``keep_params_nonnegative``, ``clip_by_block_rms`` and the per-example clipping
utilities ``per_example_global_norm_clip`` / ``per_example_layer_norm_clip``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import EmptyState, Stateless, Transform

__all__ = [
    "ZeroNansState",
    "ZeroNans",
    "zero_nans",
    "NonNegativeParamsState",
    "KeepParamsNonnegative",
    "keep_params_nonnegative",
    "ClipByBlockRms",
    "clip_by_block_rms",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
]


class ZeroNansState(NamedTuple):
    """State of :func:`zero_nans`: ``found_nan``, a 0-d bool per leaf, true where the
    last update held a NaN."""

    found_nan: Any


class ZeroNans(Transform):
    """Replaces NaNs by zeros; see :func:`zero_nans`."""

    def init(self, params):
        return ZeroNansState(found_nan=jax.tree.map(
            lambda _: jtree.scalar(False, jnp.bool_, params), params))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        del state
        new = jax.tree.map(lambda u: jnp.where(jnp.isnan(u), jnp.zeros_like(u), u), updates)
        found = jax.tree.map(lambda u: jnp.any(jnp.isnan(u)), updates)
        return new, ZeroNansState(found_nan=found)


def zero_nans() -> ZeroNans:
    """Replaces every NaN in the updates by 0 and records, per leaf, whether one was
    found::

        u -> where(isnan(u), 0, u)
        state.found_nan = any(isnan(u))      (one bool per leaf)

    Example:
        >>> tx = jt.chain(zero_nans(), jt.adam(1e-3))
    """
    return ZeroNans()


NonNegativeParamsState = EmptyState


class KeepParamsNonnegative(Stateless):
    """Stops updates at zero; see :func:`keep_params_nonnegative`."""

    def update(self, updates, state, params=None, **extra):
        del extra
        hp.require_params("keep_params_nonnegative.update", params,
                          "it keeps params + updates >= 0")
        new = jtree.map_checked(lambda u, p: jnp.where(p + u < 0.0, -p, u).astype(u.dtype),
                                updates, params, names=("updates", "params"),
                                where="keep_params_nonnegative.update")
        return new, state


def keep_params_nonnegative() -> KeepParamsNonnegative:
    """Changes each update that would take a parameter below zero so that it lands
    on zero instead (the last link of a chain)::

        u -> -p  where p + u < 0
        u -> u   elsewhere

    A parameter that is already negative is moved to 0.

    Example:
        >>> tx = jt.chain(jt.sgd(0.1), keep_params_nonnegative())
    """
    return KeepParamsNonnegative()


class ClipByBlockRms(Stateless):
    """Clips each leaf's root mean square; see :func:`clip_by_block_rms`."""

    threshold: Any

    def update(self, updates, state, params=None, **extra):
        del params, extra
        threshold = self.threshold

        def leaf(u):
            rms = jnp.sqrt(jnp.mean(jtree.abs_sq(u.astype(jtree.acc_dtype(u)))))
            return (u / jnp.maximum(1.0, rms / threshold)).astype(u.dtype)

        return jax.tree.map(leaf, updates), state


def clip_by_block_rms(threshold: Any) -> ClipByBlockRms:
    """Scales each leaf (block) down so its root mean square is at most ``threshold``::

        rms(u) = sqrt(mean(|u|^2))          (over the leaf)
        u     -> u / max(1, rms(u) / threshold)

    Args:
        threshold: the largest RMS a leaf keeps, > 0 (a float or an array).

    Example:
        >>> tx = jt.chain(clip_by_block_rms(1.0), jt.sgd(0.1))
    """
    hp.check_threshold("clip_by_block_rms", "threshold", threshold)
    return ClipByBlockRms(threshold=threshold)


def _check_batch(where: str, grads: Any) -> None:
    leaves = jax.tree.leaves(grads)
    sizes = {jnp.shape(g)[0] if jnp.ndim(g) else None for g in leaves}
    if not leaves or None in sizes or len(sizes) != 1:
        raise ValueError(
            f"{where}: grads must hold per-example gradients, every leaf with the same "
            f"batch size on axis 0; got shapes {jax.tree.map(jnp.shape, grads)}. "
            "Compute them with jax.vmap(jax.grad(loss), in_axes=(None, 0))."
        )


def per_example_global_norm_clip(grads: Any, l2_norm_clip: Any) -> tuple[Any, jax.Array]:
    """Clips each example's gradient to global norm ``l2_norm_clip`` and sums them
    (the DP-SGD step; a utility, not a transform). With ``g_i`` example ``i``'s tree::

        c_i  = min(1, l2_norm_clip / ||g_i||)      (1 where ||g_i|| = 0)
        out  = sum_i c_i * g_i
        n    = #{i : c_i < 1}

    Args:
        grads: a tree whose leaves all have the batch on axis 0.
        l2_norm_clip: the largest global norm an example keeps.

    Returns:
        ``(sum of the clipped gradients, number of examples clipped)``.

    Example:
        >>> summed, n_clipped = per_example_global_norm_clip(per_example_grads, 1.0)
    """
    _check_batch("per_example_global_norm_clip", grads)
    norms = jax.vmap(lambda g: jtree.global_norm(g))(grads)
    multipliers = jnp.nan_to_num(jnp.minimum(l2_norm_clip / norms, 1.0), nan=1.0)
    clipped = jax.tree.map(lambda g: jnp.tensordot(multipliers, g, axes=1), grads)
    return clipped, jnp.sum(multipliers < 1.0)


def per_example_layer_norm_clip(grads: Any, global_l2_norm_clip: Any,
                                uniform: bool = True) -> tuple[Any, Any]:
    """Clips each example's gradient leaf by leaf, then sums over examples; the leaf
    thresholds split a global budget ``C = global_l2_norm_clip``::

        C_leaf = C / sqrt(n_leaves)               (uniform=True)
        C_leaf = C * sqrt(size_leaf / size_all)   (uniform=False; sizes per example)

    so the clipped example's global norm is at most ``C``. Each leaf is then clipped
    as by :func:`per_example_global_norm_clip`.

    Args:
        grads: a tree whose leaves all have the batch on axis 0.
        global_l2_norm_clip: the overall norm budget ``C``.
        uniform: split ``C`` evenly over leaves, else in proportion to their sizes.

    Returns:
        ``(tree of summed clipped leaves, tree of per-leaf counts of clipped examples)``.

    Example:
        >>> summed, n_clipped = per_example_layer_norm_clip(per_example_grads, 1.0)
    """
    _check_batch("per_example_layer_norm_clip", grads)
    leaves = jax.tree.leaves(grads)
    if uniform:
        clips = jax.tree.map(lambda _: global_l2_norm_clip * (1.0 / len(leaves)) ** 0.5, grads)
    else:
        total = sum(g[0].size for g in leaves)
        clips = jax.tree.map(lambda g: global_l2_norm_clip * (g[0].size / total) ** 0.5, grads)
    out = jax.tree.map(per_example_global_norm_clip, grads, clips)
    return jtree.unzip2(grads, out)
