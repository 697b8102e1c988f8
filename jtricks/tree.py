"""Tree helpers shared by the whole package: paths, checked maps, dtypes, norms.

Every helper here is one elementwise expression per leaf (or one reduction for a
norm), so XLA fuses a whole transform's update of a leaf into a single pass. This
module imports nothing from jtricks: every other module may use it.
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
    "path_name",
    "first_difference",
    "map_with_path",
    "map_checked",
    "zeros_like",
    "full_like",
    "scalar",
    "replicated_like",
    "acc_dtype",
    "abs_sq",
    "norm",
    "norms",
    "unit_norms",
    "global_norm",
    "increment",
    "bias_correction",
    "unzip2",
    "unzip3",
    "broadcast_prefix",
    "is_mask_function",
    "resolve_mask",
]


def keystr(path: Sequence[Any]) -> str:
    """A readable tree path such as ``['layer1']['w']``; ``<root>`` for the root."""
    return jax.tree_util.keystr(tuple(path)) or "<root>"


def path_name(path: Sequence[Any]) -> str:
    """A readable ``/``-joined name for a tree path.

    ``{'Dense_0': {'kernel': w}}`` gives ``Dense_0/kernel``; a list index gives its
    number (``layers/2/w``). Flax wrappers are dropped: an nnx ``Variable``'s
    trailing ``.value`` and linen's ``__call__`` level of captured intermediates
    (``intermediates/Dense_0/__call__/0`` reads ``intermediates/Dense_0``).
    """
    keys = list(path)
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    parts: list[str] = []
    after_call = False
    for k in keys:
        part = _key_name(k)
        if part == "__call__":
            after_call = True
            continue
        if after_call and part == "0":
            after_call = False
            continue
        after_call = False
        parts.append(part)
    return "/".join(parts) or "<root>"


def _key_name(k: Any) -> str:
    if isinstance(k, jax.tree_util.DictKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    if isinstance(k, jax.tree_util.SequenceKey):
        return str(k.idx)
    if isinstance(k, jax.tree_util.FlattenedIndexKey):
        return str(k.key)
    return str(k)


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
    """Zeros shaped and placed like each leaf, in ``dtype`` (default: the leaf's own).

    A leaf sharded over a mesh gives zeros with the same sharding (eagerly, and under
    ``jit`` inside ``jax.set_mesh`` for meshes with explicit axes), so an optimizer
    state built from it never lands whole on one device.
    """
    return jax.tree.map(lambda x: jnp.zeros_like(x, dtype or jnp.result_type(x)), tree)


def full_like(tree: PyTree, value: Any, dtype: Any = None) -> PyTree:
    """``value`` shaped and placed like each leaf (see :func:`zeros_like`)."""
    return jax.tree.map(lambda x: jnp.full_like(x, value, dtype or jnp.result_type(x)),
                        tree)


def _placement(like: PyTree) -> jax.sharding.Sharding | None:
    """Where a scalar of a state built from ``like`` belongs: replicated over the mesh
    of ``like``'s first sharded leaf, on the device of a leaf committed to one device,
    or ``None`` (no concrete placed leaf: tracing, or default placement)."""
    single = None
    for x in jax.tree.leaves(like):
        if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
            continue
        sharding = x.sharding
        if isinstance(sharding, jax.sharding.NamedSharding):
            return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        if single is None and getattr(x, "_committed", False) and len(sharding.device_set) == 1:
            single = sharding
    return single


def replicated_like(like: PyTree, tree: PyTree, *, only_unplaced: bool = False) -> PyTree:
    """``tree``'s arrays replicated over the mesh ``like``'s leaves are sharded on.

    For state that is not shaped like a parameter (step counts, loss scales, the
    small statistics of factored optimizers): whole on every device of the params'
    mesh, never on one device only. Unchanged when ``like`` is not placed on a mesh
    or a device (plain single-device use, or while tracing). With ``only_unplaced``,
    only the arrays not already sharded over a mesh move (and only onto a mesh).
    """
    where = _placement(like)
    if where is None:
        return tree
    if only_unplaced:
        if not isinstance(where, jax.sharding.NamedSharding):
            return tree

        def place(x):
            if (isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
                    and not isinstance(x.sharding, jax.sharding.NamedSharding)):
                return jax.device_put(x, where)
            return x

        return jax.tree.map(place, tree)
    return jax.tree.map(lambda x: jax.device_put(x, where), tree)


def scalar(value: Any, dtype: Any, like: PyTree = None) -> jax.Array:
    """A 0-d ``dtype`` array of ``value``, replicated where ``like`` lives.

    Example:
        >>> count = jtree.scalar(0, jnp.int32, like=params)  # an optimizer's step count
    """
    return replicated_like(like, jnp.asarray(value, dtype))


def acc_dtype(*xs: Any) -> Any:
    """The dtype statistics of ``xs`` (arrays or dtypes) are kept in: at least fp32.

    bf16 and fp16 give fp32; fp64 (under x64) and complex64 stay as they are.
    """
    dtype = jnp.dtype(jnp.float32)
    for x in xs:
        dtype = jnp.promote_types(dtype, jnp.result_type(x))
    return dtype


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|**2``: ``x * x`` for real ``x``, ``re(x * conj(x))`` for complex ``x``."""
    if jnp.iscomplexobj(x):
        return jnp.real(x * jnp.conj(x))
    return x * x


def _square_sum(x: Any, axis: Any = None, keepdims: bool = False) -> jax.Array:
    x = jnp.asarray(x)
    return jnp.sum(abs_sq(x.astype(acc_dtype(x))), axis=axis, keepdims=keepdims)


def unit_norms(x: jax.Array, axes: tuple[int, ...] | None) -> jax.Array:
    """L2 norms over ``axes`` (all of them when ``None``), accumulated in at least fp32
    and kept broadcastable to ``x``: the norm of each unit of a kernel."""
    return jnp.sqrt(_square_sum(x, axis=axes, keepdims=True))


def _rescaled_norm(x: Any) -> jax.Array:
    """The L2 norm computed as ``max|x| * ||x / max|x|||``: no square can overflow.
    NaN or inf entries give a NaN or inf norm."""
    x = jnp.asarray(x)
    x = x.astype(acc_dtype(x))
    if x.size == 0:
        return jnp.zeros((), jnp.real(x).dtype)
    top = jnp.max(jnp.abs(x))
    ok = jnp.isfinite(top) & (top > 0)
    safe = jnp.where(ok, top, 1.0)
    return jnp.where(ok, safe * jnp.sqrt(jnp.sum(abs_sq(x / safe))), top)


def _rescaled_global(leaves: list) -> jax.Array:
    return _rescaled_norm(jnp.stack([_rescaled_norm(x) for x in leaves]))


def norms(tree: PyTree, *, overflow_safe: bool = True) -> tuple[jax.Array, PyTree]:
    """``(global L2 norm, tree of per-leaf L2 norms)`` from one reduction per leaf.

    Sums of squares are accumulated in at least fp32. With ``overflow_safe`` (the
    default) norms whose squares overflow (a gradient of entries ~1e20 in fp32) are
    recomputed rescaled by the largest entry, so they stay finite and only a real
    NaN or inf entry gives a non-finite norm. The recomputation sits in a
    ``lax.cond`` that runs only on a step whose plain global norm is not finite.
    """
    leaves, treedef = jax.tree.flatten(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32), tree
    sums = [_square_sum(x) for x in leaves]
    per = [jnp.sqrt(s) for s in sums]
    total = jnp.sqrt(sum(sums[1:], sums[0]))
    if overflow_safe:
        def rescaled():
            return _rescaled_global(leaves), [_rescaled_norm(x) for x in leaves]

        total, per = jax.lax.cond(jnp.isfinite(total), lambda: (total, per), rescaled)
    return total, jax.tree.unflatten(treedef, per)


def norm(x: Any, *, overflow_safe: bool = True) -> jax.Array:
    """The L2 norm of one array, as :func:`norms` computes it."""
    return global_norm([x], overflow_safe=overflow_safe)


def global_norm(tree: PyTree, *, overflow_safe: bool = False) -> jax.Array:
    """The L2 norm of all leaves together, accumulated in fp32 (or wider).

    The default is the plain one-pass sum of squares (optax's numbers, the fastest:
    clipping runs it every step), which reads +inf once the squares overflow;
    ``overflow_safe=True`` gives the finite norm instead (see :func:`norms`).
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    sums = [_square_sum(x) for x in leaves]
    total = jnp.sqrt(sum(sums[1:], sums[0]))
    if overflow_safe:
        total = jax.lax.cond(jnp.isfinite(total), lambda: total,
                             lambda: _rescaled_global(leaves))
    return total


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


def broadcast_prefix(prefix: PyTree, tree: PyTree, where: str = "mask",
                     what: str = "mask") -> PyTree:
    """Expands ``prefix`` (a tree whose leaves may stand for whole subtrees of
    ``tree``) to a tree with exactly ``tree``'s structure."""
    try:
        return jax.tree.map(lambda value, sub: jax.tree.map(lambda _: value, sub),
                            prefix, tree)
    except (ValueError, TypeError):
        raise ValueError(
            f"{where}: the {what} tree must have the structure of the params tree (or "
            f"be a prefix of it), and it does not match: {first_difference(tree, prefix)}. "
            "Give a "
            f"{what} tree shaped like the params, or a callable params -> such a tree."
        ) from None


def is_mask_function(mask: Any) -> bool:
    """Whether ``mask`` is a function ``params -> mask`` rather than a mask tree.

    A callable that is itself a pytree node with leaves (an equinox module used as
    a tree of bools) is a tree, not a function.
    """
    return callable(mask) and jax.tree_util.treedef_is_leaf(jax.tree.structure(mask))


def resolve_mask(mask: Any, params: PyTree, where: str = "mask") -> PyTree:
    """Turns ``mask`` into a tree of Python bools shaped like ``params``.

    ``mask`` is a tree of bools with the params' structure, a prefix of it
    (``{"encoder": False, "head": True}`` covers whole subtrees), or a callable
    ``params -> either``. A mask is structural: its values decide which leaves a
    transform touches, so they must be known when tracing (Python or NumPy bools,
    not traced arrays).
    """
    if is_mask_function(mask):
        mask = mask(params)
    full = broadcast_prefix(mask, params, where=where)
    out = []
    for (path, _), m in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                            jax.tree.structure(params).flatten_up_to(full)):
        if isinstance(m, jax.core.Tracer) or jnp.ndim(m) != 0:
            raise TypeError(
                f"{where}: mask entry at {keystr(path)} must be a Python bool, "
                f"got {type(m).__name__} {m!r}. A mask chooses which leaves are "
                "transformed, so it must be known before tracing."
            )
        out.append(bool(m))
    return jax.tree.structure(params).unflatten(out)
