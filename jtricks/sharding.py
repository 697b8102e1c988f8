"""Optimizer state and batches on many devices, with JAX's own SPMD machinery.

Nothing here is home-made parallelism: arrays carry a
:class:`jax.sharding.NamedSharding` on a :class:`jax.sharding.Mesh`, ``jax.jit``
compiles one program for all devices and inserts the collectives, and several hosts
join through ``jax.distributed.initialize``. This module only decides *where* each
leaf lives:

* ``tx.init(params)`` already gives every params-shaped state leaf its parameter's
  sharding (eagerly), and scalars replicated on the same mesh;
* :func:`state_shardings` says the same thing abstractly (nothing is allocated), and
  optionally shards the state further over a data axis (ZeRO-1);
* :func:`init` creates the state directly where :func:`state_shardings` says,
  under ``jit``, so it is never whole on one device;
* :func:`param_shardings` places params replicated, FSDP-style, or from a tree of
  ``PartitionSpec`` (tensor parallelism);
* :func:`shard_batch` turns each process's batch into a global array split over
  the data axis.

:func:`jtricks.train.make_step` (``mesh=...``) puts these together.

Example::

    mesh = jax.make_mesh((8,), ("data",))
    params = jax.device_put(params, jt.sharding.param_shardings(params, mesh, "fsdp"))
    opt_state = jt.sharding.init(tx, params, zero_axis="data")
    batch = jt.sharding.shard_batch((x, y), mesh)
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from jtricks import tree as jtree

__all__ = ["state_shardings", "init", "param_shardings", "shard_batch", "mesh_of",
           "check_axis", "replicated", "use_mesh"]

PyTree = Any


# --- meshes ------------------------------------------------------------------------------


def check_axis(mesh: Mesh, axis: str, where: str) -> int:
    """The size of ``axis`` on ``mesh``; a ``ValueError`` naming both when it is absent."""
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"{where}: mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((8,), "
            f"('data',))), got {type(mesh).__name__}."
        )
    if axis not in mesh.axis_names:
        raise ValueError(
            f"{where}: the mesh has no axis {axis!r}; its axes are {tuple(mesh.axis_names)}. "
            f"Name the data axis with data_axis=/axis= (one of {tuple(mesh.axis_names)}), "
            "or build the mesh with that axis."
        )
    return int(mesh.shape[axis])


def mesh_of(tree: PyTree) -> Mesh | None:
    """The mesh of the first leaf of ``tree`` placed with a ``NamedSharding``, or ``None``."""
    for x in jax.tree.leaves(tree):
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, NamedSharding) and isinstance(sharding.mesh, Mesh):
            return sharding.mesh
    return None


def replicated(mesh: Mesh) -> NamedSharding:
    """Whole on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def use_mesh(mesh: Mesh | None) -> Any:
    """A context in which ``jit`` may trace code on arrays of ``mesh``.

    Meshes whose axes are ``Explicit`` (``jax.make_mesh``'s default) need
    ``jax.set_mesh`` while tracing; for the others it does no harm.
    """
    if mesh is None:
        import contextlib

        return contextlib.nullcontext()
    return jax.set_mesh(mesh)


def _spec_entries(sharding: Any, ndim: int) -> list:
    spec = list(getattr(sharding, "spec", ()))
    return spec + [None] * (ndim - len(spec))


def _uses(entry: Any, axis: str) -> bool:
    return entry == axis or (isinstance(entry, tuple) and axis in entry)


# --- optimizer state ---------------------------------------------------------------------


def _zero_sharding(sharding: NamedSharding, shape: tuple, axis: str) -> NamedSharding:
    """ZeRO-1: also shard the first unsharded dimension divisible by ``axis``'s size."""
    spec = _spec_entries(sharding, len(shape))
    if any(_uses(e, axis) for e in spec):  # already over the data axis (FSDP)
        return sharding
    size = sharding.mesh.shape[axis]
    for i, (entry, n) in enumerate(zip(spec, shape)):
        if entry is None and n % size == 0:
            spec[i] = axis
            return NamedSharding(sharding.mesh, PartitionSpec(*spec))
    return sharding


def _param_table(params: PyTree) -> dict:
    table = {}
    for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
        table[tuple(path)] = (tuple(np.shape(p)), getattr(p, "sharding", None))
    return table


