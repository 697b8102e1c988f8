"""SOAP and Shampoo against NumPy references written from their papers' algorithms,
on problems where their preconditioning matters, and through the JAX transforms.

Neither optimizer has an optax twin. The references below are float64 NumPy, written
from SOAP's Algorithm 3 (Vyas et al., 2024, with its reference implementation's
seeding step, sort and bias correction) and distributed Shampoo's algorithm with
Adam grafting (Shi et al., 2023), blocks cut unevenly (no padding). Eigenbases are
defined up to the sign of each column, to which every update is invariant; the
shapes are chosen so that no factor has a repeated eigenvalue when a basis is taken.
"""

from __future__ import annotations

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAST_COMPILE

from jtricks.base import apply_updates
from jtricks.optimizers.adaptive import adam
from jtricks.optimizers.preconditioned import shampoo, soap
from jtricks.transforms.shampoo import from_blocks, scale_by_shampoo, to_blocks
from jtricks.transforms.soap import rotated_axes, scale_by_soap

SHAPES = {"w": (3, 4), "t": (2, 3, 4), "b": (4,), "s": ()}
STEPS = 8


# --- the NumPy references ----------------------------------------------------------------

def _rotate(x, qs, back=False):
    """Each axis in turn contracted with its basis (moving to the end), as the
    reference's ``project``; ``None`` leaves an axis as it is."""
    for q in qs:
        x = np.moveaxis(x, 0, -1) if q is None else np.tensordot(x, q, ([0], [1 if back else 0]))
    return x


def _unfold_gram(g, i):
    u = np.moveaxis(g, i, 0).reshape(g.shape[i], -1)
    return u @ u.T


def soap_reference(params, grads, lr, b1, b2, beta, eps, freq, max_dim, wd):
    """SOAP's parameters after each update, in float64."""
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    st = {k: {"m": np.zeros_like(v), "v": np.zeros_like(v)} for k, v in p.items()}
    beta = b2 if beta is None else beta
    out = []
    for k, g_all in enumerate(grads):
        for name, g in g_all.items():
            s, x = st[name], p[name]
            axes = rotated_axes(g.shape, max_dim)
            if k == 0:  # seed: factors and their eigenbases, no step
                s["L"] = {i: (1 - beta) * _unfold_gram(g, i) for i in axes}
                s["Q"] = {i: np.linalg.eigh(s["L"][i])[1][:, ::-1] for i in axes}
                p[name] = x - lr * wd * x
                continue
            qs = [s["Q"].get(i) for i in range(g.ndim)]
            s["m"] = b1 * s["m"] + (1 - b1) * g
            s["v"] = b2 * s["v"] + (1 - b2) * _rotate(g, qs) ** 2
            n = _rotate(_rotate(s["m"], qs) / (np.sqrt(s["v"]) + eps), qs, back=True)
            p[name] = x - lr * (np.sqrt(1 - b2**k) / (1 - b1**k) * n + wd * x)
            for i in axes:
                s["L"][i] = beta * s["L"][i] + (1 - beta) * _unfold_gram(g, i)
                if k % freq == 0:
                    q, L = s["Q"][i], s["L"][i]
                    order = np.argsort(-np.diag(q.T @ L @ q))
                    s["v"] = np.take(s["v"], order, axis=i)
                    s["Q"][i] = np.linalg.qr(L @ q[:, order])[0]
        out.append({kk: vv.copy() for kk, vv in p.items()})
    return out


def _mode_product(x, m, i):
    return np.moveaxis(np.tensordot(m, x, ([1], [i])), 0, i)


