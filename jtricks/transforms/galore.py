"""GaLore: a base optimizer run on gradients projected onto a low-rank subspace.

Each matrix's gradient ``G`` (``m x n``) is projected onto its top ``r`` singular
directions, computed from an SVD every ``update_proj_gap`` updates, the base
optimizer (Adam by default) keeps its moments in that ``r``-dimensional space, and
its output is projected back. Tensors of other ranks name, through
:class:`GaLoreDimensionNumbers`, which axes form the matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, as_transform, static_field
from jtricks.transforms.adaptive import scale_by_adam

__all__ = ["GaLoreDimensionNumbers", "GaLoreState", "ScaleByGaLore", "scale_by_galore"]


class GaLoreDimensionNumbers(NamedTuple):
    """Which axes of a weight form the matrix GaLore projects (optax's class).

    The weight is read as a ``(reduction, output)`` matrix: ``reduction_axis`` are
    its input axes and ``output_axis`` its output axes, each an int or a sequence of
    ints (negative ones count from the end). Together they must name every axis. The
    default is a plain ``(fan_in, fan_out)`` matrix; an attention kernel stored as
    ``(embed, heads, head_dim)`` is ``GaLoreDimensionNumbers(0, (1, 2))``.
    """

    reduction_axis: Sequence[int] | int = 0
    output_axis: Sequence[int] | int = 1


def _is_dims(x: Any) -> bool:
    """A dimension-numbers entry (jtricks' class or optax's: duck-typed)."""
    return isinstance(x, tuple) and hasattr(x, "reduction_axis") and hasattr(x, "output_axis")


class _Plan(NamedTuple):
    """How one leaf is projected: its matrix form and the side of its projector."""

    order: tuple[int, ...]      # transpose taking the leaf to (reduction..., output...)
    grouped: tuple[int, ...]    # the leaf's shape after that transpose
    m: int
    n: int
    left: bool                  # m >= n: P is (m, r), low-rank R = P^T G is (r, n)
    rank: int

    def matrix(self, x: jax.Array) -> jax.Array:
        return jnp.transpose(x, self.order).reshape(self.m, self.n)

    def unmatrix(self, y: jax.Array) -> jax.Array:
        return jnp.transpose(y.reshape(self.grouped), np.argsort(self.order))

    def projector_shape(self) -> tuple[int, int]:
        return (self.m, self.rank) if self.left else (self.n, self.rank)

    def low_rank_shape(self) -> tuple[int, int]:
        return (self.rank, self.n) if self.left else (self.m, self.rank)


def _plan(x: Any, spec: Any, rank: int, path: Any) -> _Plan | None:
    """The projection plan of a leaf under its dimension numbers (``None``: none)."""
    if spec is None:
        return None
    where = f"scale_by_galore at {jtree.keystr(path)}"
    shape = jnp.shape(x)
    if len(shape) < 2:
        raise ValueError(
            f"{where}: GaLore projects matrices, but this leaf has shape {shape}. Give "
            "it None in weight_dimension_numbers so it skips the projection."
        )

    def norm(axes):
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        return tuple(int(a) % len(shape) for a in axes)

    red, out = norm(spec.reduction_axis), norm(spec.output_axis)
    if set(red) & set(out) or len(set(red + out)) != len(shape):
        raise ValueError(
            f"{where}: the reduction axes {red} and output axes {out} (from {spec}) must "
            f"be disjoint and name every axis of the shape {shape} (GaLore has no batch "
            "axes). Give e.g. GaLoreDimensionNumbers(0, (1, 2)) for a 3-D kernel."
        )
    m = math.prod(shape[a] for a in red)
    n = math.prod(shape[a] for a in out)
    return _Plan(order=red + out, grouped=tuple(shape[a] for a in red + out), m=m, n=n,
                 left=m >= n, rank=min(rank, m, n))


def _leaf_dims(spec: Any, tree: Any, where: str) -> list:
    """One dimension-numbers entry (or ``None``) per leaf of ``tree``.

    ``None`` projects exactly the 2-D leaves; one :class:`GaLoreDimensionNumbers`
    applies to every leaf of rank >= 2; a tree of them (``None`` to skip a leaf),
    shaped like the params or a prefix of them, applies leaf by leaf; a callable
    ``params -> such a tree`` is called first.
    """
    leaves = jax.tree.leaves(tree)
    if spec is None:
        return [GaLoreDimensionNumbers() if jnp.ndim(x) == 2 else None for x in leaves]
    if _is_dims(spec):
        return [spec if jnp.ndim(x) >= 2 else None for x in leaves]
    if callable(spec):
        spec = spec(tree)
    is_leaf = lambda x: x is None or _is_dims(x)
    try:
        full = jax.tree.map(lambda s, sub: jax.tree.map(lambda _: s, sub), spec, tree,
                            is_leaf=is_leaf)
    except (ValueError, TypeError):
        raise ValueError(
            f"{where}: weight_dimension_numbers must be shaped like the params (or a "
            f"prefix of them): {jtree.first_difference(tree, spec, is_leaf=is_leaf)}. "
            "Give a tree of GaLoreDimensionNumbers, None for leaves to skip."
        ) from None
    return jax.tree.structure(tree).flatten_up_to(full)


class GaLoreState(NamedTuple):
    """optax's ``GaLoreState``.

    Attributes:
        count: int32, the number of updates so far.
        base_optimizer_state: the base optimizer's state, on the low-rank shapes for
            projected leaves and the full shapes for the others.
        projector: each projected leaf's projector ``P`` (``(m, r)`` or ``(n, r)``);
            a ``(0, 0)`` array for the others.
    """

    count: jax.Array
    base_optimizer_state: Any
    projector: Any


class ScaleByGaLore(Transform):
    """GaLore's low-rank projection around a base optimizer; see :func:`scale_by_galore`."""

    update_proj_gap: Any
    scale: Any
    base_optimizer: Transform
    rank: int = static_field(default=128)
    weight_dimension_numbers: Any = static_field(default=None)

    def _plans(self, tree: Any, where: str) -> list:
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        dims = _leaf_dims(self.weight_dimension_numbers, tree, where)
        return [_plan(x, d, self.rank, path) for (path, x), d in zip(flat, dims)]

    def init(self, params):
        leaves, treedef = jax.tree.flatten(params)
        if not leaves:  # an empty tree: the projectors are that (empty) tree, as in optax
            return GaLoreState(count=jnp.zeros([], jnp.int32),
                               base_optimizer_state=self.base_optimizer.init(params),
                               projector=params)
        hp.check_float_params("scale_by_galore", params)
        projectors, proxies = [], []
        for x, plan in zip(leaves, self._plans(params, "scale_by_galore.init")):
            dtype = jnp.result_type(x)
            if plan is not None and jnp.issubdtype(dtype, jnp.complexfloating):
                raise TypeError(
                    f"scale_by_galore: a projected parameter has dtype {dtype}; GaLore's "
                    "projection is defined for real matrices. Give complex leaves None in "
                    "weight_dimension_numbers."
                )
            shape = (0, 0) if plan is None else plan.projector_shape()
            # Shaped like the leaf (full rank), it is placed like the leaf, as
            # jt.sharding.state_shardings places every params-shaped state leaf.
            projectors.append(jnp.zeros_like(x, dtype) if shape == jnp.shape(x)
                              else jnp.zeros(shape, dtype))
            # An unprojected leaf's proxy is shaped (and sharded) like the leaf.
            proxies.append(jnp.zeros_like(x, dtype) if plan is None
                           else jnp.zeros(plan.low_rank_shape(), dtype))
        return GaLoreState(count=jnp.zeros([], jnp.int32),
                           base_optimizer_state=self.base_optimizer.init(
                               treedef.unflatten(proxies)),
                           projector=treedef.unflatten(projectors))

    def update(self, updates, state, params=None, **extra):
        del params, extra  # the base optimizer sees low-rank shapes: no params for it
        refresh = state.count % self.update_proj_gap == 0
        scale = hp.value_at(self.scale, state.count)
        grads, treedef = jax.tree.flatten(updates)
        plans = self._plans(updates, "scale_by_galore.update")
        projectors = treedef.flatten_up_to(state.projector)
        low, new_projectors = [], []
        for g, p, plan in zip(grads, projectors, plans):
            r, p = (g, p) if plan is None else _project(g, p, plan, refresh)
            low.append(r)
            new_projectors.append(p)
        low_updates, base_state = self.base_optimizer.update(
            treedef.unflatten(low), state.base_optimizer_state, None)
        out = [u if plan is None else _back(u, p, plan, scale, jnp.result_type(g))
               for u, p, plan, g in zip(treedef.flatten_up_to(low_updates), new_projectors,
                                        plans, grads)]
        return treedef.unflatten(out), GaLoreState(
            count=jtree.increment(state.count), base_optimizer_state=base_state,
            projector=treedef.unflatten(new_projectors))

    def hyperparams_at(self, state):
        return {"update_proj_gap": self.update_proj_gap,
                "scale": hp.value_at(self.scale, state.count),
                "base_optimizer": self.base_optimizer.hyperparams_at(
                    state.base_optimizer_state)}

    def learning_rate_factors(self, params, state, new_state):
        return self.base_optimizer.learning_rate_factors(
            params, state.base_optimizer_state, new_state.base_optimizer_state)


def _project(g: jax.Array, projector: jax.Array, plan: _Plan,
             refresh: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The low-rank gradient and the projector it used (a fresh one on a refresh)."""
    if jnp.shape(projector) != plan.projector_shape():
        raise ValueError(
            f"scale_by_galore.update: a projector has shape {jnp.shape(projector)} but "
            f"its gradient ({jnp.shape(g)}) needs {plan.projector_shape()}. Pass the "
            "state init(params) built for params of these shapes."
        )
    matrix = plan.matrix(g)

    def fresh():
        # The SVD runs in (at least) fp32: LAPACK has no bf16 SVD.
        u, _, vh = jnp.linalg.svd(matrix.astype(jtree.acc_dtype(matrix)),
                                  full_matrices=False)
        top = u[:, :plan.rank] if plan.left else vh[:plan.rank, :].T
        return top.astype(projector.dtype)

    projector = jax.lax.cond(refresh, fresh, lambda: projector)
    low = projector.T @ matrix if plan.left else matrix @ projector
    return low, projector


def _back(u: jax.Array, projector: jax.Array, plan: _Plan, scale: Any,
          dtype: Any) -> jax.Array:
    """The base optimizer's low-rank output, projected back to the leaf and scaled."""
    full = projector @ u if plan.left else u @ projector.T
    return (scale * plan.unmatrix(full)).astype(dtype)


def scale_by_galore(rank: int = 128, update_proj_gap: int = 200, scale: float = 1.0,
                    base_optimizer: Any = None,
                    weight_dimension_numbers: Any = None) -> ScaleByGaLore:
    """Runs ``base_optimizer`` on low-rank projections of the matrices' gradients
    (GaLore, Zhao et al., 2024; optax's ``contrib`` building block).

    With ``G`` a leaf's gradient as an ``m x n`` matrix, ``r = min(rank, m, n)`` and
    ``k`` the 0-based update index::

        if k % update_proj_gap == 0:      U S V^T = svd(G)    (in fp32)
            P <- U[:, :r]     if m >= n       else      P <- V[:, :r]
        R <- P^T G            if m >= n       else      R <- G P
        N <- base_optimizer(R)                (its state lives in R's shape)
        u <- scale * P N      if m >= n       else      u <- scale * N P^T

    Leaves without dimension numbers go through ``base_optimizer`` unprojected and
    unscaled. The base optimizer gets ``params=None``: use a gradient-only block
    (``scale_by_adam``, ``scale_by_lion``, ...), with weight decay added after this
    transform (:func:`galore` does). Same state and numbers as optax's.

    Args:
        rank: the projection's rank, a Python int >= 1 (it sets the state's shapes).
        update_proj_gap: updates between SVDs, an integer >= 1.
        scale: multiplies the projected-back updates, >= 0; a number, an array or a
            schedule.
        base_optimizer: the transform run in the low-rank space (jtricks or optax);
            ``None`` is ``scale_by_adam()``.
        weight_dimension_numbers: ``None`` (project the 2-D leaves), one
            :class:`GaLoreDimensionNumbers` for every leaf of rank >= 2, a tree of
            them shaped like the params (``None`` skips a leaf), or a callable
            ``params -> such a tree``. Static.

    Example:
        >>> tx = jt.chain(scale_by_galore(rank=8, update_proj_gap=50),
        ...               jt.scale_by_learning_rate(1e-3))
    """
    where = "scale_by_galore"
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool):
        raise TypeError(
            f"{hp.reporter(where)}: rank must be a Python int (it sets the state's "
            f"shapes), got {type(rank).__name__}: {rank!r}."
        )
    hp.check_integer(where, "rank", rank, low=1,
                     fix="It is the dimension of the projection, e.g. 128.")
    hp.no_schedule(where, "update_proj_gap", update_proj_gap)
    hp.check_integer(where, "update_proj_gap", update_proj_gap, low=1,
                     fix="It is the number of updates between projector refreshes, e.g. 200.")
    hp.check_nonnegative(where, "scale", scale,
                         fix="It multiplies the projected-back update; the paper uses 0.25.")
    if base_optimizer is None:
        base_optimizer = scale_by_adam()
    return ScaleByGaLore(update_proj_gap=update_proj_gap, scale=hp.as_hyper(scale),
                         base_optimizer=as_transform(base_optimizer,
                                                     where=hp.reporter(where)),
                         rank=int(rank), weight_dimension_numbers=weight_dimension_numbers)