def _matching_param(table: dict, path: tuple, shape: tuple) -> Sharding | None:
    """The sharding of the parameter a state leaf belongs to: the param whose path
    ends the leaf's path (``[0].mu['w']`` belongs to ``['w']``) and whose shape is
    the leaf's."""
    for start in range(len(path) + 1):
        found = table.get(path[start:])
        if found is not None and found[0] == shape:
            return found[1]
    return None


def state_shardings(tx: Any, params: PyTree, *, zero_axis: str | None = None) -> PyTree:
    """Where each leaf of ``tx.init(params)`` lives, computed without allocating it.

    A state leaf shaped like a parameter and found under that parameter's path (the
    ``mu``, ``nu``, ``trace``, accumulators, EMA means of every transform, inside any
    chain or wrapper) gets the parameter's sharding. Every other leaf (step counts,
    scales, keys, factored statistics, the flat buffers of ``jt.flatten``) is
    replicated on the params' mesh.

    With ``zero_axis`` (ZeRO-1), each params-shaped leaf with at least one dimension
    is also split over that mesh axis along its first dimension that is not
    already sharded and divides by the axis size; a leaf with no such dimension, or
    already sharded over ``zero_axis`` (FSDP), keeps the parameter's sharding. Each
    device then holds about ``1 / axis size`` of the optimizer state.

    Args:
        tx: a jtricks transform (or anything with ``init``).
        params: arrays placed on a mesh (``jax.Array`` with a ``NamedSharding``), or
            ``jax.ShapeDtypeStruct`` leaves carrying one.
        zero_axis: a mesh axis name, or ``None``.

    Returns:
        A tree of ``jax.sharding.Sharding`` with the structure of
        ``jax.eval_shape(tx.init, params)``.

    Example:
        >>> shardings = jt.sharding.state_shardings(jt.adam(1e-3), params, zero_axis="data")
    """
    mesh = mesh_of(params)
    if mesh is None:
        raise ValueError(
            "state_shardings: no leaf of params is placed on a mesh (none has a "
            "NamedSharding). Place them first, e.g. jax.device_put(params, "
            "jt.sharding.param_shardings(params, mesh)), or pass ShapeDtypeStructs with "
            "sharding=NamedSharding(mesh, spec)."
        )
    if zero_axis is not None:
        check_axis(mesh, zero_axis, "state_shardings")
    with use_mesh(mesh):
        shapes = jax.eval_shape(tx.init, params)
    table = _param_table(params)
    rep = replicated(mesh)

    def place(path, leaf):
        shape = tuple(leaf.shape)
        found = _matching_param(table, tuple(path), shape)
        if not isinstance(found, NamedSharding):
            return rep
        if zero_axis is not None and shape:
            return _zero_sharding(found, shape, zero_axis)
        return found

    return jax.tree_util.tree_map_with_path(place, shapes)


def init(tx: Any, params: PyTree, *, zero_axis: str | None = None) -> PyTree:
    """``tx.init(params)`` created under ``jit`` directly where
    :func:`state_shardings` says: no leaf is ever whole on one device.

    Example:
        >>> opt_state = jt.sharding.init(jt.adamw(1e-3), params, zero_axis="data")
    """
    shardings = state_shardings(tx, params, zero_axis=zero_axis)
    with use_mesh(mesh_of(params)):
        return jax.jit(_init, out_shardings=shardings)(tx, params)


def _init(tx: Any, params: PyTree) -> PyTree:
    # One function for every call: equal programs share jit's caches.
    return tx.init(params)


# --- params ------------------------------------------------------------------------------


def _fsdp_spec(shape: tuple, size: int, axis: str) -> PartitionSpec:
    """The largest dimension divisible by ``size`` (the first of equals) over ``axis``."""
    best = None
    for i, n in enumerate(shape):
        if n % size == 0 and (best is None or n > shape[best]):
            best = i
    if best is None:
        return PartitionSpec()
    return PartitionSpec(*[axis if i == best else None for i in range(len(shape))])


def _is_spec(x: Any) -> bool:
    return x is None or isinstance(x, (PartitionSpec, NamedSharding))