def shampoo_reference(params, grads, lr, b1, b2, eps, freq, block, gb2, geps, start, wd):
    """Shampoo with Adam grafting: parameters after each update, in float64."""
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    start = freq if start is None else start
    st = {k: {"m": np.zeros_like(v), "v": np.zeros_like(v), "blocks": {}} for k, v in p.items()}
    out = []
    for t, g_all in enumerate(grads, start=1):
        for name, g in g_all.items():
            s, x = st[name], p[name]
            s["m"] = b1 * s["m"] + (1 - b1) * g
            s["v"] = gb2 * s["v"] + (1 - gb2) * g**2
            m_hat = s["m"] / (1 - b1**t)
            a = m_hat / (np.sqrt(s["v"] / (1 - gb2**t)) + geps)
            u = a.copy()
            cuts = [[slice(j, min(j + block, d)) for j in range(0, d, block)] for d in g.shape]
            for sl in itertools.product(*cuts) if g.ndim else ():
                gb = g[sl]
                blk = s["blocks"].setdefault(str(sl), {
                    "L": [np.zeros((n, n)) for n in gb.shape],
                    "P": [np.eye(n) for n in gb.shape]})
                w = 1.0 if b2 == 1 else 1 - b2
                blk["L"] = [b2 * L + w * _unfold_gram(gb, i) for i, L in enumerate(blk["L"])]
                if t % freq == 0:
                    c = 1.0 if b2 == 1 else 1 - b2**t
                    for i, L in enumerate(blk["L"]):
                        lam, vec = np.linalg.eigh(L / c + eps * np.eye(len(L)))
                        blk["P"][i] = (vec * np.maximum(lam, eps) ** (-1 / (2 * g.ndim))) @ vec.T
                if t >= start:
                    sd = m_hat[sl]
                    for i, pm in enumerate(blk["P"]):
                        sd = _mode_product(sd, pm, i)
                    u[sl] = sd * np.linalg.norm(a[sl]) / np.linalg.norm(sd)
            p[name] = x - lr * (u + wd * x)
        out.append({kk: vv.copy() for kk, vv in p.items()})
    return out


# --- the configurations compared -----------------------------------------------------------

SOAP_CASES = {
    "soap_refresh_every_2": dict(lr=0.05, b1=0.9, b2=0.95, beta=0.9, eps=1e-8, freq=2,
                                 max_dim=10000, wd=0.01),
    "soap_max_dim_3": dict(lr=0.03, b1=0.8, b2=0.9, beta=None, eps=1e-8, freq=3, max_dim=3,
                           wd=0.0),
}
# A factor must be full rank when its root is first taken: with eps this small, the root
# of a null direction amplifies rounding (fp32 against float64) beyond any tolerance.
# The (4,) leaf therefore waits 4 steps (freq=4) for its first root.
SHAMPOO_CASES = {
    "shampoo_ema": dict(lr=0.05, b1=0.9, b2=0.99, eps=1e-10, freq=4, block=1024, gb2=0.95,
                        geps=1e-8, start=None, wd=0.01),
    "shampoo_adagrad_blocks_of_2": dict(lr=0.03, b1=0.5, b2=1.0, eps=1e-6, freq=3, block=2,
                                        gb2=0.9, geps=1e-8, start=2, wd=0.0),
}


def _make_soap(c):
    return soap(c["lr"], c["b1"], c["b2"], c["beta"], c["eps"], c["freq"], c["max_dim"],
                c["wd"])


def _make_shampoo(c):
    return shampoo(c["lr"], c["b1"], c["b2"], c["eps"], c["freq"], c["block"], c["gb2"],
                   c["geps"], c["start"], c["wd"])


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
             for _ in range(STEPS)]
    return params, grads


def _transforms(factor=1.0):
    """Every configuration, its learning rate times ``factor`` (a tracer under vmap)."""
    scaled = lambda c: {**c, "lr": c["lr"] * factor}
    return {**{n: _make_soap(scaled(c)) for n, c in SOAP_CASES.items()},
            **{n: _make_shampoo(scaled(c)) for n, c in SHAMPOO_CASES.items()}}


def _trajectories(txs, params, stacked):
    def body(carry, g):
        out = {}
        for name, tx in txs.items():
            p, s = carry[name]
            u, s = tx.update(g, s, p)
            out[name] = (apply_updates(p, u), s)
        return out, {n: v[0] for n, v in out.items()}

    init = {n: (params, tx.init(params)) for n, tx in txs.items()}
    return jax.lax.scan(body, init, stacked)


@functools.cache
def reference_runs():
    """Every configuration's trajectory on one random gradient sequence, through ONE
    compiled program that takes the transforms as an argument: run at the configured
    rates and at half of them (it must trace once), then both as one vmap."""
    params, grads = _problem()
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)
    jparams = jax.tree.map(jnp.asarray, params)
    chex.clear_trace_counter()  # chex keys its counter on the caller's stack and source
    run = jax.jit(chex.assert_max_traces(_trajectories, n=1), compiler_options=FAST_COMPILE)
    (final, traj), (_, half) = (run(_transforms(f), jparams, stacked) for f in (1.0, 0.5))
    sweep = jax.jit(jax.vmap(lambda f: _trajectories(_transforms(f), jparams, stacked)[1]),
                    compiler_options=FAST_COMPILE)
    swept = sweep(jnp.asarray([1.0, 0.5]))
    return params, grads, final, traj, (traj, half, swept)


