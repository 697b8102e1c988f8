"""Atomic, verified checkpoints of any pytree (a ``TrainState`` above all).

Format
------
A checkpoint is a zip archive in NumPy's ``.npz`` layout, so ``numpy.load`` alone
can read it (no pickle: object arrays are refused). It holds:

* ``manifest.json``: ``{"format": "jtricks-checkpoint", "version": 1, "step": ...,
  "leaves": [{"path", "dtype", "shape", "sha256", "key_impl"?}, ...]}``, one entry
  per leaf in ``jax.tree`` order, ``path`` written as ``jax.tree_util.keystr``;
* ``leaf_00000.npy``, ``leaf_00001.npy``, ...: the leaves' bytes. Typed PRNG keys
  are stored as their ``key_data`` (uint32) with ``key_impl`` naming the
  generator; dtypes NumPy cannot describe (bfloat16, float8) are stored as
  same-width unsigned integers and reinterpreted on restore.

Why this format: the runtime dependency of jtricks is ``jax`` alone, so
``flax.serialization`` (msgpack) and orbax (tensorstore, async machinery) would add
dependencies; a pickle is unsafe to load. An npz is readable everywhere, and the
manifest lets :func:`restore` name the first path whose structure, shape or dtype
differs from the template, and check every byte (zip CRC-32 plus a SHA-256 per
leaf) before anything is returned.

Sharded state: :func:`save` gathers every leaf whole onto the host (so the host
must hold the whole state), and :func:`restore` returns arrays on the default
device, not on a mesh (``jax.device_put`` them back, e.g. with
``jax.tree.map(lambda x: x.sharding, state)`` of a fresh ``step.init``). It cannot
save a multi-process state (each process sees only its own shards). For sharded or
multi-host runs use orbax (``pip install "jtricks[orbax]"``), which writes each
shard from the device that holds it and restores the same
:class:`~jtricks.train.TrainState` with its shardings::

    import orbax.checkpoint as ocp

    path = os.path.abspath("checkpoints/120")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, state)
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=x.sharding),
                        step.init(params, key))
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(path, like)

Writes are atomic: the archive goes to a temporary file in the target directory,
is flushed and ``fsync``-ed, renamed over the target with ``os.replace`` and the
directory is ``fsync``-ed. A crash (even ``SIGKILL``) leaves either the old file or
the new one, never a torn one; an interrupted write leaves a ``.tmp-*`` file that
readers ignore.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import checkpoint_forms as forms
from jtricks import tree as jtree

PyTree = Any

__all__ = ["CheckpointError", "save", "restore", "latest", "all_checkpoints"]

_FORMAT = "jtricks-checkpoint"
_VERSION = 1
_MANIFEST = "manifest.json"
_NAME = re.compile(r"^ckpt_(\d+)\.npz$")
_TMP_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or does not fit the template."""


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_numpy(leaf: Any) -> tuple[np.ndarray, dict]:
    """A leaf as (storable NumPy array, manifest entry without path/hash)."""
    if _is_key(leaf):
        data = np.asarray(jax.random.key_data(leaf))
        return data, {"dtype": "key", "shape": list(np.shape(leaf)),
                      "key_impl": str(jax.random.key_impl(leaf))}
    arr = np.asarray(leaf)
    if arr.dtype == object:
        raise TypeError(
            f"save: leaf of type {type(leaf).__name__} is not an array; checkpoints hold "
            "numbers and arrays only. Keep functions and objects out of the saved tree "
            "(or mark them static)."
        )
    entry = {"dtype": arr.dtype.name, "shape": list(arr.shape)}
    if arr.dtype.kind == "V":  # ml_dtypes (bfloat16, float8...): store the raw bits
        arr = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
    return arr, entry


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # (np.ascontiguousarray would turn a 0-d array into shape (1,).)
    arr = arr if arr.flags.c_contiguous else arr.copy(order="C")
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _fsync_dir(directory: str) -> None:
    # Make the rename itself durable (POSIX); not possible on every platform.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(target: str, members: list[tuple[str, bytes]]) -> None:
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TMP_PREFIX, suffix=".npz")
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the checkpoint private
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
                for name, data in members:
                    zf.writestr(name, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def all_checkpoints(directory: str) -> list[str]:
    """The ``ckpt_<step>.npz`` files of ``directory``, oldest step first."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        m = _NAME.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return [p for _, p in sorted(found)]


def latest(directory: str) -> str | None:
    """The newest checkpoint in ``directory`` (highest step), or ``None``."""
    found = all_checkpoints(directory)
    return found[-1] if found else None


def _step_of(tree: PyTree) -> int | None:
    step = getattr(tree, "step", None)
    if step is None:
        return None
    try:
        return int(np.asarray(step))
    except (TypeError, ValueError):
        return None


def save(path: str | os.PathLike, tree: PyTree, *, step: int | None = None,
         keep: int | None = None) -> str:
    """Writes ``tree`` atomically and returns the path written.

    Args:
        path: a file ending in ``.npz``, or a directory (created if missing) that
            receives ``ckpt_<step>.npz``.
        tree: any pytree of arrays, typed PRNG keys and numbers (e.g. a
            ``jt.train.TrainState``). Device arrays are copied to the host.
        step: the number in the file name when ``path`` is a directory; defaults to
            ``tree.step`` (a ``TrainState``'s step).
        keep: with a directory, keep only the newest ``keep`` checkpoints (older
            ones are deleted after the new one is safely in place).

    Example:
        >>> jt.train.save("checkpoints", state, keep=3)  # checkpoints/ckpt_000000120.npz
        >>> state = jt.train.restore("checkpoints", like=state)
    """
    path = os.fspath(path)
    if keep is not None and (not isinstance(keep, int) or keep < 1):
        raise ValueError(f"save: keep must be an integer >= 1 or None, got {keep!r}.")
    step = _step_of(tree) if step is None else int(step)
    if path.endswith(".npz"):
        target, directory = path, None
        if keep is not None:
            raise ValueError(
                f"save: keep={keep} needs a directory path, got the file {path!r}. "
                "Pass a directory to keep the last k checkpoints."
            )
    else:
        if step is None:
            raise ValueError(
                "save: saving into a directory needs a step for the file name; pass "
                "step=... or save a tree with a `step` field (a TrainState)."
            )
        directory = path
        os.makedirs(directory, exist_ok=True)
        target = os.path.join(directory, f"ckpt_{step:09d}.npz")

    leaves_with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
    members, entries = [], []
    for i, (kp, leaf) in enumerate(leaves_with_path):
        arr, entry = _to_numpy(leaf)
        data = _npy_bytes(arr)
        entry = {"path": jtree.keystr(kp), **entry,
                 "sha256": hashlib.sha256(data).hexdigest()}
        entries.append(entry)
        members.append((f"leaf_{i:05d}.npy", data))
    manifest = {"format": _FORMAT, "version": _VERSION, "step": step, "leaves": entries}
    members.insert(0, (_MANIFEST, json.dumps(manifest, indent=1).encode()))
    _write_atomic(target, members)

    if directory is not None and keep is not None:
        for old in all_checkpoints(directory)[:-keep]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old)
    return target


def _read(path: str) -> tuple[dict, list[np.ndarray]]:
    """Reads and verifies a whole checkpoint; raises CheckpointError on any defect."""
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(_MANIFEST))
            if manifest.get("format") != _FORMAT:
                raise CheckpointError(
                    f"restore: {path!r} is not a jtricks checkpoint (format "
                    f"{manifest.get('format')!r})."
                )
            if manifest.get("version") != _VERSION:
                raise CheckpointError(
                    f"restore: {path!r} has format version {manifest.get('version')!r}; "
                    f"this jtricks reads version {_VERSION}."
                )
            arrays = []
            for i, entry in enumerate(manifest["leaves"]):
                data = zf.read(f"leaf_{i:05d}.npy")  # zipfile checks the CRC-32
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise CheckpointError(
                        f"restore: {path!r} is corrupted: the bytes of leaf "
                        f"{entry['path']} do not match their SHA-256."
                    )
                arr = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
                if list(arr.shape) != list(entry["shape"]) and entry["dtype"] != "key":
                    raise CheckpointError(
                        f"restore: {path!r} is inconsistent: leaf {entry['path']} has "
                        f"shape {arr.shape} but the manifest says {tuple(entry['shape'])}."
                    )
                arrays.append(arr)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"restore: no checkpoint at {path!r}.") from None
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError,
            json.JSONDecodeError) as e:
        raise CheckpointError(
            f"restore: {path!r} is truncated or corrupted ({type(e).__name__}: {e}). "
            "Restore an older checkpoint; writes are atomic, so the previous file is intact."
        ) from None
    return manifest, arrays


def _like_spec(leaf: Any) -> tuple[str, tuple[int, ...]]:
    if _is_key(leaf):
        return "key", tuple(np.shape(leaf))
    dtype = getattr(leaf, "dtype", None)
    dtype = jnp.result_type(leaf) if dtype is None else np.dtype(dtype)
    return np.dtype(dtype).name, tuple(np.shape(leaf))


def restore(path: str | os.PathLike, like: PyTree) -> PyTree:
    """Reads a checkpoint into the structure of ``like``; all or nothing.

    Args:
        path: a ``.npz`` file written by :func:`save`, or a directory (its newest
            ``ckpt_<step>.npz`` is read).
        like: a template with the saved tree's structure, shapes and dtypes: the
            freshly initialised state, or ``jax.eval_shape`` of it.

    Returns:
        A tree like ``like`` holding the saved values as JAX arrays (bit-exact).

    A state saved from ``make_step(..., flat_params=False)`` restores into the
    ``like`` of a ``flat_params=True`` step and back: every subtree stored as a
    :class:`~jtricks.FlatParams` on one side and as the params' tree on the other (the
    params, Adam's moments, EMA averages) is converted with ``like``'s layout, the
    rest (counts, keys, scalars) is read as it is; a state that cannot be mapped so
    raises :class:`CheckpointError` naming the first leaf that differs. Flat vectors
    padded for another device count (``jt.flat_params(..., pad_to=n)``, what
    ``make_step(mesh=...)`` stores) are cut or zero-padded to ``like``'s length, and
    the padding is dropped when they restore into the tree.

    Raises:
        CheckpointError: the file is missing, truncated or corrupted (nothing is
            returned), or it does not fit ``like``: the message names the first
            differing path and both shapes or dtypes.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        found = latest(path)
        if found is None:
            raise CheckpointError(f"restore: no ckpt_<step>.npz file in directory {path!r}.")
        path = found
    manifest, arrays = _read(path)
    crossing = forms.crossing(like, manifest["leaves"], path, CheckpointError)
    if crossing is not None:
        template, finish = crossing
        return finish(_fill(path, template, manifest, arrays))
    return _fill(path, like, manifest, arrays)


def _fill(path: str, like: PyTree, manifest: dict, arrays: list) -> PyTree:
    """The checkpoint's arrays in ``like``'s structure, after checking every leaf."""
    entries = manifest["leaves"]
    like_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    for i, (kp, leaf) in enumerate(like_leaves):
        want_path = jtree.keystr(kp)
        if i >= len(entries):
            raise CheckpointError(
                f"restore: `like` has {len(like_leaves)} leaves but {path!r} holds "
                f"{len(entries)}; the first missing one is {want_path}."
            )
        entry = entries[i]
        if entry["path"] != want_path:
            raise CheckpointError(
                f"restore: structure mismatch at leaf #{i}: `like` has {want_path} but "
                f"the checkpoint has {entry['path']}. Build `like` the way the saved "
                "state was built (same model, optimizer and averaging)."
            )
        dtype, shape = _like_spec(leaf)
        saved_shape = tuple(entry["shape"])
        if shape != saved_shape:
            raise CheckpointError(
                f"restore: shape mismatch at {want_path}: `like` has {shape}, the "
                f"checkpoint has {saved_shape}."
            )
        if dtype != entry["dtype"]:
            raise CheckpointError(
                f"restore: dtype mismatch at {want_path}: `like` has {dtype}, the "
                f"checkpoint has {entry['dtype']}."
            )
    if len(entries) > len(like_leaves):
        raise CheckpointError(
            f"restore: {path!r} holds {len(entries)} leaves but `like` has "
            f"{len(like_leaves)}; the first extra one is {entries[len(like_leaves)]['path']}."
        )

    out = []
    for entry, arr in zip(entries, arrays):
        if entry["dtype"] == "key":
            out.append(jax.random.wrap_key_data(jnp.asarray(arr), impl=entry["key_impl"]))
            continue
        dtype = jnp.dtype(entry["dtype"])
        if arr.dtype != dtype:
            arr = arr.view(dtype)
        out.append(jnp.asarray(arr))
    return jax.tree_util.tree_unflatten(treedef, out)
