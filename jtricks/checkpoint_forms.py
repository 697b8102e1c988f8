"""Restoring a checkpoint saved with the parameters in another form: a state of
``make_step(..., flat_params=False)`` into a ``flat_params=True`` step's ``like``, and
back, and flat vectors padded for one device count into a ``like`` padded for another
(used by :func:`jtricks.checkpoint.restore`, which passes its ``CheckpointError`` as
``error``: this module imports nothing of it)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import tree as jtree

PyTree = Any


def _is_flat(x: Any) -> bool:
    from jtricks.transforms.flatten import FlatParams
    return isinstance(x, FlatParams)


def _paths(tree: PyTree) -> list[str]:
    return [jtree.keystr(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _flat_as_tree(flat: Any) -> PyTree:
    """The tree a FlatParams stands for, as shapes and dtypes (its vectors' dtypes)."""
    out: list[Any] = [None] * len(flat.shapes)
    for name, idx in flat.groups:
        dtype = flat.vectors[name].dtype
        for i in idx:
            out[i] = jax.ShapeDtypeStruct(flat.shapes[i], dtype)
    return jax.tree.unflatten(flat.treedef, out)


def _pack(layout: Any, tree: PyTree) -> Any:
    """``tree`` (shaped like ``layout``'s params) as a FlatParams of ``layout``'s layout,
    each vector zero-padded to the length of ``layout``'s."""
    from jtricks.transforms.flatten import resize
    leaves = jax.tree.leaves(tree)
    vectors = {}
    for name, idx in layout.groups:
        parts = [jnp.ravel(leaves[i]) for i in idx]
        vector = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        vectors[name] = resize(vector, layout.vectors[name].shape[0])
    return layout.replace(vectors=vectors)


def _saved_lengths(tree: PyTree, shapes: dict[str, tuple]) -> PyTree:
    """``tree`` with each FlatParams vector as a ShapeDtypeStruct of the length the
    checkpoint holds at its path (the padding may differ from ``tree``'s)."""
    def one(kp, x):
        if not _is_flat(x):
            return x
        vectors = {}
        for sub, v in jax.tree_util.tree_flatten_with_path(x)[0]:  # sub: .vectors[name]
            shape = shapes.get(jtree.keystr(tuple(kp) + tuple(sub)), np.shape(v))
            vectors[sub[-1].key] = jax.ShapeDtypeStruct(shape, jnp.result_type(v))
        return x.replace(vectors=vectors)
    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_flat)


def _repadded(like: PyTree, shapes: dict[str, tuple], path: str, error: type[Exception]):
    """Saved flat with the same paths, padded to another length (another device
    count): read at the saved lengths, then cut or zero-padded to ``like``'s."""
    from jtricks.transforms.flatten import resize
    template = _saved_lengths(like, shapes)
    parts, outer = jax.tree.flatten(like, is_leaf=_is_flat)
    saved = outer.flatten_up_to(template)
    if all(not _is_flat(x) or jax.tree.map(np.shape, x.vectors)
           == jax.tree.map(np.shape, s.vectors) for x, s in zip(parts, saved)):
        return None
    for x, s in zip(parts, saved):
        if _is_flat(x):
            for name, size in x.sizes().items():
                if s.vectors[name].shape[0] < size:
                    raise error(
                        f"restore: {path!r} holds a flat {name} vector of "
                        f"{s.vectors[name].shape[0]} elements where `like`'s parameters "
                        f"have {size}; build `like` with the same model as the saved run."
                    )

    def finish(restored):
        subs = outer.flatten_up_to(restored)
        return outer.unflatten([
            x.replace(vectors={k: resize(v, x.vectors[k].shape[0])
                               for k, v in sub.vectors.items()}) if _is_flat(x) else sub
            for x, sub in zip(parts, subs)])
    return template, finish