CASES = [(n, soap_reference, c) for n, c in SOAP_CASES.items()] + [
    (n, shampoo_reference, c) for n, c in SHAMPOO_CASES.items()]


@pytest.mark.parametrize("name,reference,config", CASES, ids=[c[0] for c in CASES])
def test_equals_the_papers_algorithm(name, reference, config):
    params, grads, _, traj, _ = reference_runs()
    expected = reference(params, [{k: v.astype(np.float64) for k, v in g.items()}
                                  for g in grads], *config.values())
    for step, want in enumerate(expected):
        for leaf, value in want.items():
            np.testing.assert_allclose(traj[name][leaf][step], value, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}: {leaf} after update {step}")
    moved = [np.abs(expected[-1][k] - params[k]).max() for k in params]
    assert min(moved) > 1e-3, (name, moved)


def test_blocks_round_trip_and_pad_with_zeros():
    x = jnp.arange(35.0).reshape(5, 7)
    blocks = to_blocks(x, 3)
    assert blocks.shape == (2 * 3, 3, 3)
    assert float(jnp.sum(blocks)) == float(jnp.sum(x))  # the padding is zeros
    np.testing.assert_array_equal(from_blocks(blocks, x.shape, 3), x)
    assert to_blocks(x, 8).shape == (1, 5, 7)  # short axes stay whole


# --- convergence: Rosenbrock, an ill-conditioned quadratic, least squares -------------------

def _rotation(rng, n):
    return np.linalg.qr(rng.standard_normal((n, n)))[0]


def _problems():
    """Three losses of one matrix parameter each, with their starting points."""
    rng = np.random.default_rng(3)
    r = _rotation(rng, 4)
    h = jnp.asarray(r @ np.diag(np.logspace(0, 3, 4)) @ r.T, jnp.float32)
    # Square, so both Kronecker factors are full rank from the first step: with a
    # rank-deficient factor the eigenbasis of its null space is any orthonormal basis
    # LAPACK returns, and fp32 rounding there differed from machine to machine.
    w_quad = jnp.asarray(rng.standard_normal((4, 4)), jnp.float32)
    a = jnp.asarray(_rotation(rng, 8) @ np.diag(np.logspace(0, -1.5, 8)) @ _rotation(rng, 8),
                    jnp.float32)
    b = jnp.asarray(_rotation(rng, 4) @ np.diag(np.logspace(0, -1, 4)) @ _rotation(rng, 4),
                    jnp.float32)
    c = a @ jnp.asarray(rng.standard_normal((8, 4)), jnp.float32) @ b

    def rosenbrock(w):  # three independent 2-D Rosenbrock valleys, one per row
        x, y = w[:, 0], w[:, 1]
        return jnp.sum((1 - x) ** 2 + 100 * (y - x**2) ** 2)

    def quadratic(w):
        e = w - w_quad
        return 0.5 * jnp.sum(e * (h @ e))

    def least_squares(w):
        return 0.5 * jnp.sum((a @ w @ b - c) ** 2)

    starts = {"rosenbrock": jnp.asarray([[-1.2, 1.0], [-0.5, 1.5], [0.3, -0.6]]),
              "quadratic": jnp.zeros((4, 4)), "least_squares": jnp.zeros((8, 4))}
    return {"rosenbrock": rosenbrock, "quadratic": quadratic,
            "least_squares": least_squares}, starts


CONVERGE_STEPS = 300
RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
OPTIMIZERS = {
    "adam": lambda lr: adam(lr),
    "soap": lambda lr: soap(lr, precondition_frequency=5, weight_decay=0.0),
    "shampoo": lambda lr: shampoo(lr, precondition_frequency=5),
}


def _losses(txs):
    """Loss curves of every optimizer on every problem (one scan each)."""
    losses, starts = _problems()
    out = {}
    for name, tx in txs.items():
        for prob, loss in losses.items():
            def body(carry, _, tx=tx, loss=loss):
                p, s = carry
                value, g = jax.value_and_grad(loss)(p)
                u, s = tx.update(g, s, p)
                return (apply_updates(p, u), s), value

            start = starts[prob]
            out[name, prob] = jax.lax.scan(body, (start, tx.init(start)), None,
                                           length=CONVERGE_STEPS)[1]
    return out


