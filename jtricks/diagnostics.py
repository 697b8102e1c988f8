"""Gradient health: per-layer norms, update-to-parameter ratios, activation statistics
and a report that flags vanishing and exploding layers.

The lesson's first trouble: in a deep network gradients can shrink (vanish) or grow
(explode) geometrically with depth, and so can activations when the initialisation
is off. The functions here measure that on any pytree (plain JAX dicts, flax linen
``params``, flax nnx ``State``), keyed by readable paths such as ``Dense_0/kernel``.

* :func:`leaf_norms`, :func:`layer_norms`, :func:`update_ratios`,
  :func:`activation_stats` are jittable and return dicts of arrays.
* :func:`report` (and :func:`report_from_monitor`, fed by ``jt.monitor``) gathers
  them on the host into a :class:`Report`: plain dicts of floats, a tuple of
  :class:`Flag` s and a readable table (``print(report)``).

Flags and their default thresholds (see :class:`Thresholds`):

==============  ===========  ==========================================================
section          flag         rule (per leaf / per activation)
==============  ===========  ==========================================================
gradients        nonfinite    the gradient has a NaN or inf
gradients        exploding    ``||g|| > grad_explode`` (1e3)
gradients        vanishing    ``||g|| < grad_vanish`` (1e-7) or
                              ``||g|| < grad_relative * max_leaf ||g||`` (1e-5)
updates          exploding    ``||u|| / ||p|| > ratio_high`` (0.1: 10% per step)
updates          vanishing    ``||u|| / ||p|| < ratio_low`` (1e-6); skipped if ``p = 0``
activations      nonfinite    any NaN or inf
activations      exploding    ``std > act_explode`` (100: far outside [-1, 1])
activations      vanishing    ``std < act_vanish`` (1e-4)
activations      dead         a fraction ``>= dead`` (0.95) of the entries is exactly 0
==============  ===========  ==========================================================

Example:
    >>> grads = jax.grad(loss_fn)(params, batch)
    >>> rep = jt.diagnostics.report(grads, params=params, activations=acts)
    >>> print(rep)                  # a table
    >>> rep.exploding               # ['Dense_0/kernel', ...]
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jtricks.transforms.monitor import MonitorState

__all__ = [
    "path_name",
    "leaf_norms",
    "layer_norms",
    "update_ratios",
    "activation_stats",
    "Thresholds",
    "Flag",
    "Report",
    "report",
    "report_from_monitor",
    "find_monitor",
]

PyTree = Any


# --- names ---------------------------------------------------------------------------


def path_name(path: tuple) -> str:
    """A readable ``/``-joined name for a tree path.

    ``{'Dense_0': {'kernel': w}}`` gives ``Dense_0/kernel``; a list index gives its
    number (``layers/2/w``). Flax wrappers are dropped: an nnx ``Variable``'s
    trailing ``.value`` and linen's ``__call__`` level of captured intermediates
    (``intermediates/Dense_0/__call__/0`` reads ``intermediates/Dense_0``).
    """
    parts: list[str] = []
    keys = list(path)
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    after_call = False
    for k in keys:
        if isinstance(k, jax.tree_util.DictKey):
            part = str(k.key)
        elif isinstance(k, jax.tree_util.GetAttrKey):
            part = k.name
        elif isinstance(k, jax.tree_util.SequenceKey):
            part = str(k.idx)
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            part = str(k.key)
        else:
            part = str(k)
        if part == "__call__":
            after_call = True
            continue
        if after_call and part == "0":
            after_call = False
            continue
        after_call = False
        parts.append(part)
    return "/".join(parts) or "<root>"


def _natural_key(name: str) -> tuple:
    """Sorts ``layer_2`` before ``layer_10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _named_leaves(tree: PyTree) -> list[tuple[str, Any]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    named = [(path_name(p), x) for p, x in flat if x is not None]
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


def _f32(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _norm(x: Any) -> jax.Array:
    """The L2 norm, scaled by the largest entry so that squares cannot overflow.

    An exploding gradient of entries ~1e20 has a finite fp32 norm, but the plain sum of
    its squares is inf; dividing by ``max |x|`` first keeps it finite, so "exploding"
    and "non-finite" stay distinct. NaN or inf entries give a NaN or inf norm.
    """
    x = _f32(x)
    if x.size == 0:
        return jnp.zeros((), x.dtype)
    top = jnp.max(jnp.abs(x))
    ok = jnp.isfinite(top) & (top > 0)
    safe = jnp.where(ok, top, 1.0)
    scaled = safe * jnp.sqrt(jnp.sum(jnp.square(x / safe)))
    return jnp.where(ok, scaled, top)


def leaf_norms(tree: PyTree) -> dict[str, jax.Array]:
    """``{name: ||leaf||_2}`` for every leaf, in fp32; jittable.

    Example:
        >>> jt.diagnostics.leaf_norms({"dense": {"w": w, "b": b}})
        {'dense/b': Array(...), 'dense/w': Array(...)}
    """
    return {name: _norm(x) for name, x in _named_leaves(tree)}


def layer_norms(tree: PyTree) -> dict[str, jax.Array]:
    """``{layer: ||all leaves of the layer||_2}``, a layer being a leaf's parent path
    (``Dense_0/kernel`` and ``Dense_0/bias`` make ``Dense_0``); jittable."""
    groups: dict[str, list[jax.Array]] = {}
    for name, x in _named_leaves(tree):
        layer = name.rsplit("/", 1)[0] if "/" in name else name
        groups.setdefault(layer, []).append(_norm(x))
    return {k: _norm(jnp.stack(v)) for k, v in groups.items()}


def update_ratios(updates: PyTree, params: PyTree) -> dict[str, jax.Array]:
    """``{name: ||u|| / ||p||}`` per leaf (NaN where ``||p|| == 0``); jittable.

    The relative size of a step: around 1e-3 is the usual healthy range; 0.1 and
    above means each step rewrites a tenth of the weights.
    """
    u = dict(_named_leaves(updates))
    p = dict(_named_leaves(params))
    if u.keys() != p.keys():
        missing = sorted(set(p) ^ set(u))[:3]
        raise ValueError(
            f"update_ratios: updates and params have different leaves (e.g. {missing}). "
            "Pass the updates emitted for these params."
        )
    out = {}
    for name in p:
        pn = _norm(p[name])
        out[name] = jnp.where(pn > 0, _norm(u[name]) / jnp.where(pn > 0, pn, 1.0), jnp.nan)
    return out


def activation_stats(activations: PyTree) -> dict[str, dict[str, jax.Array]]:
    """Per activation array: ``mean``, ``std``, ``min``, ``max``, ``frac_zero`` (share of
    exact zeros: dead ReLUs) and ``frac_nonfinite``, over all its entries; jittable.

    ``activations`` is any tree of arrays: a list of layer outputs, a dict, or flax
    linen's captured ``intermediates``.
    """
    out = {}
    for name, x in _named_leaves(activations):
        x = _f32(x)
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


# --- the report ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The rules behind the report's flags (see the module docstring's table)."""

    grad_explode: float = 1e3
    grad_vanish: float = 1e-7
    grad_relative: float = 1e-5
    ratio_high: float = 0.1
    ratio_low: float = 1e-6
    act_explode: float = 1e2
    act_vanish: float = 1e-4
    dead: float = 0.95


class Flag(NamedTuple):
    """One finding: ``name`` (a leaf or activation path), ``section`` (``"gradients"``,
    ``"updates"`` or ``"activations"``), ``kind`` (``"exploding"``, ``"vanishing"``,
    ``"nonfinite"`` or ``"dead"``) and a human-readable ``reason``."""

    name: str
    section: str
    kind: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Report:
    """Host-side diagnostics: plain Python data plus a table (``str(report)``).

    Attributes:
        grad_norms: ``{name: ||g||}`` per leaf (empty if no gradients were given).
        global_grad_norm: ``||g||`` over all leaves, or ``None``.
        param_norms: ``{name: ||p||}`` per leaf (empty if no params were given).
        update_ratios: ``{name: ||u|| / ||p||}`` (NaN where ``p = 0``).
        activations: ``{name: {"mean", "std", "min", "max", "frac_zero",
            "frac_nonfinite"}}``.
        flags: every finding, in table order.
        thresholds: the rules used.
    """

    grad_norms: dict[str, float]
    global_grad_norm: float | None
    param_norms: dict[str, float]
    update_ratios: dict[str, float]
    activations: dict[str, dict[str, float]]
    flags: tuple[Flag, ...]
    thresholds: Thresholds

    def names(self, kind: str) -> list[str]:
        """Names flagged ``kind`` (in any section), without repeats."""
        return list(dict.fromkeys(f.name for f in self.flags if f.kind == kind))

    @property
    def exploding(self) -> list[str]:
        return self.names("exploding")

    @property
    def vanishing(self) -> list[str]:
        return self.names("vanishing")

    @property
    def nonfinite(self) -> list[str]:
        return self.names("nonfinite")

    @property
    def healthy(self) -> bool:
        """True when nothing is flagged."""
        return not self.flags

    def as_dict(self) -> dict:
        """Everything as nested dicts/lists of Python scalars (JSON-ready)."""
        d = dataclasses.asdict(self)
        d["flags"] = [f._asdict() for f in self.flags]
        return d

    def table(self) -> str:
        """A fixed-width table of every leaf and activation with its flags."""
        flags_of: dict[tuple[str, str], list[str]] = {}
        for f in self.flags:
            flags_of.setdefault((f.section, f.name), []).append(f.kind)

        def fmt(v: float | None) -> str:
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"

        lines = []
        names = sorted(set(self.grad_norms) | set(self.param_norms) | set(self.update_ratios),
                       key=_natural_key)
        if names:
            width = max(len("leaf"), *(len(n) for n in names))
            head = "gradients"
            if self.global_grad_norm is not None:
                head += f" (global norm {fmt(self.global_grad_norm)})"
            lines += [head, f"  {'leaf':<{width}}  {'grad norm':>10}  {'param norm':>10}  "
                            f"{'upd/param':>10}  flags"]
            for n in names:
                kinds = flags_of.get(("gradients", n), []) + [
                    f"update {k}" for k in flags_of.get(("updates", n), [])]
                lines.append(
                    f"  {n:<{width}}  {fmt(self.grad_norms.get(n)):>10}  "
                    f"{fmt(self.param_norms.get(n)):>10}  "
                    f"{fmt(self.update_ratios.get(n)):>10}  {', '.join(kinds)}".rstrip())
        if self.activations:
            acts = sorted(self.activations, key=_natural_key)
            width = max(len("activation"), *(len(n) for n in acts))
            cols = ("mean", "std", "min", "max")
            lines += ["activations", f"  {'activation':<{width}}  "
                      + "  ".join(f"{c:>10}" for c in cols) + f"  {'zero %':>7}  flags"]
            for n in acts:
                s = self.activations[n]
                kinds = flags_of.get(("activations", n), [])
                lines.append(f"  {n:<{width}}  " + "  ".join(f"{fmt(s[c]):>10}" for c in cols)
                             + f"  {100 * s['frac_zero']:>6.1f}%  {', '.join(kinds)}".rstrip())
        if self.flags:
            lines.append(f"{len(self.flags)} flag(s):")
            lines += [f"  [{f.kind}] {f.section} {f.name}: {f.reason}" for f in self.flags]
        else:
            lines.append("no flags: nothing vanishing or exploding.")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _host(tree: Any) -> Any:
    return jax.tree.map(lambda x: float(np.asarray(x)), jax.device_get(tree))


def _flags(grad_norms: dict, ratios: dict, acts: dict, t: Thresholds) -> list[Flag]:
    flags: list[Flag] = []
    finite = [v for v in grad_norms.values() if math.isfinite(v)]
    top = max(finite, default=0.0)
    for n in sorted(grad_norms, key=_natural_key):
        g = grad_norms[n]
        if not math.isfinite(g):
            flags.append(Flag(n, "gradients", "nonfinite",
                              f"gradient norm is {g} (a NaN/inf entry, or a norm beyond "
                              "the float range)"))
        elif g > t.grad_explode:
            flags.append(Flag(n, "gradients", "exploding",
                              f"gradient norm {g:.3g} > grad_explode {t.grad_explode:g}"))
        elif g < t.grad_vanish:
            flags.append(Flag(n, "gradients", "vanishing",
                              f"gradient norm {g:.3g} < grad_vanish {t.grad_vanish:g}"))
        elif g < t.grad_relative * top:
            flags.append(Flag(n, "gradients", "vanishing",
                              f"gradient norm {g:.3g} < grad_relative {t.grad_relative:g} x "
                              f"the largest leaf's {top:.3g}"))
    for n in sorted(ratios, key=_natural_key):
        r = ratios[n]
        if math.isnan(r):  # a zero parameter: no relative size
            continue
        if math.isinf(r) or r > t.ratio_high:
            flags.append(Flag(n, "updates", "exploding",
                              f"update/param ratio {r:.3g} > ratio_high {t.ratio_high:g}"))
        elif r < t.ratio_low:
            flags.append(Flag(n, "updates", "vanishing",
                              f"update/param ratio {r:.3g} < ratio_low {t.ratio_low:g}"))
    for n in sorted(acts, key=_natural_key):
        s = acts[n]
        if s["frac_nonfinite"] > 0:
            flags.append(Flag(n, "activations", "nonfinite",
                              f"{100 * s['frac_nonfinite']:.3g}% of entries are NaN or inf"))
            continue
        if s["std"] > t.act_explode:
            flags.append(Flag(n, "activations", "exploding",
                              f"std {s['std']:.3g} > act_explode {t.act_explode:g}"))
        elif s["std"] < t.act_vanish:
            flags.append(Flag(n, "activations", "vanishing",
                              f"std {s['std']:.3g} < act_vanish {t.act_vanish:g}"))
        if s["frac_zero"] >= t.dead:
            flags.append(Flag(n, "activations", "dead",
                              f"{100 * s['frac_zero']:.3g}% of entries are exactly 0 "
                              f"(>= dead {t.dead:g})"))
    return flags


def _build(grad_norms: dict, global_norm: float | None, param_norms: dict, ratios: dict,
           acts: dict, thresholds: Thresholds | None) -> Report:
    t = Thresholds() if thresholds is None else thresholds
    if not isinstance(t, Thresholds):
        raise TypeError(f"report: thresholds must be a jt.diagnostics.Thresholds, got "
                        f"{type(t).__name__}.")
    return Report(grad_norms=grad_norms, global_grad_norm=global_norm,
                  param_norms=param_norms, update_ratios=ratios, activations=acts,
                  flags=tuple(_flags(grad_norms, ratios, acts, t)), thresholds=t)


@jax.jit
def _all_stats(grads, params, updates, activations):
    out: dict[str, Any] = {}
    if grads is not None:
        out["grads"] = leaf_norms(grads)
    if params is not None:
        out["params"] = leaf_norms(params)
    if updates is not None and params is not None:
        out["ratios"] = update_ratios(updates, params)
    if activations is not None:
        out["acts"] = activation_stats(activations)
    return out


def report(grads: PyTree = None, *, params: PyTree = None, updates: PyTree = None,
           activations: PyTree = None, thresholds: Thresholds | None = None) -> Report:
    """Measures gradients, update sizes and activations, and flags what is off.

    Every argument is optional; give what you have. Statistics are computed in one
    jitted call, then copied to the host.

    Args:
        grads: the gradient tree (e.g. ``jax.grad(loss)(params, batch)`` or an nnx
            ``State``).
        params: the parameters (for their norms and the update ratios).
        updates: the optimizer's emitted updates for ``params`` (for ``||u||/||p||``).
        activations: a tree of activations (a list of layer outputs, a dict, flax
            linen's ``intermediates``).
        thresholds: the flag rules; default :class:`Thresholds`.

    Returns:
        A :class:`Report`; ``print`` it for a table.

    Raises:
        ValueError: ``updates`` without ``params``, or with different leaves.

    Example:
        >>> rep = jt.diagnostics.report(grads, params=params, activations=[h1, h2, out])
        >>> assert not rep.exploding, rep
    """
    if updates is not None and params is None:
        raise ValueError("report: updates were given without params; the update/param "
                         "ratio needs both. Pass params=... as well.")
    if all(x is None for x in (grads, params, activations)):
        raise ValueError("report: nothing to report; pass grads, params, updates and/or "
                         "activations.")
    stats = _host(_all_stats(grads, params, updates, activations))
    grad_norms = stats.get("grads", {})
    global_norm = (math.sqrt(sum(v * v for v in grad_norms.values()))
                   if grads is not None else None)
    return _build(grad_norms, global_norm, stats.get("params", {}), stats.get("ratios", {}),
                  stats.get("acts", {}), thresholds)


def find_monitor(opt_state: PyTree) -> MonitorState | None:
    """The first :class:`jtricks.transforms.monitor.MonitorState` inside ``opt_state``
    (e.g. within a chain's tuple of states), or ``None``."""
    if isinstance(opt_state, MonitorState):
        return opt_state
    for leaf in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, MonitorState)):
        if isinstance(leaf, MonitorState):
            return leaf
    return None


