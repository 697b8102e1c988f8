"""Tree maths shared by the transforms: moments, norms, casts, checked maps.

Every helper here is one elementwise expression per leaf (or one reduction for a
norm), so XLA fuses a whole transform's update of a leaf into a single pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

__all__ = [
    "keystr",
    "first_difference",
    "map_with_path",
    "map_checked",
    "zeros_like",
    "cast",
    "global_norm",
    "increment",
    "bias_correction",
    "unzip2",
    "unzip3",
    "resolve_mask",
]


def keystr(path: Sequence[Any]) -> str:
    """A readable tree path such as ``['layer1']['w']``; ``<root>`` for the root."""
    return jax.tree_util.keystr(tuple(path)) or "<root>"


def first_difference(a: PyTree, b: PyTree, is_leaf: Callable | None = None) -> str:
    """Describes where the structures of ``a`` and ``b`` first differ."""
    pa, _ = jax.tree_util.tree_flatten_with_path(a, is_leaf=is_leaf)
    pb, _ = jax.tree_util.tree_flatten_with_path(b, is_leaf=is_leaf)
    for i, ((path_a, _), (path_b, _)) in enumerate(zip(pa, pb)):
        if path_a != path_b:
            return (
                f"leaf #{i} is at {keystr(path_a)} in the first tree but at "
                f"{keystr(path_b)} in the second"
            )
    if len(pa) != len(pb):
        longer, which = (pa, "first") if len(pa) > len(pb) else (pb, "second")
        extra = keystr(longer[min(len(pa), len(pb))][0])
        return (
            f"the {which} tree has {len(longer)} leaves against "
            f"{min(len(pa), len(pb))}; the first extra leaf is at {extra}"
        )
    ta = jax.tree_util.tree_structure(a, is_leaf=is_leaf)
    tb = jax.tree_util.tree_structure(b, is_leaf=is_leaf)
    return f"same leaf paths but different node types: {ta} vs {tb}"


def _structure_error(where: str, names: Sequence[str], trees: Sequence[PyTree],
                     is_leaf: Callable | None) -> ValueError:
    ref = jax.tree_util.tree_structure(trees[0], is_leaf=is_leaf)
    for name, t in zip(names[1:], trees[1:]):
        if jax.tree_util.tree_structure(t, is_leaf=is_leaf) != ref:
            diff = first_difference(trees[0], t, is_leaf=is_leaf)
            return ValueError(
                f"{where}: the {names[0]} tree and the {name} tree have different "
                f"structures: {diff}. Pass trees shaped like the params the state was "
                "initialised with (call init(params) again if the model changed)."
            )
    return ValueError(f"{where}: trees {', '.join(names)} have different structures.")


def map_with_path(fn: Callable, tree: PyTree, *rest: PyTree, names: Sequence[str] = (),
                  is_leaf: Callable | None = None, where: str = "tree map") -> PyTree:
    """``jax.tree.map_with_path`` that names the first differing path on mismatch."""
    trees = (tree, *rest)
    try:
        return jax.tree_util.tree_map_with_path(fn, tree, *rest, is_leaf=is_leaf)
    except ValueError as e:
        if "structure" not in str(e) and "Custom node type mismatch" not in str(e):
            raise
        names = tuple(names) or tuple(f"tree #{i}" for i in range(len(trees)))
        raise _structure_error(where, names, trees, is_leaf) from None


def map_checked(fn: Callable, tree: PyTree, *rest: PyTree, names: Sequence[str] = (),
                is_leaf: Callable | None = None, where: str = "tree map") -> PyTree:
    """``jax.tree.map`` that names the first differing path on a structure or shape
    mismatch.

    Leaves mapped together must have one shape: a ``(3, 1)`` update against a ``(3,)``
    moment would otherwise broadcast silently into a ``(3, 3)`` state. Shapes are
    static, so the check costs one tuple comparison per leaf at trace time; the path
    is only looked up once something is wrong.
    """
    trees = (tree, *rest)
    names = tuple(names) or tuple(f"tree #{i}" for i in range(len(trees)))

    def checked(*leaves):
        shapes = {_array_shape(x) for x in leaves} - {None}
        if len(shapes) > 1:
            raise _ShapeMismatch
        return fn(*leaves)

    try:
        return jax.tree.map(checked if rest else fn, tree, *rest, is_leaf=is_leaf)
    except _ShapeMismatch:
        raise _shape_error(where, names, trees, is_leaf) from None
    except ValueError as e:
        if "structure" not in str(e) and "Custom node type mismatch" not in str(e):
            raise
        raise _structure_error(where, names, trees, is_leaf) from None


def _array_shape(x: Any) -> tuple[int, ...] | None:
    """The shape of an array or tracer; ``None`` for Python scalars and static values
    (a bool mask, a float hyperparameter), which broadcast by design."""
    return x.shape if isinstance(x, (jax.Array, np.ndarray)) else None


class _ShapeMismatch(Exception):
    """Raised inside :func:`map_checked` to leave the map before reporting."""


def _shape_error(where: str, names: Sequence[str], trees: Sequence[PyTree],
                 is_leaf: Callable | None) -> ValueError:
    flat = [jax.tree_util.tree_flatten_with_path(t, is_leaf=is_leaf)[0] for t in trees]
    for entries in zip(*flat):
        shapes = [_array_shape(x) for _, x in entries]
        if len({s for s in shapes if s is not None}) > 1:
            listed = ", ".join(f"{n}{keystr(path)} has shape {s}"
                               for n, (path, _), s in zip(names, entries, shapes)
                               if s is not None)
            return ValueError(
                f"{where}: leaves that must match have different shapes: {listed}. "
                f"Pass {names[0]} shaped exactly like {names[1]} (the state was built "
                "by init from params of other shapes, or an update was reshaped)."
            )
    return ValueError(f"{where}: leaves of {', '.join(names)} have different shapes.")


def zeros_like(tree: PyTree, dtype: Any = None) -> PyTree:
    """Zeros shaped like each leaf, in ``dtype`` (default: the leaf's own dtype)."""
    return jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), dtype or jnp.result_type(x)), tree)