@functools.cache
def rate_runs():
    """Every rate of the grid, for every optimizer and problem, as ONE vmapped program."""
    sweep = jax.jit(jax.vmap(lambda lr: _losses({n: f(lr) for n, f in OPTIMIZERS.items()})),
                    compiler_options=FAST_COMPILE)
    out = jax.device_get(sweep(jnp.asarray(RATES, jnp.float32)))
    return {key: list(curves) for key, curves in out.items()}


def _best(curves):
    """(final loss, rate index) of the best rate."""
    finals = [c[-1] if np.isfinite(c).all() else np.inf for c in curves]
    return min(finals), int(np.argmin(finals))


@pytest.mark.parametrize("name", ["soap", "shampoo"])
@pytest.mark.parametrize("prob", ["rosenbrock", "quadratic"])
def test_decreases_rosenbrock_and_an_ill_conditioned_quadratic(name, prob):
    curves = rate_runs()[name, prob]
    final, i = _best(curves)
    assert final < 1e-2 * curves[i][0], (name, prob, final, curves[i][0])


def _steps_to(curve, target):
    hit = np.flatnonzero(curve < target)
    return int(hit[0]) if hit.size else CONVERGE_STEPS + 1


def test_soap_and_shampoo_beat_adam_on_ill_conditioned_least_squares():
    curves = {n: rate_runs()[n, "least_squares"] for n in OPTIMIZERS}
    target = 1e-4 * curves["adam"][0][0]
    steps = {n: min(_steps_to(c, target) for c in cs) for n, cs in curves.items()}
    assert steps["soap"] < steps["adam"] and steps["shampoo"] < steps["adam"], steps
    assert steps["soap"] <= CONVERGE_STEPS and steps["shampoo"] <= CONVERGE_STEPS, steps


def test_one_compilation_for_two_rates_and_vmap_over_rates():
    # reference_runs traced its jitted program once (chex) for two sets of rates.
    *_, (traj, half, swept) = reference_runs()
    for name in traj:
        for i, run in enumerate((traj, half)):
            for leaf in run[name]:
                np.testing.assert_allclose(swept[name][leaf][i], run[name][leaf], rtol=1e-5,
                                           atol=1e-6, err_msg=f"{name}: {leaf}, run {i}")
        assert not np.allclose(traj[name]["w"], half[name]["w"]), name


# --- state, dtypes, donation, bad input -------------------------------------------------------

def _small(dtype):
    params, _ = _problem(1)
    return {k: jnp.asarray(v, dtype) for k, v in params.items()}


DONATED = {"soap": lambda: soap(0.01, precondition_frequency=1),
           "shampoo": lambda: shampoo(0.01, precondition_frequency=1, block_size=3)}


@pytest.mark.parametrize("name", list(DONATED))
def test_eval_shape_of_init_and_params_shaped_moments(name):
    params = _small(jnp.float32)
    tx = DONATED[name]()
    shapes, real = jax.eval_shape(tx.init, params), tx.init(params)
    assert jax.tree.structure(shapes) == jax.tree.structure(real)
    for s, x in zip(jax.tree.leaves(shapes), jax.tree.leaves(real)):
        assert (s.shape, s.dtype) == (x.shape, x.dtype)
    inner = real[0]
    assert inner.count.dtype == jnp.int32
    for field in (inner.mu, inner.nu):
        assert jax.tree.map(jnp.shape, field) == jax.tree.map(jnp.shape, params)


@functools.cache
def donated_runs():
    """Two donated steps of both optimizers on fp32 and bf16 params, in ONE program."""
    txs = {n: make() for n, make in DONATED.items()}
    _, grads = _problem(2)

    @functools.partial(jax.jit, donate_argnums=(0, 1), compiler_options=FAST_COMPILE)
    def step(ps, states, g):
        out_p, out_s = {}, {}
        for key, p in ps.items():
            grad = jax.tree.map(lambda x, q: x.astype(q.dtype), g, p)
            u, out_s[key] = txs[key.split("/")[0]].update(grad, states[key], p)
            out_p[key] = apply_updates(p, u)
        return out_p, out_s

    ps = {f"{n}/{d}": _small(d) for n in txs for d in ("float32", "bfloat16")}
    states = {key: txs[key.split("/")[0]].init(p) for key, p in ps.items()}
    for key, s in states.items():
        buffers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(s)]
        assert len(set(buffers)) == len(buffers), f"{key}: two state fields share a buffer"
    for g in grads[:3]:
        ps, states = step(ps, states, g)
    return ps, states


