"""Jittable gradient-health statistics, keyed by readable paths (``Dense_0/kernel``).

Norms are overflow-safe (:func:`jtricks.tree.norm`): an exploding gradient of
entries ~1e20 has a finite fp32 norm, so "exploding" and "non-finite" stay
distinct. NaN or inf entries give a NaN or inf norm.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp

from jtricks import tree as jtree

__all__ = ["leaf_norms", "layer_norms", "update_ratios", "activation_stats",
           "natural_key", "named_leaves"]

PyTree = Any


def natural_key(name: str) -> tuple:
    """Sorts ``layer_2`` before ``layer_10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def named_leaves(tree: PyTree) -> list[tuple[str, Any]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    named = [(jtree.path_name(p), x) for p, x in flat if x is not None]
    seen: dict[str, int] = {}
    out = []
    for name, x in named:
        # Distinct paths can print alike (a key containing "/"); keep every leaf.
        if name in seen:
            seen[name] += 1
            name = f"{name}#{seen[name]}"
        else:
            seen[name] = 0
        out.append((name, x))
    return out


# --- jittable statistics ---------------------------------------------------------------


def leaf_norms(tree: PyTree) -> dict[str, jax.Array]:
    """``{name: ||leaf||_2}`` for every leaf, in fp32; jittable.

    Example:
        >>> jt.diagnostics.leaf_norms({"dense": {"w": w, "b": b}})
        {'dense/b': Array(...), 'dense/w': Array(...)}
    """
    named = named_leaves(tree)
    _, norms = jtree.norms([x for _, x in named])
    return {name: n for (name, _), n in zip(named, norms)}


def layer_norms(tree: PyTree) -> dict[str, jax.Array]:
    """``{layer: ||all leaves of the layer||_2}``, a layer being a leaf's parent path
    (``Dense_0/kernel`` and ``Dense_0/bias`` make ``Dense_0``); jittable."""
    groups: dict[str, list[jax.Array]] = {}
    for name, x in named_leaves(tree):
        layer = name.rsplit("/", 1)[0] if "/" in name else name
        groups.setdefault(layer, []).append(jtree.norm(x))
    return {k: jtree.norm(jnp.stack(v)) for k, v in groups.items()}


def update_ratios(updates: PyTree, params: PyTree) -> dict[str, jax.Array]:
    """``{name: ||u|| / ||p||}`` per leaf (NaN where ``||p|| == 0``); jittable.

    The relative size of a step: around 1e-3 is the usual healthy range; 0.1 and
    above means each step rewrites a tenth of the weights.
    """
    u = dict(named_leaves(updates))
    p = dict(named_leaves(params))
    if u.keys() != p.keys():
        missing = sorted(set(p) ^ set(u))[:3]
        raise ValueError(
            f"update_ratios: updates and params have different leaves (e.g. {missing}). "
            "Pass the updates emitted for these params."
        )
    out = {}
    for name in p:
        pn = jtree.norm(p[name])
        out[name] = jnp.where(pn > 0, jtree.norm(u[name]) / jnp.where(pn > 0, pn, 1.0), jnp.nan)
    return out


def activation_stats(activations: PyTree) -> dict[str, dict[str, jax.Array]]:
    """Per activation array: ``mean``, ``std``, ``min``, ``max``, ``frac_zero`` (share of
    exact zeros: dead ReLUs) and ``frac_nonfinite``, over all its entries; jittable.

    ``activations`` is any tree of arrays: a list of layer outputs, a dict, or flax
    linen's captured ``intermediates``.
    """
    out = {}
    for name, x in named_leaves(activations):
        x = jnp.asarray(x)
        x = x.astype(jtree.acc_dtype(x))
        size = max(x.size, 1)
        finite = jnp.isfinite(x)
        out[name] = {
            "mean": jnp.mean(x),
            "std": jnp.std(x),
            "min": jnp.min(x, initial=jnp.inf),
            "max": jnp.max(x, initial=-jnp.inf),
            "frac_zero": jnp.sum(x == 0) / size,
            "frac_nonfinite": jnp.sum(~finite) / size,
        }
    return out
