"""Flat optimizer state for models with very many small parameter arrays.

:func:`flatten` wraps a transform so that it runs on a few long vectors (one per
dtype) instead of on thousands of small arrays. Its state is made of those
vectors and *stays* flat from step to step: only the incoming gradients (and the
params, when the inner transform reads them) are gathered into vectors each step,
and the outgoing updates are cut back into the params' shapes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtricks.base import Transform, as_transform

__all__ = ["Flatten", "flatten", "group_by_dtype", "ungroup"]


def _leaves(tree: Any) -> tuple[list, Any]:
    return jax.tree.flatten(tree)


def _layout(leaves: list) -> dict[str, list[int]]:
    """Leaf indices of each dtype group, groups named by dtype and sorted by name."""
    groups: dict[str, list[int]] = {}
    for i, x in enumerate(leaves):
        groups.setdefault(jnp.result_type(x).name, []).append(i)
    return {name: groups[name] for name in sorted(groups)}


def group_by_dtype(tree: Any) -> dict[str, jax.Array]:
    """Concatenates the leaves of ``tree``, raveled, into one vector per dtype.

    Leaves keep their flattening order inside each group; groups are keyed by the
    dtype's name (``"float32"``, ``"bfloat16"``...). ``None`` leaves are skipped.

    Example:
        >>> flat = group_by_dtype({"w": jnp.ones((2, 2)), "b": jnp.zeros(3, jnp.bfloat16)})
        >>> {k: v.shape for k, v in flat.items()}
        {'bfloat16': (3,), 'float32': (4,)}
    """
    leaves, _ = _leaves(tree)
    out = {}
    for name, idx in _layout(leaves).items():
        parts = [jnp.ravel(jnp.asarray(leaves[i])) for i in idx]
        out[name] = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
    return out


def _runtime_offsets(offsets: list[int], anchor: jax.Array) -> list[Any]:
    """``offsets`` as int32 scalars that XLA treats as values known only at run time.

    A static slice bakes its offset into the compiled kernel, so cutting a vector
    into 2000 pieces compiles 2000 distinct kernels (tens of seconds on CPU). With
    the offsets coming out of a ``cond`` on a runtime predicate (both branches give
    the same numbers) every piece of a given shape shares one kernel.
    """
    if len(offsets) < 2 or offsets[-1] >= np.iinfo(np.int32).max or anchor.size == 0:
        return list(offsets)
    values = tuple(np.int32(o) for o in offsets)
    pred = jnp.isnan(anchor[0])
    return list(jax.lax.cond(pred, lambda: tuple(jnp.asarray(v) + 0 for v in values),
                             lambda: tuple(jnp.asarray(v) for v in values)))


def ungroup(flat: dict[str, jax.Array], like: Any) -> Any:
    """Inverse of :func:`group_by_dtype`: cuts each vector back into ``like``'s leaves.

    Each piece keeps the dtype it has in ``flat`` (which may differ from ``like``'s).
    """
    leaves, treedef = _leaves(like)
    out: list[Any] = [None] * len(leaves)
    for name, idx in _layout(leaves).items():
        vec = flat[name]
        shapes = [np.shape(leaves[i]) for i in idx]
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64).tolist()
        for i, shape, size, offset in zip(idx, shapes, sizes,
                                          _runtime_offsets(offsets, vec)):
            if isinstance(offset, int):
                piece = jax.lax.slice(vec, (offset,), (offset + size,))
            else:
                piece = jax.lax.dynamic_slice(vec, (offset,), (size,))
            out[i] = piece.reshape(shape)
    return jax.tree.unflatten(treedef, out)


class Flatten(Transform):
    """Runs ``inner`` on one flat vector per dtype; see :func:`flatten`."""

    inner: Transform

    def init(self, params):
        return self.inner.init(group_by_dtype(params))

    def update(self, updates, state, params=None, **extra):
        flat_params = None if params is None else group_by_dtype(params)
        flat_updates, state = self.inner.update(group_by_dtype(updates), state, flat_params,
                                                **extra)
        return ungroup(flat_updates, updates), state


def flatten(tx: Any) -> Flatten:
    """Keeps ``tx``'s state as a few flat vectors, one per parameter dtype.

    For a model made of thousands of small arrays most of a step's time goes into
    moving arrays in and out of the compiled program and into per-array work. With
    ``flatten`` the optimizer state is one vector per dtype (e.g. Adam's ``mu`` and
    ``nu`` become ``{"float32": vector}``), so a step handles ``2 * n_leaves + a few``
    arrays instead of ``(2 + k) * n_leaves``, and the update is one elementwise pass
    over a long vector. Each step the gradients are gathered into those vectors::

        g_flat = concat(ravel(g_1), ..., ravel(g_n))        (per dtype)
        u_flat, state = tx.update(g_flat, state, p_flat)    (state stays flat)
        u_i = reshape(u_flat[o_i : o_i + size_i], shape_i)

    The numbers equal ``tx``'s for every transform that treats coordinates
    independently or through global sums (sgd, momentum, adagrad, rmsprop, adam,
    adamw without a mask, clipping by global norm up to the order of a sum).
    Transforms that look at a leaf's shape (``adaptive_grad_clip``'s unit norms)
    or at the tree's structure (a mask or ``partition``) see the flat vectors
    instead, so keep those outside the wrapper. On a few big arrays the gather
    costs one more pass over the gradients than ``tx`` itself: use ``flatten``
    for many small arrays, not for a handful of large ones.

    Args:
        tx: a jtricks transform or an optax ``GradientTransformation``.

    Example:
        >>> tx = jt.flatten(jt.adam(1e-3))
        >>> state = tx.init(params)          # state.mu == {"float32": flat vector}
        >>> updates, state = tx.update(grads, state, params)
        >>> params = jt.apply_updates(params, updates)
    """
    return Flatten(inner=as_transform(tx, where="flatten"))