@pytest.mark.parametrize("name", list(DONATED))
def test_donated_steps_and_bf16_params_with_fp32_statistics(name):
    ps, states = donated_runs()
    fp32, bf16 = ps[f"{name}/float32"], ps[f"{name}/bfloat16"]
    for leaf in fp32:
        assert bf16[leaf].dtype == jnp.bfloat16, leaf
        np.testing.assert_allclose(np.asarray(bf16[leaf], np.float32), fp32[leaf], rtol=0.05,
                                   atol=0.05, err_msg=f"{name}: {leaf}")
        assert not np.allclose(fp32[leaf], _small(jnp.float32)[leaf]), leaf
    inner = states[f"{name}/bfloat16"][0]
    factors = (inner.gg, inner.q) if name == "soap" else (inner.stats, inner.preconditioners)
    assert {x.dtype for x in jax.tree.leaves(factors)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves((inner.mu, inner.nu))} == {jnp.dtype(jnp.bfloat16)}
    assert int(inner.count) == 3


def test_axes_above_max_precond_dim_and_small_leaves_are_not_rotated():
    assert rotated_axes((3, 4), 3) == (0,)
    assert rotated_axes((5,), 10) == () and rotated_axes((), 10) == ()
    state = soap(0.1, max_precond_dim=3).init(_small(jnp.float32))[0]
    assert [f.shape for f in state.q["t"]] == [(2, 2), (3, 3)]
    assert state.q["b"] == () and state.gg["s"] == ()


BAD = [
    (lambda: soap(-1e-3), "soap: learning_rate"),
    (lambda: soap(1e-3, b1=1.0), "soap: b1"),
    (lambda: soap(1e-3, b2=-0.1), "soap: b2"),
    (lambda: soap(1e-3, shampoo_beta=1.0), "soap: shampoo_beta"),
    (lambda: soap(1e-3, eps=-1e-8), "soap: eps"),
    (lambda: soap(1e-3, precondition_frequency=0), "soap: precondition_frequency"),
    (lambda: soap(1e-3, precondition_frequency=2.5), "soap: precondition_frequency"),
    (lambda: soap(1e-3, max_precond_dim=0), "soap: max_precond_dim"),
    (lambda: soap(1e-3, weight_decay=-0.1), "soap: weight_decay"),
    (lambda: scale_by_soap(b1=float("nan")), "scale_by_soap: b1"),
    (lambda: shampoo(-1e-3), "shampoo: learning_rate"),
    (lambda: shampoo(1e-3, b1=1.0), "shampoo: b1"),
    (lambda: shampoo(1e-3, b2=1.5), "shampoo: b2"),
    (lambda: shampoo(1e-3, eps=-1.0), "shampoo: eps"),
    (lambda: shampoo(1e-3, precondition_frequency=0), "shampoo: precondition_frequency"),
    (lambda: shampoo(1e-3, block_size=0), "shampoo: block_size"),
    (lambda: shampoo(1e-3, graft_b2=1.0), "shampoo: graft_b2"),
    (lambda: shampoo(1e-3, graft_eps=-1e-8), "shampoo: graft_eps"),
    (lambda: shampoo(1e-3, start_preconditioning_step=0), "shampoo: start_preconditioning_step"),
    (lambda: shampoo(1e-3, weight_decay=-1e-4), "shampoo: weight_decay"),
    (lambda: scale_by_shampoo(b2=-0.5), "scale_by_shampoo: b2"),
]


@pytest.mark.parametrize("make,match", BAD, ids=[m for _, m in BAD])
def test_bad_hyperparameters_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_schedules_integer_and_complex_params_are_refused():
    with pytest.raises(TypeError, match="soap: precondition_frequency"):
        soap(1e-3, precondition_frequency=lambda count: 10)
    with pytest.raises(TypeError, match="scale_by_soap: parameter at"):
        soap(1e-3).init({"w": jnp.ones((2, 2), jnp.int32)})
    with pytest.raises(TypeError, match=r"scale_by_shampoo: parameter at .* is complex"):
        shampoo(1e-3).init({"w": jnp.ones((2, 2), jnp.complex64)})
