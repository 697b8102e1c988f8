"""Hyperparameters that report themselves: read them by path, set them, and the
learning rate each update applied."""

from __future__ import annotations

import builtins
from typing import Any

import jax
import jax.numpy as jnp

from jtricks import tree as jtree
from jtricks.base import Transform
from jtricks.hyperparams.checks import check_finite
from jtricks.hyperparams.values import as_hyper

__all__ = ["current", "set", "learning_rates"]


def current(tx: Transform, state: Any) -> dict[str, Any]:
    """Every hyperparameter of ``tx`` for its next update, by ``/``-joined path.

    Schedules are evaluated at the state's step; a chain's members are numbered, a
    partition's keyed by label, a wrapper's inner transform is under its field name
    (``inner``). optax members are seen through ``optax.inject_hyperparams`` only.

    Example:
        >>> tx = jt.chain(jt.clip_by_global_norm(1.0), jt.adam(sched))
        >>> jt.hyperparams.current(tx, state)["1/1/learning_rate"]   # sched(count)
    """
    out: dict[str, Any] = {}

    def walk(prefix: str, values: dict) -> None:
        for name, value in values.items():
            path = f"{prefix}/{name}" if prefix else str(name)
            if isinstance(value, dict):
                walk(path, value)
            else:
                out[path] = value

    walk("", tx.hyperparams_at(state))
    return out


def _members(value: Any) -> dict[str, Transform] | None:
    """The transforms a container field holds, by the names :func:`current` uses
    (a chain's positions, a partition's labels); ``None`` if it holds none."""
    if isinstance(value, (tuple, list)) and value and all(
            isinstance(t, Transform) for t in value):
        return {str(i): t for i, t in enumerate(value)}
    if isinstance(value, dict) and value and all(
            isinstance(t, Transform) for t in value.values()):
        return {str(k): t for k, t in value.items()}
    return None


def set(tx: Transform, paths: dict[str, Any] | None = None, /,
        **by_name: Any) -> Transform:
    """A copy of ``tx`` with some hyperparameters replaced; nothing is rebuilt.

    ``by_name`` sets every hyperparameter of that name anywhere in ``tx``
    (``learning_rate=3e-4`` in every member of a chain or partition); ``paths`` sets
    single ones by the paths :func:`current` reports (``{"1/0/b1": 0.95}``). Values
    may be numbers, arrays (tracers too: a sweep under ``vmap``) or schedules; they
    must be finite (the factories' range rules are not re-run). The state keeps its
    type unless a constant becomes a schedule (or back) where that adds or drops a
    count, as building the transform anew would.

    Example:
        >>> tx = jt.chain(jt.clip_by_global_norm(1.0), jt.adamw(1e-3))
        >>> slower = jt.hyperparams.set(tx, learning_rate=3e-4)
        >>> tighter = jt.hyperparams.set(tx, {"0/max_norm": 0.5})
    """
    paths = dict(paths or {})
    for name, value in [*paths.items(), *by_name.items()]:
        check_finite("hyperparams.set", name, value)
    found: builtins.set[str] = builtins.set()  # `set` is this function here

    def walk(t: Transform, prefix: str) -> Transform:
        changes = {}
        for name in t._data_fields:
            value, path = getattr(t, name), f"{prefix}{name}"
            members = _members(value)
            if isinstance(value, Transform):
                changes[name] = walk(value, f"{path}/")
            elif members is not None:
                new = [walk(m, f"{prefix}{k}/") for k, m in members.items()]
                changes[name] = (type(value)(new) if isinstance(value, (tuple, list))
                                 else dict(zip(value, new)))
            elif path in paths or name in by_name:
                found.add(path if path in paths else name)
                changes[name] = as_hyper(paths[path] if path in paths else by_name[name])
        return t.replace(**changes) if changes else t

    out = walk(tx, "")
    unknown = sorted(k for k in [*paths, *by_name] if k not in found)
    if unknown:
        raise ValueError(
            f"hyperparams.set: no hyperparameter named or at {unknown}. Use a name or a "
            "path as jt.hyperparams.current(tx, state) reports them (e.g. "
            "'1/learning_rate')."
        )
    return out


def learning_rates(tx: Transform, params: Any, state: Any, new_state: Any
                   ) -> dict[str, jax.Array]:
    """The learning rate the update from ``state`` to ``new_state`` applied, per group.

    Each parameter's rate is the product of the factors that reach it: every
    ``scale_by_learning_rate`` (a schedule evaluated at the update's count) times
    every ``reduce_on_plateau`` scale over the same leaves (a masked plateau only over
    its mask). Leaves that share their factors form a group. One group gives
    ``{"learning_rate": lr}``; several (a ``partition`` with two rates, a masked
    plateau) give ``{"learning_rate/<name>": lr}``, ``<name>`` the longest path that
    every leaf of the group shares (or its first leaf's). Leaves no rate reaches
    (a frozen group) are left out. optax members report a rate only through
    ``optax.inject_hyperparams``; a rate inside any other optax transform is hidden
    in its closure and is not seen.
    """
    factors = tx.learning_rate_factors(params, state, new_state)
    if not any(f.kind == "rate" for f in factors):
        return {}
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    covers = [None if f.coverage is None else jax.tree.leaves(f.coverage) for f in factors]
    groups: dict[tuple[int, ...], list[tuple]] = {}
    for i, path in enumerate(paths):
        key = tuple(j for j, c in enumerate(covers) if c is None or c[i])
        if any(factors[j].kind == "rate" for j in key):
            groups.setdefault(key, []).append(path)

    def product(key):
        value = jnp.ones((), jnp.float32)
        for j in key:
            value = value * jnp.asarray(factors[j].value).astype(jnp.float32)
        return value

    if len(groups) == 1:
        return {"learning_rate": product(next(iter(groups)))}
    out = {}
    for key, members in groups.items():
        name = _group_name(members)
        if f"learning_rate/{name}" in out:
            name = jtree.path_name(members[0])
        out[f"learning_rate/{name}"] = product(key)
    return out


def _group_name(paths: list[tuple]) -> str:
    """The longest path prefix every member shares, readable (``encoder/layer_0``)."""
    prefix = list(paths[0])
    for path in paths[1:]:
        n = 0
        while n < min(len(prefix), len(path)) and prefix[n] == path[n]:
            n += 1
        prefix = prefix[:n]
    return jtree.path_name(tuple(prefix or paths[0]))
