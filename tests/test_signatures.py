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


@pytest.mark.parametrize("name, ours, theirs", SHARED, ids=[n for n, _, _ in SHARED])
def test_signature_equals_optaxs(name, ours, theirs):
    mine, optax_params = _params(ours), _params(theirs)
    shared, extra = mine[:len(optax_params)], mine[len(optax_params):]
    assert [(p.name, p.kind) for p in shared] == [(p.name, p.kind) for p in optax_params]
    for a, b in zip(shared, optax_params):
        default_a, default_b = a.default, b.default
        if callable(default_b) and not isinstance(default_b, type):
            # A default function (a decay-rate rule): same name is the best check.
            assert getattr(default_a, "__name__", None) == getattr(default_b, "__name__", None)
        else:
            assert default_a == default_b or (default_a is default_b), (a.name, default_a,
                                                                         default_b)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extra), extra