def report_from_monitor(opt_state: PyTree, params: PyTree = None, *,
                        activations: PyTree = None,
                        thresholds: Thresholds | None = None) -> Report:
    """A :class:`Report` from the norms ``jt.monitor(tx)`` recorded at the last step.

    Args:
        opt_state: the optimizer state containing a ``MonitorState`` (at any depth).
        params: the current parameters, for their norms and the update ratios
            (approximate: ``||u||/||p||`` with ``p`` after the update).
        activations: optional activations, as in :func:`report`.
        thresholds: the flag rules; default :class:`Thresholds`.

    Example:
        >>> tx = jt.monitor(jt.adam(1e-3))
        >>> ...  # train
        >>> print(jt.diagnostics.report_from_monitor(opt_state, params))
    """
    state = find_monitor(opt_state)
    if state is None:
        raise ValueError(
            "report_from_monitor: no MonitorState found in opt_state. Wrap the optimizer "
            "with jt.monitor(tx) and pass the state it returns."
        )
    norms = _host({"g": dict(_named_leaves(state.grad_norms)),
                   "u": dict(_named_leaves(state.update_norms)),
                   "gn": state.grad_norm})
    param_norms: dict[str, float] = {}
    ratios: dict[str, float] = {}
    if params is not None:
        param_norms = _host(_all_stats(None, params, None, None)["params"])
        if param_norms.keys() != norms["u"].keys():
            raise ValueError(
                "report_from_monitor: params do not have the leaves the monitor recorded "
                f"(e.g. {sorted(set(param_norms) ^ set(norms['u']))[:3]}). Pass the params "
                "this optimizer state belongs to."
            )
        ratios = {n: (norms["u"][n] / p if p > 0 else math.nan)
                  for n, p in param_norms.items()}
    acts = (_host(_all_stats(None, None, None, activations)["acts"])
            if activations is not None else {})
    return _build(norms["g"], norms["gn"], param_norms, ratios, acts, thresholds)