def cast(tree: PyTree, dtype: Any) -> PyTree:
    """Casts every leaf to ``dtype``; ``None`` leaves the tree untouched."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: jnp.asarray(x).astype(dtype), tree)


def global_norm(tree: PyTree) -> jax.Array:
    """The L2 norm of all leaves together, accumulated in fp32 (or wider)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    sums = [
        jnp.sum(jnp.square(jnp.asarray(x).astype(jnp.promote_types(jnp.result_type(x),
                                                                    jnp.float32))))
        for x in leaves
    ]
    return jnp.sqrt(sum(sums[1:], sums[0]))


def increment(count: jax.Array) -> jax.Array:
    """``count + 1`` that saturates at the int32 maximum instead of wrapping."""
    limit = jnp.iinfo(jnp.int32).max
    return jnp.where(count < limit, count + 1, limit).astype(jnp.int32)


def bias_correction(decay: Any, count: jax.Array) -> jax.Array:
    """``1 - decay ** count`` in fp32: the Adam debiasing denominator."""
    return 1 - jnp.asarray(decay, jnp.float32) ** count.astype(jnp.float32)


def unzip3(like: PyTree, tree_of_triples: PyTree) -> tuple[PyTree, PyTree, PyTree]:
    """Splits a tree whose leaves (at ``like``'s leaf positions) are 3-tuples."""
    treedef = jax.tree.structure(like)
    triples = treedef.flatten_up_to(tree_of_triples)
    return tuple(treedef.unflatten([t[i] for t in triples]) for i in range(3))


def unzip2(like: PyTree, tree_of_pairs: PyTree) -> tuple[PyTree, PyTree]:
    """Splits a tree whose leaves (at ``like``'s leaf positions) are 2-tuples."""
    treedef = jax.tree.structure(like)
    pairs = treedef.flatten_up_to(tree_of_pairs)
    return tuple(treedef.unflatten([t[i] for t in pairs]) for i in range(2))


def resolve_mask(mask: Any, params: PyTree, where: str = "mask") -> PyTree:
    """Turns ``mask`` (a tree of bools like ``params``, or ``params -> tree``) into a
    tree of Python bools shaped like ``params``, checking the structure.

    A mask is structural: its values decide which leaves a transform touches, so they
    must be known when tracing (Python or NumPy bools, not traced arrays).
    """
    if callable(mask):
        mask = mask(params)
    try:
        flat = jax.tree.structure(params).flatten_up_to(mask)
    except (ValueError, TypeError):
        raise ValueError(
            f"{where}: the mask tree does not match the params tree: "
            f"{first_difference(params, mask)}. Give a tree of bools with the params' "
            "structure, or a callable params -> such a tree."
        ) from None
    out = []
    for path_leaf, m in zip(jax.tree_util.tree_flatten_with_path(params)[0], flat):
        if isinstance(m, jax.core.Tracer) or jnp.ndim(m) != 0:
            raise TypeError(
                f"{where}: mask entry at {keystr(path_leaf[0])} must be a Python bool, "
                f"got {type(m).__name__} {m!r}. A mask chooses which leaves are "
                "transformed, so it must be known before tracing."
            )
        out.append(bool(m))
    return jax.tree.structure(params).unflatten(out)
