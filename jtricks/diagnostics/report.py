"""The diagnostics report: flags for vanishing, exploding, non-finite and dead values,
and a readable table; see :mod:`jtricks.diagnostics` for the rules."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import numpy as np

from jtricks.diagnostics.stats import (
    activation_stats,
    leaf_norms,
    named_leaves,
    natural_key,
    update_ratios,
)
from jtricks.transforms.norms import NormsState

__all__ = ["Thresholds", "Flag", "Report", "report", "report_from_norms", "find_norms"]

PyTree = Any


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
                       key=natural_key)
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
            acts = sorted(self.activations, key=natural_key)
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
    for n in sorted(grad_norms, key=natural_key):
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
    for n in sorted(ratios, key=natural_key):
        r = ratios[n]
        if math.isnan(r):  # a zero parameter: no relative size
            continue
        if math.isinf(r) or r > t.ratio_high:
            flags.append(Flag(n, "updates", "exploding",
                              f"update/param ratio {r:.3g} > ratio_high {t.ratio_high:g}"))
        elif r < t.ratio_low:
            flags.append(Flag(n, "updates", "vanishing",
                              f"update/param ratio {r:.3g} < ratio_low {t.ratio_low:g}"))
    for n in sorted(acts, key=natural_key):
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


def find_norms(opt_state: PyTree) -> NormsState | None:
    """The first :class:`jtricks.transforms.norms.NormsState` inside ``opt_state``
    (e.g. within a chain's tuple of states), or ``None``."""
    if isinstance(opt_state, NormsState):
        return opt_state
    for leaf in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, NormsState)):
        if isinstance(leaf, NormsState):
            return leaf
    return None


def report_from_norms(opt_state: PyTree, params: PyTree = None, *,
                        activations: PyTree = None,
                        thresholds: Thresholds | None = None) -> Report:
    """A :class:`Report` from the norms ``jt.record_norms(tx)`` recorded at the last step.

    Args:
        opt_state: the optimizer state containing a ``NormsState`` (at any depth).
        params: the current parameters, for their norms and the update ratios
            (approximate: ``||u||/||p||`` with ``p`` after the update).
        activations: optional activations, as in :func:`report`.
        thresholds: the flag rules; default :class:`Thresholds`.

    Example:
        >>> tx = jt.record_norms(jt.adam(1e-3))
        >>> ...  # train
        >>> print(jt.diagnostics.report_from_norms(opt_state, params))
    """
    state = find_norms(opt_state)
    if state is None:
        raise ValueError(
            "report_from_norms: no NormsState found in opt_state. Wrap the optimizer "
            "with jt.record_norms(tx) and pass the state it returns."
        )
    norms = _host({"g": dict(named_leaves(state.grad_norms)),
                   "u": dict(named_leaves(state.update_norms)),
                   "gn": state.grad_norm})
    param_norms: dict[str, float] = {}
    ratios: dict[str, float] = {}
    if params is not None:
        param_norms = _host(_all_stats(None, params, None, None)["params"])
        if param_norms.keys() != norms["u"].keys():
            raise ValueError(
                "report_from_norms: params do not have the leaves record_norms recorded "
                f"(e.g. {sorted(set(param_norms) ^ set(norms['u']))[:3]}). Pass the params "
                "this optimizer state belongs to."
            )
        ratios = {n: (norms["u"][n] / p if p > 0 else math.nan)
                  for n, p in param_norms.items()}
    acts = (_host(_all_stats(None, None, None, activations)["acts"])
            if activations is not None else {})
    return _build(norms["g"], norms["gn"], param_norms, ratios, acts, thresholds)
