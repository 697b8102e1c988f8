"""The drop-in rule, name by name: wherever jtricks and optax (contrib included) share
a public function name, the signatures agree: the same parameter names, kinds, order
and defaults; jtricks may only add keyword-only parameters at the end."""

from __future__ import annotations

import inspect

import optax
import pytest

import jtricks as jt


def _optax_twin(name):
    for where in (optax, optax.contrib):
        f = getattr(where, name, None)
        if callable(f) and not inspect.isclass(f):
            return f
    return None


def _shared():
    out = []
    for name in sorted(dir(jt)):
        ours = getattr(jt, name)
        if name.startswith("_") or inspect.isclass(ours) or inspect.ismodule(ours):
            continue
        if callable(ours) and (theirs := _optax_twin(name)) is not None:
            out.append((name, ours, theirs))
    return out


SHARED = _shared()


def _params(f):
    return list(inspect.signature(f).parameters.values())


def test_many_names_are_shared():
    assert len(SHARED) >= 40, [n for n, _, _ in SHARED]


# Defaults that are objects of each library (a transform, an estimator, a lambda) cannot
# compare equal across libraries; each is compared by what it is configured to do.
OBJECT_DEFAULTS = {
    # optax's default is a lambda: the same bound at every step.
    ("adopt", "clip_value_fn"): lambda ours, theirs: all(
        float(ours(k)) == float(theirs(k)) for k in range(50)),
    ("scale_by_adopt", "clip_value_fn"): lambda ours, theirs: all(
        float(ours(k)) == float(theirs(k)) for k in range(50)),
    # optax's default is its own zoom linesearch with these settings.
    ("lbfgs", "linesearch"): lambda ours, theirs: ours == jt.scale_by_zoom_linesearch(
        max_linesearch_steps=20, initial_guess_strategy="one"),
    # optax's default is its Hutchinson estimator with the default seed.
    ("sophia", "hessian_diagonal_fn"): lambda ours, theirs: (
        ours == jt.hutchinson_estimator_diag_hessian()),
    ("scale_by_sophia", "hessian_diagonal_fn"): lambda ours, theirs: (
        ours == jt.hutchinson_estimator_diag_hessian()),
}


def _same_default(name, a, b):
    if (name, a.name) in OBJECT_DEFAULTS:
        return OBJECT_DEFAULTS[name, a.name](a.default, b.default)
    if callable(b.default) and not isinstance(b.default, type):
        # A default function (a decay-rate rule): same name is the best check.
        return getattr(a.default, "__name__", None) == getattr(b.default, "__name__", None)
    return a.default == b.default or a.default is b.default


@pytest.mark.parametrize("name, ours, theirs", SHARED, ids=[n for n, _, _ in SHARED])
def test_signature_equals_optaxs(name, ours, theirs):
    mine, optax_params = _params(ours), _params(theirs)
    shared, extra = mine[:len(optax_params)], mine[len(optax_params):]
    assert [(p.name, p.kind) for p in shared] == [(p.name, p.kind) for p in optax_params]
    for a, b in zip(shared, optax_params):
        assert _same_default(name, a, b), (a.name, a.default, b.default)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extra), extra


def _optax_names():
    """What the drop-in rule covers: optax's optimizer aliases, every ``scale_by_*``
    block, optax.contrib's public functions, and optax's schedules (in
    ``jt.schedules``, any ``_schedule`` suffix dropped)."""
    from optax._src import alias

    def public(module):
        return {n for n in dir(module) if not n.startswith("_") and not n[0].isupper()
                and callable(getattr(module, n)) and not inspect.isclass(getattr(module, n))}

    top = {n for n in public(alias) if n in dir(optax)}
    top |= {n for n in public(optax) if n.startswith("scale_by_")}
    top |= public(optax.contrib)
    schedules = public(optax.schedules) - {"inject_hyperparams", "inject_stateful_hyperparams"}
    return sorted(top), sorted(schedules)


def test_every_optax_name_of_the_rule_is_in_jtricks_and_in_all():
    top, schedules = _optax_names()
    assert len(top) > 90 and len(schedules) > 12
    assert [n for n in top if n not in jt.__all__ or not callable(getattr(jt, n))] == []
    short = {n: n.replace("_schedules", "").replace("_schedule", "") for n in schedules}
    assert [n for n, s in short.items() if not callable(getattr(jt.schedules, s, None))] == []
    assert all(hasattr(jt, n) for n in jt.__all__)
