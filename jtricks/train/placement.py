"""Where a training state lives on a mesh, and the constraints a step on it applies.

:func:`place_state` builds a :class:`~jtricks.train.TrainState` on a mesh from
what the caller gives (always fresh buffers: a donated step must never consume the
caller's params or key). :class:`Layout` is the static half of a step on a mesh:
which params the loss sees gathered, and how gradients are split.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

from jtricks import sharding as jsharding
from jtricks.train.state import TrainState, flat_opt_init
from jtricks.transforms.flatten import FlatParams

__all__ = ["Layout", "build_layout", "place_state", "copy_to", "onto_mesh", "constrain"]

PyTree = Any


def _explicit(mesh: Mesh) -> bool:
    return any(t == AxisType.Explicit for t in mesh.axis_types)


def constrain(tree: PyTree, shardings: PyTree) -> PyTree:
    """Inside ``jit``: ``tree`` laid out as ``shardings`` say (``reshard`` for meshes
    with explicit axes, a sharding constraint for automatic ones)."""
    def one(x, s):
        if _explicit(s.mesh):
            return jax.sharding.reshard(x, s)
        return jax.lax.with_sharding_constraint(x, s)

    return jax.tree.map(one, tree, shardings)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The static layout of a step on a mesh (hashable: a static ``jit`` argument).

    Attributes:
        mesh: the device mesh.
        data_axis: the mesh axis the batch is split over.
        treedef: the params' tree structure.
        params: one ``NamedSharding`` per param leaf (flattened).
        gather: whether the loss sees the params gathered whole on every device
            (FSDP: params are stored split, computed on whole, and their gradients
            reduce-scattered back).
    """

    mesh: Mesh
    data_axis: str
    treedef: Any
    params: tuple
    gather: bool

    def param_shardings(self) -> PyTree:
        return jax.tree.unflatten(self.treedef, self.params)

    def whole(self, tree: PyTree) -> PyTree:
        """Inside ``jit``: ``tree`` whole on every device (gathered if split)."""
        rep = jsharding.replicated(self.mesh)
        return constrain(tree, jax.tree.map(lambda _: rep, tree))

    def for_loss(self, params: PyTree) -> PyTree:
        return self.whole(params) if self.gather else params

    def like_params(self, grads: PyTree) -> PyTree:
        return constrain(grads, self.param_shardings())

    def update(self, tx: Any, grads: PyTree, opt_state: PyTree, params: PyTree,
               **extra: Any) -> tuple[PyTree, PyTree]:
        """``tx.update`` under XLA's automatic sharding propagation.

        On a mesh with explicit axes every operation must have an unambiguous
        sharding, which optimizer code written for one device (the matrix products
        of muon on a split state) does not give; run there with the mesh's axes
        automatic, the updates come back split like the params and the state as it
        came in.
        """
        if not _explicit(self.mesh):
            return tx.update(grads, opt_state, params, **extra)

        def specs(tree):
            return jax.tree.map(lambda x: jax.typeof(x).sharding.spec, tree)

        run = jax.sharding.auto_axes(lambda g, s, p: tx.update(g, s, p, **extra),
                                     out_sharding=(specs(params), specs(opt_state)))
        return run(grads, opt_state, params)

    def batch_sharding(self, leading: int = 0) -> NamedSharding:
        """Split over the data axis at dimension ``leading`` (1 under a scan of batches)."""
        spec = [None] * leading + [self.data_axis]
        return NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec))


def build_layout(params: PyTree, mesh: Mesh, data_axis: str, param_sharding: Any) -> Layout:
    """The layout of ``params`` on ``mesh`` (see :func:`jtricks.sharding.param_shardings`)."""
    shardings = jsharding.param_shardings(params, mesh, param_sharding, axis=data_axis)
    leaves, treedef = jax.tree.flatten(shardings)
    return Layout(mesh=mesh, data_axis=data_axis, treedef=treedef, params=tuple(leaves),
                  gather=isinstance(param_sharding, str))


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _copy_one(x: Any, sharding: NamedSharding) -> jax.Array:
    if _is_key(x):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(_copy_one(jax.random.key_data(x), sharding),
                                        impl=impl)
    if jax.process_count() > 1:
        # Every process holds the same full value; each fills its own devices.
        host = np.asarray(jax.device_get(x) if isinstance(x, jax.Array) else x)
        return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])
    # device_put may hand back (part of) the caller's buffer even with
    # may_alias=False (a single-device array onto a replicated sharding keeps its
    # device-0 shard); copying first makes every buffer the state's own.
    return jax.device_put(jnp.array(x, copy=True), sharding)


def copy_to(tree: PyTree, shardings: PyTree) -> PyTree:
    """Fresh copies of ``tree``'s leaves placed as ``shardings`` (a tree or one sharding)."""
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: _copy_one(x, shardings), tree)
    return jax.tree.map(_copy_one, tree, shardings)


def onto_mesh(tree: PyTree, mesh: Mesh) -> PyTree:
    """Leaves already on ``mesh`` kept; every other leaf copied there replicated."""
    rep = jsharding.replicated(mesh)

    def one(x):
        s = getattr(x, "sharding", None)
        if isinstance(s, NamedSharding) and s.mesh == mesh:
            return x
        return _copy_one(x, rep)

    return jax.tree.map(one, tree)


def _unaliased(tree: PyTree) -> PyTree:
    """A copy of every leaf that appears twice (jit may hand an input back as an
    output), so donating the state never frees a buffer it still uses."""
    seen: set[int] = set()

    def one(x):
        if id(x) in seen:
            return jnp.array(x, copy=True)
        seen.add(id(x))
        return x

    return jax.tree.map(one, tree)


def place_state(layout: Layout, tx: Any, averaging: Any, zero: bool, params: PyTree,
                key: jax.Array, model_state: PyTree) -> TrainState:
    """A fresh :class:`TrainState` on ``layout.mesh``: params as the layout says, the
    optimizer state following them (ZeRO-1 over the data axis with ``zero``), and the
    step, key and model state replicated."""
    if jax.tree.structure(params) != layout.treedef:
        raise ValueError(
            "make_step.init: params do not have the structure the step's layout was "
            "built for; build a new step for a new model."
        )
    rep = jsharding.replicated(layout.mesh)
    params = copy_to(params, layout.param_shardings())
    zero_axis = layout.data_axis if zero else None
    if isinstance(params, FlatParams):  # refuses transforms that need the tree
        opt_state = flat_opt_init(
            tx, params, init=lambda t, p: jsharding.init(t, p, zero_axis=zero_axis))
    else:
        opt_state = jsharding.init(tx, params, zero_axis=zero_axis)
    averages = None
    if averaging is not None:
        with jsharding.use_mesh(layout.mesh):
            averages = onto_mesh(averaging.init(params), layout.mesh)
    state = TrainState(step=copy_to(jnp.zeros([], jnp.int32), rep), params=params,
                       opt_state=opt_state, model_state=copy_to(model_state, rep),
                       key=copy_to(key, rep), averages=averages)
    return _unaliased(state)
