"""Flat optimizer state for models with very many small parameter arrays.

:func:`flatten` wraps a transform so that, for every leaf of at most ``max_size``
elements, it runs on a few long vectors (one per dtype) instead of on thousands of
small arrays. That part of the state *stays* flat from step to step: only the
incoming small gradients (and params, when the inner transform reads them) are
gathered each step, and the outgoing updates are cut back into the params' shapes.
Larger leaves pass through as they are.

:func:`flat_params` goes one step further for models whose code can read its
parameters from a container: the parameters themselves live in one vector per dtype,
so nothing is gathered or cut per step outside the model.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jtricks.base import Struct, Transform, as_transform, static_field

__all__ = ["Flatten", "flatten", "group_by_dtype", "ungroup", "DEFAULT_MAX_SIZE",
           "FlatParams", "flat_params"]

DEFAULT_MAX_SIZE = 4096
"""Leaves with more elements than this keep their own arrays (see :func:`flatten`)."""


def _plan(leaves: list, max_size: int | None) -> tuple[dict[str, list[int]], list[int]]:
    """Indices of the small leaves of each dtype (groups sorted by dtype name) and of
    the leaves too big to be worth gathering."""
    groups: dict[str, list[int]] = {}
    big: list[int] = []
    for i, x in enumerate(leaves):
        if max_size is not None and np.size(x) > max_size:
            big.append(i)
        else:
            groups.setdefault(jnp.result_type(x).name, []).append(i)
    return {name: groups[name] for name in sorted(groups)}, big


def group_by_dtype(tree: Any, max_size: int | None = None) -> dict[str, Any]:
    """Gathers the small leaves of ``tree``, raveled, into one vector per dtype.

    Returns ``{"flat": {dtype name: vector}, "leaves": [big leaves]}``: leaves with at
    most ``max_size`` elements (all of them when ``None``) are concatenated in their
    flattening order, one vector per dtype (``"float32"``, ``"bfloat16"``...); larger
    leaves are listed as they are. ``None`` leaves are skipped.

    Example:
        >>> g = group_by_dtype({"w": jnp.ones((2, 2)), "b": jnp.zeros(3, jnp.bfloat16)})
        >>> {k: v.shape for k, v in g["flat"].items()}, g["leaves"]
        ({'bfloat16': (3,), 'float32': (4,)}, [])
    """
    leaves = jax.tree.leaves(tree)
    groups, big = _plan(leaves, max_size)
    flat = {}
    for name, idx in groups.items():
        parts = [jnp.ravel(jnp.asarray(leaves[i])) for i in idx]
        flat[name] = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
    return {"flat": flat, "leaves": [leaves[i] for i in big]}


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


def _cut(vec: jax.Array, shapes: list[tuple[int, ...]]) -> list[jax.Array]:
    """``vec`` cut, in order, into consecutive pieces of the given shapes."""
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64).tolist()
    pieces = []
    for shape, size, offset in zip(shapes, sizes, _runtime_offsets(offsets, vec)):
        if isinstance(offset, int):
            piece = jax.lax.slice(vec, (offset,), (offset + size,))
        else:
            piece = jax.lax.dynamic_slice(vec, (offset,), (size,))
        pieces.append(piece.reshape(shape))
    return pieces


def _split(vec: jax.Array, shapes: tuple[tuple[int, ...], ...]) -> list[jax.Array]:
    """``vec`` cut into consecutive pieces of the given shapes with static slices (any
    padding after the last piece is left out, so its transpose gives it zeros)."""
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    total = int(sum(sizes))
    if vec.shape[0] != total:
        vec = jax.lax.slice(vec, (0,), (total,))
    pieces = jnp.split(vec, np.cumsum(sizes)[:-1].tolist()) if shapes else []
    return [p.reshape(s) for p, s in zip(pieces, shapes)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _views(vec: jax.Array, shapes: tuple[tuple[int, ...], ...]) -> tuple[jax.Array, ...]:
    """``vec`` cut into pieces of ``shapes`` for a model to read (``FlatParams.tree``).

    The pieces are cut at offsets known only at run time (:func:`_cut`): a consumer
    of a static slice bakes the offset into its kernel, so every layer reading its
    own piece would compile a kernel of its own (measured: the 2000-array step
    compiled 6x longer than on the tree); with runtime offsets, layers of one shape
    share their kernels. The derivative is the same cut with static slices, which is
    linear, so reverse mode transposes it into one concatenation of the pieces'
    gradients (rather than one update of the whole vector per piece).
    """
    return tuple(_cut(vec, list(shapes)))


@_views.defjvp
def _views_jvp(shapes, primals, tangents):
    (vec,), (tangent,) = primals, tangents
    return _views(vec, shapes), tuple(_split(tangent, shapes))


def ungroup(grouped: dict[str, Any], like: Any, max_size: int | None = None) -> Any:
    """Inverse of :func:`group_by_dtype`: cuts each vector back into ``like``'s leaves.

    ``max_size`` must be the one ``grouped`` was made with. Each piece keeps the
    dtype it has in ``grouped`` (which may differ from ``like``'s).
    """
    leaves, treedef = jax.tree.flatten(like)
    groups, big = _plan(leaves, max_size)
    out: list[Any] = [None] * len(leaves)
    for i, x in zip(big, grouped["leaves"]):
        out[i] = x
    for name, idx in groups.items():
        for i, piece in zip(idx, _cut(grouped["flat"][name], [np.shape(leaves[i]) for i in idx])):
            out[i] = piece
    return jax.tree.unflatten(treedef, out)


class Flatten(Transform):
    """Runs ``inner`` on one flat vector per dtype; see :func:`flatten`."""

    inner: Transform
    max_size: int | None = static_field(default=DEFAULT_MAX_SIZE)

    def init(self, params):
        return self.inner.init(group_by_dtype(params, self.max_size))

    def update(self, updates, state, params=None, **extra):
        def gather(tree):
            grouped = group_by_dtype(tree, self.max_size)
            # The barrier makes XLA write each vector once, one copy per leaf; left
            # free, it fuses the concatenation into every consumer, which then picks
            # each coordinate's source out of thousands of arrays: several times slower.
            return {"flat": jax.lax.optimization_barrier(grouped["flat"]),
                    "leaves": grouped["leaves"]}

        flat_params = None if params is None else gather(params)
        flat_updates, state = self.inner.update(gather(updates), state, flat_params, **extra)
        return ungroup(flat_updates, updates, self.max_size), state

    # The state is the inner transform's own (over the flat vectors).

    def hyperparams_at(self, state):
        return {"inner": self.inner.hyperparams_at(state)}

    def learning_rate_factors(self, params, state, new_state):
        # A factor limited to some leaves of the flat vectors cannot be mapped back to
        # the params' leaves; such factors (a mask inside flatten) are not reported.
        return [f for f in self.inner.learning_rate_factors(params, state, new_state)
                if f.coverage is None]


def flatten(inner: Any, *, max_size: int | None = DEFAULT_MAX_SIZE) -> Flatten:
    """Keeps ``inner``'s state for the small arrays as a few flat vectors, one per dtype.

    For a model made of thousands of small arrays most of a step's time goes into
    moving arrays in and out of the compiled program and into per-array work. With
    ``flatten`` the state of every leaf with at most ``max_size`` elements lives in
    one vector per dtype (Adam's ``mu`` becomes ``{"flat": {"float32": vector},
    "leaves": [state of each larger leaf]}``), so a step handles about
    ``3 * n_leaves`` arrays instead of ``(3 + k) * n_leaves``, and the update of the
    small leaves is one elementwise pass over a long vector. The state stays flat
    between steps; each step only the small gradients are gathered and the updates
    cut back (per dtype)::

        g_flat = concat(ravel(g_1), ..., ravel(g_n))         (small leaves only)
        u_flat, state = tx.update(g_flat, state, p_flat)     (state stays flat)
        u_i = reshape(u_flat[o_i : o_i + size_i], shape_i)

    Larger leaves go through ``tx`` as they are: for them the gather would cost a
    copy of the gradient per step (XLA's CPU concatenation runs at a fraction of
    memory bandwidth) and save nothing worth it, so ``flatten`` never makes a step
    on big arrays slower than ``tx`` alone. Measured on a 2-core CPU, one array
    costs about as much as gathering 5,000 floats; hence the default of 4096.

    The numbers equal ``tx``'s for every transform that treats coordinates
    independently or through global sums (sgd, momentum, adagrad, rmsprop, adam,
    adamw without a mask, clipping by global norm up to the order of a sum).
    Transforms that look at a leaf's shape (``adaptive_grad_clip``'s unit norms)
    or at the tree's structure (a mask or ``partition``) would see the flat vectors
    instead, so keep those outside the wrapper.

    Under sharding, the flat vectors are not shaped like any parameter, so they do
    not follow the params' shardings: :func:`jtricks.sharding.state_shardings` (and
    ``make_step(mesh=...)``) keep them replicated on the params' mesh, whole on every
    device, and ZeRO-1 does not split them. The larger leaves keep their parameter's
    sharding. They hold only leaves of at most ``max_size`` elements, which is
    cheap to replicate; for a model that only fits sharded, leave its big arrays
    outside the flat part (the default ``max_size`` does). (The vectors of
    :func:`flat_params` are the parameters themselves, padded to split evenly: their
    state follows them, ZeRO-1 and FSDP included.)

    Args:
        inner: a jtricks transform or an optax ``GradientTransformation``.
        max_size: leaves with more elements keep their own arrays (static);
            ``None`` gathers every leaf.

    Example:
        >>> tx = jt.flatten(jt.adam(1e-3))
        >>> state = tx.init(params)      # state[0].mu["flat"]["float32"]: one vector
        >>> updates, state = tx.update(grads, state, params)
        >>> params = jt.apply_updates(params, updates)
    """
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int)
                                 or max_size < 0):
        raise ValueError(
            f"flatten: max_size must be a non-negative int or None, got {max_size!r}. "
            f"Leaves with more elements keep their own arrays; the default is "
            f"{DEFAULT_MAX_SIZE}."
        )
    return Flatten(inner=as_transform(inner, where="flatten"), max_size=max_size)


def _whole(vec: Any) -> Any:
    """``vec`` gathered whole when it is split over a mesh axis of type Explicit
    (FSDP), where slicing a split vector is refused; as it is otherwise."""
    spec = getattr(getattr(jax.typeof(vec), "sharding", None), "spec", ())
    if all(e is None for e in spec):
        return vec
    sharding = getattr(vec, "sharding", None)  # a concrete array: its own mesh
    whole = PartitionSpec() if not isinstance(sharding, NamedSharding) else \
        NamedSharding(sharding.mesh, PartitionSpec())
    return jax.sharding.reshard(vec, whole)


class FlatParams(Struct):
    """Parameters stored as one vector per dtype; see :func:`flat_params`.

    A pytree whose leaves are the vectors (``vectors``: dtype name -> 1-D array) and
    whose layout (tree structure, shapes, order, ``pad_to``) is static, so
    ``jax.grad`` of a loss that reads :meth:`tree` returns a ``FlatParams`` of
    gradient vectors, and any optimizer (jtricks or optax) treats it as a tree of a
    few leaves.

    Each vector holds its parameters' elements in order, then zeros up to a length
    divisible by ``pad_to`` (so it splits evenly over ``pad_to`` devices). The
    padding is no parameter: :meth:`tree` leaves it out and its gradient is zero.
    """

    vectors: dict[str, jax.Array]
    treedef: Any = static_field()
    shapes: tuple[tuple[int, ...], ...] = static_field()
    groups: tuple[tuple[str, tuple[int, ...]], ...] = static_field()
    pad_to: int = static_field(default=1)

    def tree(self) -> Any:
        """The parameters as their original tree: pieces of the vectors (cut at
        offsets the program reads at run time, so layers of one shape share their
        compiled kernels; the padding is left out); under ``jax.grad`` the pieces'
        gradients are concatenated into one vector per dtype, zeros on the padding."""
        out: list[Any] = [None] * len(self.shapes)
        for name, idx in self.groups:
            shapes = tuple(self.shapes[i] for i in idx)
            for i, piece in zip(idx, _views(_whole(self.vectors[name]), shapes)):
                out[i] = piece
        return jax.tree.unflatten(self.treedef, out)

    def sizes(self) -> dict[str, int]:
        """The number of parameter elements in each vector (its length without padding)."""
        return {name: int(sum(int(np.prod(self.shapes[i], dtype=np.int64)) for i in idx))
                for name, idx in self.groups}


def padded_length(size: int, pad_to: int) -> int:
    """``size`` rounded up to a multiple of ``pad_to``."""
    return -(-size // pad_to) * pad_to


def resize(vec: Any, length: int) -> Any:
    """``vec`` cut or zero-padded to ``length`` (only ever cutting padding off)."""
    n = vec.shape[0]
    if n == length:
        return vec
    if n > length:
        return vec[:length]
    return jnp.concatenate([vec, jnp.zeros((length - n,), vec.dtype)])


def flat_params(params: Any, *, pad_to: int = 1) -> FlatParams:
    """Stores ``params`` as one vector per dtype, for models of very many small arrays.

    Every array that enters and leaves a compiled step costs a few microseconds, and
    every per-array kernel costs its launch: with thousands of small parameter
    arrays those costs dominate a step. Kept as a :class:`FlatParams`, the
    parameters cross the step boundary as one vector per dtype; the model reads them
    through ``flat.tree()``, so the gradient arrives as the same few vectors and the
    optimizer makes one pass over each. Numbers are those of the tree-shaped
    parameters (Adam, SGD and every transform that treats coordinates independently
    or through global sums)::

        flat = jt.flat_params(params)
        tx = jt.adam(1e-3)
        state = tx.init(flat)                       # mu, nu: one vector per dtype
        def loss_fn(flat, batch):
            return model_loss(flat.tree(), batch)   # the model sees the usual tree
        grads = jax.grad(loss_fn)(flat, batch)      # a FlatParams of vectors
        updates, state = tx.update(grads, state, flat)
        flat = jt.apply_updates(flat, updates)

    Transforms that look at a leaf's shape (``adaptive_grad_clip``) or at the tree's
    structure (masks, ``partition``) see the vectors instead: give those the tree
    (use :func:`flatten` on the optimizer instead), or build the mask on the vectors.
    When the parameters must stay a tree, :func:`flatten` keeps only the optimizer's
    state flat.

    On several devices the vectors are split like any array (``make_step(mesh=...)``
    does it: replicated for data parallelism, split over the data axis for ZeRO-1's
    optimizer state and for FSDP), so a vector's length must divide by the device
    count: ``pad_to=n`` appends zeros up to a multiple of ``n``. The padding gets a
    zero gradient, so every update that is zero for a zero gradient and a zero
    parameter (SGD, momentum, Adam, AdamW's weight decay, clipping) keeps it zero;
    ``tree()`` leaves it out either way.

    Args:
        params: a pytree of arrays (``None`` leaves are dropped).
        pad_to: (keyword-only) each vector's length is rounded up to a multiple of
            it with zeros; 1 (the default) adds none.

    Returns:
        A :class:`FlatParams`; ``flat.tree()`` gives ``params`` back, bit for bit.
    """
    if isinstance(pad_to, bool) or not isinstance(pad_to, (int, np.integer)) or pad_to < 1:
        raise ValueError(
            f"flat_params: pad_to must be an integer >= 1, got {pad_to!r}. Pass the "
            "number of devices the vectors are split over (1 for no padding)."
        )
    pad_to = int(pad_to)
    leaves, treedef = jax.tree.flatten(params)
    groups, _ = _plan(leaves, None)
    grouped = group_by_dtype(params)["flat"]
    vectors = {name: resize(v, padded_length(v.shape[0], pad_to))
               for name, v in grouped.items()}
    return FlatParams(
        vectors=vectors, treedef=treedef,
        shapes=tuple(tuple(np.shape(x)) for x in leaves),
        groups=tuple((name, tuple(idx)) for name, idx in groups.items()),
        pad_to=pad_to,
    )