def param_shardings(params: PyTree, mesh: Mesh, spec: Any = None, *,
                    axis: str = "data") -> PyTree:
    """A ``NamedSharding`` per parameter.

    Args:
        params: the parameter tree (arrays or anything with a shape).
        mesh: the device mesh.
        spec: ``None`` (every param replicated: plain data parallelism), ``"fsdp"``
            (each param split over ``axis`` along its largest dimension divisible by
            the axis size; params with no such dimension replicated), or a tree with
            the params' structure of ``PartitionSpec`` (or ``NamedSharding``, or
            ``None`` for replicated) for tensor parallelism.
        axis: the data axis ``"fsdp"`` shards over.

    Example:
        >>> params = jax.device_put(params, jt.sharding.param_shardings(params, mesh, "fsdp"))
    """
    size = check_axis(mesh, axis, "param_shardings")
    if spec is None:
        return jax.tree.map(lambda _: replicated(mesh), params)
    if isinstance(spec, str):
        if spec != "fsdp":
            raise ValueError(
                f"param_shardings: spec must be None, 'fsdp' or a tree of PartitionSpec, "
                f"got {spec!r}."
            )
        return jax.tree.map(
            lambda p: NamedSharding(mesh, _fsdp_spec(tuple(np.shape(p)), size, axis)), params)
    ours, theirs = jax.tree.structure(params), jax.tree.structure(spec, is_leaf=_is_spec)
    if ours != theirs:
        raise ValueError(
            "param_sharding: the tree of PartitionSpecs does not match the params: "
            f"{jtree.first_difference(params, spec, is_leaf=_is_spec)}. Give one "
            "PartitionSpec (or None for replicated) per parameter, in the params' tree."
        )

    def one(s):
        if isinstance(s, NamedSharding):
            return s
        return NamedSharding(mesh, PartitionSpec() if s is None else s)

    return jax.tree.map(one, spec, is_leaf=_is_spec)


# --- batches -----------------------------------------------------------------------------


def _local_rows(mesh: Mesh, axis: str) -> int:
    """How many of this process's devices a leading dimension is split over."""
    index = mesh.axis_names.index(axis)
    mine = {d.id for d in mesh.local_devices}
    positions = {pos[index] for pos in np.ndindex(mesh.devices.shape)
                 if mesh.devices[pos].id in mine}
    return len(positions)


def shard_batch(batch: PyTree, mesh: Mesh, axis: str = "data") -> PyTree:
    """Each leaf of ``batch`` as a global ``jax.Array`` split over ``axis`` on its
    leading dimension (replicated over the mesh's other axes).

    In one process, ``batch`` is the whole batch. With several processes
    (``jax.distributed.initialize``), each process passes its own part: process ``i``
    its slice of the global batch, in the order of the mesh's devices along
    ``axis`` (for ``jax.make_mesh`` over all devices: process 0 the first rows), and
    the global array is assembled with ``jax.make_array_from_process_local_data``.
    Leaves that already are global arrays with that sharding are kept.

    Raises:
        ValueError: a leaf has no leading dimension, or its leading size does not
            divide by the number of devices it is split over (the message names the
            leaf's path, its size and the device count); the mesh has no ``axis``.

    Example:
        >>> batch = jt.sharding.shard_batch((x, y), mesh)        # x: (256, 784) on 8 devices
    """
    size = check_axis(mesh, axis, "shard_batch")
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    multi = jax.process_count() > 1
    devices = _local_rows(mesh, axis) if multi else size

    def one(path, x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        shape = np.shape(x)
        if not shape:
            raise ValueError(
                f"shard_batch: batch leaf {jtree.keystr(path)} is a scalar; every leaf "
                "needs a leading batch dimension to split over the devices."
            )
        if shape[0] % devices:
            which = "this process's devices" if multi else "devices"
            raise ValueError(
                f"shard_batch: batch leaf {jtree.keystr(path)} has leading size "
                f"{shape[0]}, which does not divide by the {devices} {which} on mesh axis "
                f"{axis!r}. Use a batch size that is a multiple of {devices} (drop or pad "
                "the last partial batch)."
            )
        if multi:
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))
        return jax.device_put(x, sharding)

    return jax.tree_util.tree_map_with_path(one, batch)