def crossing(like: PyTree, entries: list[dict], path: str, error: type[Exception]):
    """``(template, finish)`` to restore a checkpoint (its manifest ``entries``) saved
    with the params in another form (tree vs :class:`~jtricks.FlatParams`, or flat
    with another padding) into ``like``, or ``None`` when the checkpoint's leaves are
    ``like``'s own (or no crossing applies)."""
    saved = [e["path"] for e in entries]
    shapes = {e["path"]: tuple(e["shape"]) for e in entries}
    if saved == _paths(like):
        return _repadded(like, shapes, path, error)
    parts, outer = jax.tree.flatten(like, is_leaf=_is_flat)
    if any(_is_flat(x) for x in parts):
        template, finish = _from_tree(parts, outer)
    elif hasattr(like, "params") and any(".vectors[" in p for p in saved):
        template, finish = _from_flat(like, path, error)
        template = _saved_lengths(template, shapes)  # the padding is left out by tree()
    else:
        return None
    _check_paths(template, saved, path, error)
    return template, finish


def _from_tree(parts: list, outer: Any):
    """Saved from the tree: each FlatParams of `like` was its params-shaped tree."""
    template = outer.unflatten([_flat_as_tree(x) if _is_flat(x) else x for x in parts])

    def finish(restored):
        subs = outer.flatten_up_to(restored)
        return outer.unflatten([_pack(x, sub) if _is_flat(x) else sub
                                for x, sub in zip(parts, subs)])
    return template, finish


def _from_flat(like: PyTree, path: str, error: type[Exception]):
    """Saved flat: each subtree of `like` shaped like its params was a FlatParams."""
    from jtricks.transforms.flatten import flat_params
    layout = jax.eval_shape(flat_params, like.params)
    ptree = jax.tree.structure(like.params)
    shapes = [np.shape(x) for x in jax.tree.leaves(like.params)]

    def params_shaped(x):
        leaves, tdef = jax.tree.flatten(x)
        return (tdef == ptree and bool(leaves)
                and [np.shape(v) for v in leaves] == shapes)

    parts, outer = jax.tree.flatten(like, is_leaf=params_shaped)
    mapped = [params_shaped(x) for x in parts]

    def as_flat(x):
        leaves = jax.tree.leaves(x)
        vectors = {}
        for name, idx in layout.groups:
            dtype = {jnp.result_type(leaves[i]) for i in idx}
            if len(dtype) != 1:
                raise error(
                    f"restore: cannot map a subtree of `like` to the flat layout of "
                    f"{path!r}: the leaves of its {name} group have dtypes "
                    f"{sorted(d.name for d in dtype)}. Give each group one dtype."
                )
            size = sum(int(np.prod(layout.shapes[i], dtype=np.int64)) for i in idx)
            vectors[name] = jax.ShapeDtypeStruct((size,), dtype.pop())
        return layout.replace(vectors=vectors)

    template = outer.unflatten([as_flat(x) if m else x for x, m in zip(parts, mapped)])

    def finish(restored):
        subs = outer.flatten_up_to(restored)
        return outer.unflatten([sub.tree() if m else sub for sub, m in zip(subs, mapped)])
    return template, finish


def _check_paths(template: PyTree, saved: list[str], path: str,
                 error: type[Exception]) -> None:
    """The converted ``like`` must name the checkpoint's leaves in order."""
    got = _paths(template)
    if got != saved:
        first = next((i for i, (a, b) in enumerate(zip(got, saved)) if a != b),
                     min(len(got), len(saved)))
        mine = got[first] if first < len(got) else "(nothing)"
        theirs = saved[first] if first < len(saved) else "(nothing)"
        raise error(
            f"restore: {path!r} holds the parameters in the other form (tree vs "
            "flat_params), and its state cannot be mapped onto `like`: at leaf "
            f"#{first} `like` (converted) has {mine} but the checkpoint has {theirs}. "
            "Only subtrees shaped like the params (the params, Adam's moments, EMA "
            "averages...) are converted; build `like` with the same model, optimizer "
            "and averaging as the saved run."
        )
