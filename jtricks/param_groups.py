"""Parameter groups: per-group hyperparameters chosen by glob patterns over paths.

``param_groups(tx, {pattern: overrides})`` is the ``partition`` users otherwise write
by hand for "no weight decay on biases and norms" or "freeze the embedding": each
pattern's group runs ``jt.hyperparams.set(tx, **overrides)`` (or is frozen), every
other parameter runs ``tx`` as is. The transform holds only the patterns (static)
and the overrides (data), so a new learning-rate override does not recompile; the
patterns are matched against the params' paths at init and update time.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import jax

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, as_transform, static_field
from jtricks.hyperparams.values import as_hyper
from jtricks.transforms.freezing import SetToZero
from jtricks.transforms.masking import Partition, partition

__all__ = ["DEFAULT_GROUP", "ParamGroups", "param_groups", "glob_match"]

DEFAULT_GROUP = "default"  # the label of the parameters no pattern matches
_SHOWN = 6  # how many existing paths an error lists


# --- glob patterns over "/"-joined paths ---------------------------------------------


@functools.lru_cache(maxsize=256)
def _segments(pattern: str) -> tuple[re.Pattern | None, ...]:
    """The pattern's segments compiled: ``None`` for ``**``, a regex for the others
    (``*`` matches any characters within one segment, all else is literal)."""
    out = []
    for seg in pattern.split("/"):
        if seg == "**":
            out.append(None)
        else:
            out.append(re.compile(".*".join(map(re.escape, seg.split("*"))), re.DOTALL))
    return tuple(out)


def glob_match(pattern: str, path: str) -> bool:
    """Whether the ``/``-joined ``path`` matches the glob ``pattern``.

    ``**`` (a whole segment) matches any number of segments, none included, so
    ``"**/bias"`` matches ``bias`` and ``a/b/bias``, and ``"embed/**"`` matches
    ``embed`` and everything under it; ``*`` matches any characters within one
    segment (``"*/kernel"``, ``"layer_*/w"``); every other character is literal.

    Example:
        >>> glob_match("**/norm/*", "blocks/0/norm/scale")
        True
    """
    segs, parts = _segments(pattern), path.split("/")

    @functools.cache
    def match(i: int, j: int) -> bool:
        if i == len(segs):
            return j == len(parts)
        if segs[i] is None:  # `**`: skip it, or let it swallow one more segment
            return match(i + 1, j) or (j < len(parts) and match(i, j + 1))
        return j < len(parts) and segs[i].fullmatch(parts[j]) is not None and match(
            i + 1, j + 1)

    return match(0, 0)


def _check_pattern(pattern: Any) -> None:
    """Refuses what is not a well-formed pattern, saying what a pattern may be."""
    if not isinstance(pattern, str):
        raise TypeError(
            f"param_groups: each pattern must be a string such as '**/bias', got "
            f"{type(pattern).__name__}: {pattern!r}."
        )
    segs = pattern.split("/")
    bad = ("it is empty" if not pattern else
           "it has an empty segment (a leading, trailing or doubled '/')" if "" in segs
           else "'**' must be a whole segment (write 'a/**/b', not 'a**b')"
           if any("**" in s and s != "**" for s in segs) else None)
    if bad:
        raise ValueError(
            f"param_groups: bad pattern {pattern!r}: {bad}. A pattern is a '/'-joined "
            "path where '*' matches within one segment and '**' any number of segments, "
            "e.g. '**/bias', '*/kernel', 'embed/**'."
        )
    if pattern == DEFAULT_GROUP:
        raise ValueError(
            f"param_groups: the pattern {pattern!r} is the label of the parameters no "
            f"pattern matches. To match a parameter named {pattern!r}, write "
            f"'{pattern}/**' (it matches the same paths)."
        )


# --- the hyperparameters a transform can set -----------------------------------------


def _settable(tx: Transform) -> dict[str, str]:
    """``{path: name}`` of every hyperparameter ``jt.hyperparams.set`` reaches in
    ``tx``, paths spelled as it accepts them (a chain's members numbered, a wrapped
    transform under its field's name)."""
    out: dict[str, str] = {}

    def walk(t: Transform, prefix: str) -> None:
        for name in t._data_fields:
            value = getattr(t, name)
            if isinstance(value, Transform):
                walk(value, f"{prefix}{name}/")
            elif isinstance(value, (tuple, list, dict)) and value:
                items = value.items() if isinstance(value, dict) else enumerate(value)
                members = [(k, m) for k, m in items if isinstance(m, Transform)]
                if len(members) == len(value):
                    for k, m in members:
                        walk(m, f"{prefix}{k}/")
            else:
                out[f"{prefix}{name}"] = name

    walk(tx, "")
    return out


def _split_overrides(tx: Transform, pattern: str,
                     overrides: Mapping[str, Any]) -> tuple[dict, dict]:
    """``(by path, by name)`` for ``jt.hyperparams.set``, every key checked against
    the hyperparameters ``tx`` has (a key with a ``/`` is a path)."""
    settable = _settable(tx)
    names = sorted(set(settable.values()))
    by_path, by_name = {}, {}
    for key, value in overrides.items():
        if not isinstance(key, str) or key not in (settable if "/" in key else names):
            hidden = (" tx is a foreign (e.g. optax) transform, whose hyperparameters "
                      "are hidden in its closures; build it with jtricks instead."
                      if not settable else "")
            raise ValueError(
                f"param_groups: the overrides for pattern {pattern!r} set {key!r}, but tx "
                f"has no hyperparameter {'at that path' if '/' in str(key) else 'of that name'}"
                f"; the names it has are {names}"
                + (f" (or paths such as {sorted(settable)[:_SHOWN]})" if settable else "")
                + f".{hidden} Use one of those, or None to freeze the group."
            )
        if key == "learning_rate":
            hp.check_learning_rate("param_groups", value)
        (by_path if "/" in key else by_name)[key] = as_hyper(value)
    return by_path, by_name


# --- the transform -------------------------------------------------------------------


class ParamGroups(Transform):
    """``tx`` with per-group hyperparameter overrides; see :func:`param_groups`."""

    tx: Transform
    overrides: tuple  # per pattern: ({path: value}, {name: value}), or None to freeze
    patterns: tuple[str, ...] = static_field()

    def _group_tx(self, label: str) -> Transform:
        """The transform of the group labelled ``label`` (a pattern or the default)."""
        if label == DEFAULT_GROUP:
            return self.tx
        over = self.overrides[self.patterns.index(label)]
        if over is None:
            return SetToZero()
        by_path, by_name = over
        return hp.set(self.tx, by_path, **by_name)

    def _labels(self, tree: Any, where: str) -> Any:
        """Each leaf's group label: the first pattern its path matches, else the
        default; every pattern must win at least one leaf."""
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
        names = [jtree.path_name(path) for path, _ in flat]
        labels = [next((p for p in self.patterns if glob_match(p, n)), DEFAULT_GROUP)
                  for n in names]
        for pattern in self.patterns:
            if pattern not in labels:
                matched = [n for n in names if glob_match(pattern, n)]
                why = ("matches only paths an earlier pattern claims (first match wins): "
                       f"{matched[:_SHOWN]}" if matched else "matches no parameter path")
                raise ValueError(
                    f"{where}: pattern {pattern!r} {why}. The paths are "
                    f"{names[:_SHOWN]}{' ...' if len(names) > _SHOWN else ''} "
                    f"({len(names)} in all). Fix the pattern or remove it."
                )
        return treedef.unflatten(labels)

    def _partition(self, tree: Any, where: str) -> Partition:
        labels = self._labels(tree, where)
        used = set(jax.tree.leaves(labels))
        order = [*self.patterns, DEFAULT_GROUP]
        return partition({k: self._group_tx(k) for k in order if k in used}, labels)

    def init(self, params):
        return self._partition(params, "param_groups.init").init(params)

    def update(self, updates, state, params=None, **extra):
        part = self._partition(updates, "param_groups.update")
        return part.update(updates, state, params, **extra)

    def hyperparams_at(self, state):
        return {k: self._group_tx(k).hyperparams_at(s.inner_state)
                for k, s in state.inner_states.items()}

    def learning_rate_factors(self, params, state, new_state):
        part = self._partition(params, "param_groups")
        return part.learning_rate_factors(params, state, new_state)


def param_groups(tx: Any, groups: Mapping[str, Mapping[str, Any] | None]) -> ParamGroups:
    """torch-style parameter groups: ``tx`` with some hyperparameters overridden (or
    the parameters frozen) for the parameters whose paths match a pattern.

    ::

        group(p) = the first pattern (in dict order) that p's path matches, else default
        u_p -> set(tx, **groups[group(p)])(u)_p    a group with overrides
        u_p -> 0                                  a frozen group (overrides None)
        u_p -> tx(u)_p                            the default group

    It is the ``jt.partition`` one would write by hand, with the patterns as labels
    (``"default"`` for the unmatched parameters, present only if there are any): each
    group's transform is ``jt.hyperparams.set(tx, **overrides)`` and a frozen group's
    zeroes its updates (it keeps no optimizer state); so the state is that partition's
    ``PartitionState``, field for field. Paths are the ``/``-joined keys of the params
    tree as ``jtricks.tree.path_name`` spells them (dict keys, list indices, attribute
    names; an nnx ``Variable``'s ``.value`` dropped), so the same patterns work for
    dicts, lists, flax linen and nnx params and equinox modules. Patterns are matched
    when ``init`` and ``update`` run; the overrides are data (a new learning rate for a
    group does not recompile a step that takes the transform as an argument).
    ``jt.hyperparams.set`` on the result changes ``tx`` (so every group without an
    override of that name), never an override.

    Args:
        tx: the transform every group starts from (jtricks; an optax transform works
            only with ``None`` groups, since its hyperparameters are hidden).
        groups: ``{pattern: overrides}``. A pattern is a glob over paths: ``*`` matches
            within one segment, ``**`` any number of segments (``"**/bias"``,
            ``"**/norm/*"``, ``"embed/**"``, an exact path, ``"layers/0/*"``; see
            :func:`glob_match`). ``overrides`` is ``{name: value}`` of hyperparameters
            of ``tx`` (a key with a ``/`` is a path as ``jt.hyperparams.current``
            reports it), values being numbers, arrays or schedules, or ``None`` to
            freeze the group. Every pattern must be the first match of some parameter.

    Raises:
        ValueError: a malformed pattern or a name ``tx`` lacks (here); a pattern that
            matches no parameter (at ``init``).

    Example:
        >>> tx = jt.param_groups(jt.adamw(1e-3, weight_decay=0.1), {
        ...     "**/bias": {"weight_decay": 0.0}, "**/norm/*": {"weight_decay": 0.0},
        ...     "embed/**": None, "head/**": {"learning_rate": 3e-4}})
    """
    tx = as_transform(tx, where="param_groups")
    if not isinstance(groups, Mapping) or not groups:
        raise TypeError(
            f"param_groups: groups must be a non-empty dict {{pattern: overrides}}, e.g. "
            f"{{'**/bias': {{'weight_decay': 0.0}}}}, got {type(groups).__name__}: "
            f"{groups!r}."
        )
    overrides = []
    for pattern, over in groups.items():
        _check_pattern(pattern)
        if over is not None and not isinstance(over, Mapping):
            raise TypeError(
                f"param_groups: the overrides for pattern {pattern!r} must be a dict "
                f"{{hyperparameter: value}} or None (freeze), got "
                f"{type(over).__name__}: {over!r}."
            )
        if over is not None:
            by_path, by_name = _split_overrides(tx, pattern, over)
            with hp.reporting_as("param_groups"):  # errors name the function called
                hp.set(tx, by_path, **by_name)  # checks the values once, eagerly
            over = (by_path, by_name)
        overrides.append(over)
    return ParamGroups(tx=tx, overrides=tuple(overrides), patterns=tuple(groups))
