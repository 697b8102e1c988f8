"""MARS-AdamW and cautious updates: independent NumPy references of the papers'
algorithms, descent on hard problems, and the catalogue's JAX properties (one trace
for two learning rates, vmap over rates, eval_shape, donation, bf16, bad input).

MARS (Yuan et al. 2024) is checked in its approximate form with the paper's
``x_1 = x_0`` start (no correction at the first step) and both norm scopes of its
clipping; cautious (Liang et al. 2024) around SGD with momentum and around Adam.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import donated_two_steps, lr_programs
from conftest import FAST_COMPILE, make_params, noise_sequence

import jtricks as jt
from jtricks.base import apply_updates, chain
from jtricks.optimizers.mars import mars
from jtricks.transforms.adaptive import scale_by_adam
from jtricks.transforms.cautious import Cautious, cautious
from jtricks.transforms.mars import ScaleByMarsState, scale_by_mars
from jtricks.transforms.scaling import scale_by_learning_rate

SHAPES = {"w": (4, 3), "b": (5,), "s": ()}
STEPS = 6


def _tree(rng, scale=1.0):
    return {k: scale * rng.standard_normal(s) for k, s in SHAPES.items()}


def _problem():
    """Float64 params and a gradient sequence whose norms straddle 1 (so MARS's clip
    is active on some steps and not on others) and whose signs flip (so cautious
    masks something)."""
    rng = np.random.default_rng(3)
    params = _tree(rng)
    scales = [0.05, 3.0, 0.1, 2.0, 0.02, 5.0]
    grads = [_tree(rng, s) for s in scales[:STEPS]]
    return params, grads


def _leaves(t):
    return [t[k] for k in SHAPES]


def _as_tree(leaves):
    return dict(zip(SHAPES, leaves))


# --- the references, written from the papers ----------------------------------------


def mars_reference(params, grads, lr, b1, b2, eps, gamma, wd, per_leaf):
    x = [np.array(p, np.float64) for p in _leaves(params)]
    m = [np.zeros_like(p) for p in x]
    v = [np.zeros_like(p) for p in x]
    prev, out = None, []
    for t, g in enumerate(grads, start=1):
        g = _leaves(g)
        prev = g if prev is None else prev          # x_1 = x_0: no first correction
        c = [gi + gamma * b1 / (1 - b1) * (gi - pi) for gi, pi in zip(g, prev)]
        if per_leaf:
            c = [ci / np.linalg.norm(ci) if np.linalg.norm(ci) > 1 else ci for ci in c]
        else:
            norm = np.sqrt(sum(np.sum(ci**2) for ci in c))
            c = [ci / norm for ci in c] if norm > 1 else c
        m = [b1 * mi + (1 - b1) * ci for mi, ci in zip(m, c)]
        v = [b2 * vi + (1 - b2) * ci**2 for vi, ci in zip(v, c)]
        x = [xi - lr * ((mi / (1 - b1**t)) / (np.sqrt(vi / (1 - b2**t)) + eps) + wd * xi)
             for xi, mi, vi in zip(x, m, v)]
        prev = g
        out.append(_as_tree(x))
    return out


def _cautious_mask(u, g, eps):
    mask = (u * g < 0).astype(np.float64)
    return u * mask / max(mask.mean(), eps), mask.mean()


def cautious_reference(params, grads, kind, lr, eps=1e-3):
    x = [np.array(p, np.float64) for p in _leaves(params)]
    m = [np.zeros_like(p) for p in x]
    v = [np.zeros_like(p) for p in x]
    out, kept = [], []
    for t, g in enumerate(grads, start=1):
        g = _leaves(g)
        if kind == "sgd":   # heavy ball: trace <- g + 0.9 trace, u = -lr trace
            m = [gi + 0.9 * mi for gi, mi in zip(g, m)]
            u = [-lr * mi for mi in m]
        else:               # Adam with b1=0.9, b2=0.999, eps=1e-8
            m = [0.9 * mi + 0.1 * gi for mi, gi in zip(m, g)]
            v = [0.999 * vi + 0.001 * gi**2 for vi, gi in zip(v, g)]
            u = [-lr * (mi / (1 - 0.9**t)) / (np.sqrt(vi / (1 - 0.999**t)) + 1e-8)
                 for mi, vi in zip(m, v)]
        masked = [_cautious_mask(ui, gi, eps) for ui, gi in zip(u, g)]
        kept += [k for _, k in masked]
        x = [xi + ui for xi, (ui, _) in zip(x, masked)]
        out.append(_as_tree(x))
    return out, kept


# --- one compiled program for every reference comparison ----------------------------

CONFIGS = {
    "mars_global": (dict(lr=0.05, b1=0.9, b2=0.95, eps=1e-8, gamma=0.05, wd=0.1,
                         per_leaf=False)),
    "mars_leaf": (dict(lr=0.05, b1=0.95, b2=0.99, eps=1e-6, gamma=0.025, wd=0.0,
                       per_leaf=True)),
}


def _jt_mars(c):
    return mars(c["lr"], c["b1"], c["b2"], c["eps"], c["gamma"], c["wd"],
                per_leaf_clip=c["per_leaf"])


# The transforms of the JAX-property checks, by learning rate.
FACTORIES = {"mars": lambda lr: mars(lr, weight_decay=0.01),
             "cautious_adam": lambda lr: cautious(jt.adam(lr))}

TXS = {name: functools.partial(_jt_mars, c) for name, c in CONFIGS.items()}
TXS["cautious_sgd"] = lambda: cautious(jt.sgd(0.1, momentum=0.9))
TXS["cautious_adam"] = lambda: cautious(jt.adam(0.05))
TXS["cautious_adam_direction"] = lambda: chain(cautious(scale_by_adam(), direction=True),
                                               scale_by_learning_rate(0.05))


@functools.cache
def trajectories():
    params, grads = _problem()
    p32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    g32 = [jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g) for g in grads]

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(p0, gs):
        out, bf16 = {}, {}
        for name, make in TXS.items():
            tx, p, traj = make(), p0, []
            state = tx.init(p)
            for g in gs:
                u, state = tx.update(g, state, p)
                p = apply_updates(p, u)
                traj.append(p)
            out[name] = traj
        for name, f in FACTORIES.items():   # bf16 params, three steps
            tx, p = f(1e-2), jax.tree.map(lambda x: x.astype(jnp.bfloat16), p0)
            state = tx.init(p)
            for g in gs[:3]:
                u, state = tx.update(jax.tree.map(lambda x: x.astype(jnp.bfloat16), g),
                                     state, p)
                p = apply_updates(p, u)
            bf16[name] = (p, state)
        return out, bf16

    return (params, grads, *run(p32, g32))


def _assert_close(ours, ref, name):
    for k, (a, b) in enumerate(zip(ours, ref)):
        for key in SHAPES:
            np.testing.assert_allclose(np.asarray(a[key]), b[key], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{name} step {k + 1} leaf {key}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mars_equals_the_papers_algorithm(name):
    params, grads, out, _ = trajectories()
    ref = mars_reference(params, grads, **CONFIGS[name])
    _assert_close(out[name], ref, name)
    assert not np.allclose(ref[-1]["w"], params["w"])


def test_mars_clip_is_active_on_some_steps_only():
    # The reference's premise: the corrected gradient's global norm straddles 1.
    _, grads = _problem()
    norms = [np.sqrt(sum(np.sum(x**2) for x in _leaves(g))) for g in grads]
    assert min(norms) < 1 < max(norms)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_cautious_equals_the_papers_rule(kind):
    params, grads, out, _ = trajectories()
    lr = 0.1 if kind == "sgd" else 0.05
    ref, kept = cautious_reference(params, grads, kind, lr)
    _assert_close(out[f"cautious_{kind}"], ref, f"cautious_{kind}")
    assert min(kept) < 1, "the mask never dropped a coordinate: the test proves nothing"


def test_cautious_direction_form_is_the_papers_c_adamw():
    # Masking Adam's direction (direction=True) then scaling by -lr equals masking
    # the full update: the two sign conventions agree.
    _, _, out, _ = trajectories()
    for key in SHAPES:
        np.testing.assert_allclose(out["cautious_adam_direction"][-1][key],
                                   out["cautious_adam"][-1][key], rtol=1e-6, atol=1e-8)


def test_state_is_the_inner_state_and_mars_state_fields():
    params = make_params()
    inner = jt.adam(1e-3)
    a, b = cautious(inner).init(params), inner.init(params)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    state = scale_by_mars().init(params)
    assert isinstance(state, ScaleByMarsState)
    assert state._fields == ("count", "mu", "nu", "prev_grad")
    assert state.count.dtype == jnp.int32


# --- descent on hard problems -------------------------------------------------------


def rosenbrock(p):
    x, y = p["xy"][0], p["xy"][1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


D = jnp.asarray(np.logspace(0, 3, 10), jnp.float32)


def quadratic(p):
    return 0.5 * jnp.sum(D * p["x"] ** 2)


START = {"rosenbrock": {"xy": jnp.asarray([-1.2, 1.0])},
         "quadratic": {"x": jnp.ones(10, jnp.float32)}}
LOSSES = {"rosenbrock": rosenbrock, "quadratic": quadratic}
DESCENT = {"mars": lambda: mars(0.02, gamma=0.025),
           "cautious_adamw": lambda: cautious(jt.adamw(0.02, weight_decay=0.0))}


@functools.cache
def descent_losses():
    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run():
        out = {}
        for opt, make in DESCENT.items():
            for prob, f in LOSSES.items():
                tx = make()

                def body(carry, _, tx=tx, f=f):
                    p, s = carry
                    u, s = tx.update(jax.grad(f)(p), s, p)
                    return (apply_updates(p, u), s), None

                p0 = START[prob]
                (p, _), _ = jax.lax.scan(body, (p0, tx.init(p0)), None, length=1500)
                out[opt, prob] = (f(p0), f(p))
        return out

    return run()


@pytest.mark.parametrize("opt", list(DESCENT))
@pytest.mark.parametrize("prob", list(LOSSES))
def test_decreases_rosenbrock_and_ill_conditioned_quadratic(opt, prob):
    start, end = (float(x) for x in descent_losses()[opt, prob])
    assert np.isfinite(end) and end < 1e-2 * start, (start, end)


# --- the catalogue's JAX properties -------------------------------------------------



@functools.cache
def lr_results():
    params = make_params()
    return lr_programs(FACTORIES, params, noise_sequence(params, 5))


def test_one_trace_for_two_rates_and_vmap_equals_separate_runs():
    separate, swept = lr_results()
    for i in range(2):
        for name in FACTORIES:
            for a, b in zip(jax.tree.leaves(swept[name]),
                            jax.tree.leaves(separate[i][name])):
                np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.allclose(jax.tree.leaves(separate[0]["mars"])[0],
                           jax.tree.leaves(separate[1]["mars"])[0])


def test_eval_shape_and_donated_steps():
    params = make_params()
    for name, f in FACTORIES.items():
        shapes = jax.eval_shape(f(1e-3).init, params)
        assert jax.tree.structure(shapes) == jax.tree.structure(f(1e-3).init(params)), name
    rows = [(name, functools.partial(f, 1e-2), None) for name, f in FACTORIES.items()]
    out = donated_two_steps(rows, params, noise_sequence(params, 2))
    for name in FACTORIES:
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(out[name])), name


def test_bf16_params_and_state_stay_bf16():
    for name, (p, s) in trajectories()[3].items():
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p)), name
        floats = [x for x in jax.tree.leaves(s) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert floats and all(x.dtype == jnp.bfloat16 for x in floats), name
        assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in floats), name


@pytest.mark.parametrize("call,match", [
    (lambda: mars(-1e-3), "mars: learning_rate"),
    (lambda: mars(1e-3, b1=1.0), "mars: b1"),
    (lambda: mars(1e-3, b2=-0.1), "mars: b2"),
    (lambda: mars(1e-3, eps=-1.0), "mars: eps"),
    (lambda: mars(1e-3, gamma=-0.5), "mars: gamma"),
    (lambda: mars(1e-3, weight_decay=-1e-2), "mars: weight_decay"),
    (lambda: scale_by_mars(gamma=float("nan")), "scale_by_mars: gamma"),
    (lambda: cautious(jt.adam(1e-3), eps=0.0), "cautious: eps"),
    (lambda: cautious(jt.adam(1e-3), eps=jt.schedules.constant(1e-3)), "cautious: eps"),
    (lambda: cautious(3.0), "cautious: expected a gradient transformation"),
])
def test_bad_input_is_refused_naming_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_cautious_is_a_pytree_of_the_inner_hyperparameters():
    tx = cautious(jt.adam(1e-3))
    assert isinstance(tx, Cautious) and hash(tx) == hash(cautious(jt.adam(1e-3)))
    assert 1e-3 in jax.tree.leaves(tx)
    slower = jt.hyperparams.set(tx, learning_rate=3e-4)
    assert jt.hyperparams.current(slower, slower.init(make_params()))[
        "inner/1/learning_rate"] == 3e-4
