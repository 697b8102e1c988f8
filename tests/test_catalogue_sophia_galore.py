"""Sophia and GaLore against optax 0.2.8 (``optax.contrib``): signatures, states,
numbers, JAX transformations.

Sophia's default Hessian estimator needs the objective in ``update`` (``obj_fn``), so
this file drives the rows of ``cases_sophia_galore.ROWS`` with a small local copy of
the shared driver that passes ``obj_fn=conftest.loss`` to every update (GaLore ignores
it), still compiling all rows in one program per dtype. The checks are the
catalogue's: optax's signature and state layout, fp32 parity at every step of 100,
optax's state restored into jtricks continuing with optax's numbers, bf16 kept, one
compilation for two learning rates, ``vmap`` over stacked rates, ``eval_shape`` of
``init``, a donated step, and bad hyperparameters refused with the argument's name.

GaLore refreshes its projectors with an SVD. Both libraries hand the same fp32 matrix
to the same LAPACK routine (and project with the same products), so the table's
tolerance (rtol 1e-5, atol 1e-6) holds unloosened: the trajectories agree to the last
bit on this tree. A looser bound would be needed only if the SVD inputs differed by
rounding, since nearly equal singular values make the truncated subspace sensitive.
"""

from __future__ import annotations

import functools
import inspect

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cases_adam_variants import kernels_only
from cases_sophia_galore import OPTAX_DIMS, ROWS
from catalogue import (
    STEPS,
    check_bf16,
    check_fp32_parity,
    paths,
    signature_rows,
    state_layout,
)
from conftest import FAST_COMPILE, grad_fn, loss, make_params, noise_sequence
from optax.contrib import _sophia as optax_sophia

from jtricks.base import apply_updates
from jtricks.optimizers.galore import galore
from jtricks.optimizers.sophia import sophia
from jtricks.transforms import galore as galore_blocks
from jtricks.transforms import sophia as sophia_blocks

IDS = [name for name, _, _ in ROWS]
# Compile time is the budget (a sophia row compiles a Hessian-vector product, a galore
# row an SVD per matrix): the restore and donation checks take one row of each
# optimizer with jtricks' own estimator / base optimizer, the bf16 run the rows with
# fp32 moments under bf16 params.
RESTORED = {"sophia_named", "galore_dims_schedule_mask"}
BF16 = {"sophia_unclipped_fp32_mu_mask", "galore_tree_dims_lion_fp32_mu"}
DONATED = {"sophia_named", "galore_dims_schedule_mask"}


def _step(tx, p, s, n):
    return tx.update(grad_fn(p, n), s, p, obj_fn=loss)


def _trajectory(tx, apply, params, noise):
    def body(carry, n):
        p, s = carry
        u, s = _step(tx, p, s, n)
        p = apply(p, u)
        return (p, s), p

    (_, state), traj = jax.lax.scan(body, (params, tx.init(params)), noise)
    return traj, state


@functools.cache
def results(dtype_name: str):
    """Every row's trajectories and final states in one program (catalogue.run_rows
    with ``obj_fn``); in fp32 also one update from optax's final state restored into
    jtricks through its ``flax.serialization`` state dict."""
    rows = ROWS if dtype_name == "float32" else [r for r in ROWS if r[0] in BF16]
    params = make_params(0, jnp.dtype(dtype_name))
    noise = noise_sequence(params, STEPS + 1)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run_all(params, noise):
        out = {}
        steps = jax.tree.map(lambda n: n[:STEPS], noise)
        last_noise = jax.tree.map(lambda n: n[-1], noise)
        for name, ours, theirs in rows:
            a, sa = _trajectory(ours(), apply_updates, params, steps)
            b, sb = _trajectory(theirs(), optax.apply_updates, params, steps)
            out[name] = (a, b, sa, sb)
            if dtype_name == "float32" and name in RESTORED:
                last = jax.tree.map(lambda x: x[-1], b)
                restored = flax.serialization.from_state_dict(
                    ours().init(params), flax.serialization.to_state_dict(sb))
                out[name] += (_step(ours(), last, restored, last_noise),
                              _step(theirs(), last, sb, last_noise))
        return out

    return params, noise, run_all(params, noise)


def _default_free(fn):
    """The signature rows with the estimator's default replaced by its description."""
    rows = []
    for name, kind, default in fn:
        if name == "hessian_diagonal_fn":
            default = "hutchinson(random_seed=None)"
        rows.append((name, kind, default))
    return rows


PAIRS = [(galore, optax.contrib.galore),
         (galore_blocks.scale_by_galore, optax.contrib.scale_by_galore),
         (sophia, optax.contrib.sophia),
         (sophia_blocks.scale_by_sophia, optax_sophia.scale_by_sophia),
         (sophia_blocks.hutchinson_estimator_diag_hessian,
          optax.contrib.hutchinson_estimator_diag_hessian)]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_signature_is_optax(ours, theirs):
    a, b = signature_rows(ours, theirs)
    assert _default_free(a) == _default_free(b)
    # optax's default estimator is an optax object; ours is jtricks' Hutchinson
    # estimator with the same (default) seed, hence the same numbers.
    default = inspect.signature(ours).parameters.get("hessian_diagonal_fn")
    if default is not None:
        assert default.default == sophia_blocks.hutchinson_estimator_diag_hessian()


def test_named_tuples_are_optax():
    for ours, theirs in [(galore_blocks.GaLoreState, optax.contrib.GaLoreState),
                         (galore_blocks.GaLoreDimensionNumbers, OPTAX_DIMS),
                         (sophia_blocks.SophiaState, optax.contrib.SophiaState),
                         (sophia_blocks.HutchinsonState, optax.contrib.HutchinsonState)]:
        assert ours.__name__ == theirs.__name__ and ours._fields == theirs._fields
    assert galore_blocks.GaLoreDimensionNumbers() == tuple(OPTAX_DIMS())


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_state_layout_is_optax_at_init(row):
    name, ours, theirs = row
    for dtype in (jnp.float32, jnp.bfloat16):
        params = make_params(0, dtype)
        assert (state_layout(jax.eval_shape(ours().init, params))
                == state_layout(jax.eval_shape(theirs().init, params))), (name, dtype)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_fp32_equals_optax_and_keeps_its_state(row):
    ours, theirs, state, theirs_state = results("float32")[2][row[0]][:4]
    check_fp32_parity(row[0], ours, theirs)
    assert state_layout(state) == state_layout(theirs_state)
    for path, a, b in zip(*paths(state), jax.tree.leaves(theirs_state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{row[0]} at {path}")


@pytest.mark.parametrize("row", [r for r in ROWS if r[0] in RESTORED],
                         ids=[n for n in IDS if n in RESTORED])
def test_optax_state_restores_and_continues(row):
    (ours, state), (theirs, theirs_state) = results("float32")[2][row[0]][4:]
    assert state_layout(state) == state_layout(theirs_state)
    for path, a, b in zip(*paths((ours, state)), jax.tree.leaves((theirs, theirs_state))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{row[0]} at {path}")


@pytest.mark.parametrize("row", [r for r in ROWS if r[0] in BF16],
                         ids=[n for n in IDS if n in BF16])
def test_bf16_stays_bf16_and_close_to_optax(row):
    params, _, out = results("bfloat16")
    initial = jax.eval_shape(row[1]().init, params)
    check_bf16(row[0], params, out[row[0]], results("float32")[2][row[0]][0], initial)


LR_FACTORIES = {
    "sophia": lambda lr: sophia(lr, b1=0.9, gamma=1.0, eps=0.3, update_interval=2,
                                weight_decay=0.1, weight_decay_mask=kernels_only),
    "galore": lambda lr: galore(lr, rank=2, update_proj_gap=3, scale=0.5, weight_decay=0.1),
}


def _run_from(tx, params, noise):
    def body(carry, n):
        p, s = carry
        u, s = _step(tx, p, s, n)
        return (apply_updates(p, u), s), None

    return jax.lax.scan(body, (params, tx.init(params)), noise)[0][0]


def test_one_compilation_for_two_rates_and_vmap_over_rates():
    params = make_params(3)
    noise = noise_sequence(params, 8)
    rates = jnp.asarray((0.02, 0.005))

    def body(txs, params, noise):
        return {name: _run_from(tx, params, noise) for name, tx in txs.items()}

    def both(txs, params, noise):
        # One program: the run with the transforms given as an argument, and the same
        # transforms rebuilt from each stacked rate under vmap.
        swept = jax.vmap(lambda lr: body({n: f(lr) for n, f in LR_FACTORIES.items()},
                                         params, noise))(rates)
        return body(txs, params, noise), swept

    chex.clear_trace_counter()
    run = jax.jit(chex.assert_max_traces(both, n=1), compiler_options=FAST_COMPILE)
    outs = [run({n: f(lr) for n, f in LR_FACTORIES.items()}, params, noise)
            for lr in (0.02, 0.005)]
    separate, swept = [o[0] for o in outs], outs[0][1]
    for name in LR_FACTORIES:
        a, b = separate[0][name], separate[1][name]
        assert not all(np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
        for i, out in enumerate(separate):
            for x, y in zip(jax.tree.leaves(swept[name]), jax.tree.leaves(out[name])):
                np.testing.assert_allclose(x[i], y, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_eval_shape_of_init(row):
    params = make_params(0)
    tx = row[1]()
    shapes = jax.eval_shape(tx.init, params)
    real = tx.init(params)
    assert jax.tree.structure(shapes) == jax.tree.structure(real)
    for s, x in zip(jax.tree.leaves(shapes), jax.tree.leaves(real)):
        assert (s.shape, s.dtype) == (x.shape, x.dtype)


def test_donated_steps_give_the_trajectory():
    params, noise, out = results("float32")
    txs = {name: ours() for name, ours, _ in ROWS if name in DONATED}

    @functools.partial(jax.jit, donate_argnums=(0, 1), compiler_options=FAST_COMPILE)
    def step(ps, states, n):
        out_p, out_s = {}, {}
        for name, tx in txs.items():
            u, out_s[name] = _step(tx, ps[name], states[name], n)
            out_p[name] = apply_updates(ps[name], u)
        return out_p, out_s

    ps = {name: jax.tree.map(jnp.copy, params) for name in txs}
    states = {name: tx.init(params) for name, tx in txs.items()}
    for name, s in states.items():
        buffers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(s)]
        assert len(set(buffers)) == len(buffers), f"{name}: two state fields share a buffer"
    for k in range(2):
        ps, states = step(ps, states, jax.tree.map(lambda x, k=k: x[k], noise))
    for name in txs:
        for x, traj in zip(jax.tree.leaves(ps[name]), jax.tree.leaves(out[name][0])):
            np.testing.assert_allclose(x, traj[1], rtol=1e-6, atol=1e-7, err_msg=name)


def _coupled_loss(params):
    """A non-separable objective: its Hessian has off-diagonal terms, so the
    Hutchinson estimate depends on the probe (and the probe on the key)."""
    flat = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(params)])
    mix = jnp.sin(jnp.arange(flat.size * flat.size, dtype=jnp.float32)).reshape(
        flat.size, flat.size)
    return jnp.sum((mix @ flat) ** 2) + jnp.sum(jnp.cos(flat))


def test_hutchinson_draws_optax_probes():
    # The default seed's keys are compared by the sophia_defaults row's state.
    keys = {"raw": jax.random.PRNGKey(4), "typed": jax.random.key(4)}
    params = {"a": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones((2,))}
    pairs = {name: (sophia_blocks.hutchinson_estimator_diag_hessian(key),
                    optax.contrib.hutchinson_estimator_diag_hessian(key))
             for name, key in keys.items()}

    @jax.jit
    def two_calls(params):
        out = {}
        for name, pair in pairs.items():
            for lib, tx in zip(("ours", "theirs"), pair):
                s = tx.init(params)
                d1, s = tx.update(params, s, params, obj_fn=_coupled_loss)
                d2, s = tx.update(params, s, params, obj_fn=_coupled_loss)
                out[name, lib] = (d1, d2, jax.random.key_data(s.key))
        return out

    out = two_calls(params)
    for name in keys:
        (a1, a2, ka), (b1, b2, kb) = out[name, "ours"], out[name, "theirs"]
        assert not np.allclose(a1["a"], a2["a"]), name  # a fresh probe each call
        for x, y in zip(jax.tree.leaves((a1, a2)), jax.tree.leaves((b1, b2))):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(ka, kb, err_msg=name)


def test_hutchinson_needs_params_and_objective():
    tx = sophia_blocks.hutchinson_estimator_diag_hessian(3)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    np.testing.assert_array_equal(state.key, jax.random.PRNGKey(3))
    with pytest.raises(ValueError, match=r"hutchinson_estimator_diag_hessian\.update: obj_fn"):
        tx.update(params, state, params)
    with pytest.raises(ValueError, match=r"hutchinson_estimator_diag_hessian\.update: params"):
        tx.update(params, state, obj_fn=loss)
    with pytest.raises(ValueError, match=r"scale_by_sophia\.update: params is None"):
        sophia(0.1).update(params, sophia(0.1).init(params), obj_fn=loss)
    with pytest.raises(TypeError, match="hutchinson_estimator_diag_hessian: random_seed"):
        sophia_blocks.hutchinson_estimator_diag_hessian("seed")


def test_sophia_verbose_prints_optax_win_rate(capfd):
    params = {"w": jnp.asarray([0.1, -3.0, 0.2, 5.0])}
    kwargs = {"b2": 0.0, "gamma": 1.0, "eps": 0.3, "clip_threshold": 2.0, "verbose": True,
              "print_win_rate_every_n_steps": 2}
    printed = []
    for tx in (sophia(0.1, **kwargs), optax.contrib.sophia(0.1, **kwargs)):
        step = jax.jit(lambda s, tx=tx: tx.update(jax.grad(loss)(params), s, params,
                                                  obj_fn=loss)[1])
        state = tx.init(params)
        for _ in range(3):
            state = step(state)
        jax.effects_barrier()
        printed.append(capfd.readouterr().out)
    # One print, at the second update, where h (refreshed at the first) keeps one of
    # the four coordinates, g / max(h, eps) = -3.8 / 2.1, inside the clip.
    assert printed[0] == printed[1] == "Sophia optimizer win rate: 0.25\n", printed


def test_galore_single_spec_and_empty_tree_are_optax():
    params = {"a": jnp.asarray(np.random.default_rng(0).standard_normal((4, 2, 3)),
                               jnp.float32), "b": jnp.ones((3,))}
    spec = (0, (1, 2))
    ours = galore(0.05, rank=2, update_proj_gap=2,
                  weight_dimension_numbers=galore_blocks.GaLoreDimensionNumbers(*spec))
    theirs = optax.contrib.galore(0.05, rank=2, update_proj_gap=2,
                                  weight_dimension_numbers=OPTAX_DIMS(*spec))

    @jax.jit
    def three_steps(params):
        out = []
        for tx, apply in ((ours, apply_updates), (theirs, optax.apply_updates)):
            p, s = params, tx.init(params)
            for _ in range(3):
                u, s = tx.update(jax.grad(loss)(p), s, p)
                p = apply(p, u)
            out.append((p, s))
        return out

    (pa, sa), (pb, sb) = three_steps(params)
    assert sa[0].projector["a"].shape == (6, 2) and sa[0].projector["b"].shape == (0, 0)
    assert state_layout(sa) == state_layout(sb)
    for x, y in zip(jax.tree.leaves((pa, sa)), jax.tree.leaves((pb, sb))):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert state_layout(ours.init({})) == state_layout(theirs.init({}))


BAD = [
    (lambda: sophia(-1e-3), ValueError, "sophia: learning_rate"),
    (lambda: sophia(1e-3, b1=1.0), ValueError, "sophia: b1"),
    (lambda: sophia(1e-3, b2=-0.1), ValueError, "sophia: b2"),
    (lambda: sophia(1e-3, eps=-1e-8), ValueError, "sophia: eps"),
    (lambda: sophia(1e-3, weight_decay=-1e-4), ValueError, "sophia: weight_decay"),
    (lambda: sophia(1e-3, gamma=-0.01), ValueError, "sophia: gamma"),
    (lambda: sophia(1e-3, clip_threshold=0.0), ValueError, "sophia: clip_threshold"),
    (lambda: sophia(1e-3, update_interval=0), ValueError, "sophia: update_interval"),
    (lambda: sophia(1e-3, update_interval=2.5), ValueError, "sophia: update_interval"),
    (lambda: sophia(1e-3, update_interval=lambda c: 10), TypeError,
     "sophia: update_interval"),
    (lambda: sophia(1e-3, verbose=True), ValueError, "sophia: print_win_rate_every_n_steps"),
    (lambda: sophia(1e-3, print_win_rate_every_n_steps=-1), ValueError,
     "sophia: print_win_rate_every_n_steps"),
    (lambda: sophia(1e-3, hessian_diagonal_fn=object()), TypeError, "sophia: expected"),
    (lambda: sophia_blocks.scale_by_sophia(b1=1.5), ValueError, "scale_by_sophia: b1"),
    (lambda: galore(-1e-3), ValueError, "galore: learning_rate"),
    (lambda: galore(1e-3, rank=0), ValueError, "galore: rank"),
    (lambda: galore(1e-3, rank=2.0), TypeError, "galore: rank"),
    (lambda: galore(1e-3, update_proj_gap=0), ValueError, "galore: update_proj_gap"),
    (lambda: galore(1e-3, scale=-1.0), ValueError, "galore: scale"),
    (lambda: galore(1e-3, weight_decay=-0.1), ValueError, "galore: weight_decay"),
    (lambda: galore_blocks.scale_by_galore(rank=-3), ValueError, "scale_by_galore: rank"),
    (lambda: galore_blocks.scale_by_galore(update_proj_gap=1.5), ValueError,
     "scale_by_galore: update_proj_gap"),
    (lambda: galore(1e-3, weight_dimension_numbers=galore_blocks.GaLoreDimensionNumbers())
     .init(make_params()), ValueError, r"scale_by_galore at \['blocks'\]\[0\]\['kernel'\]"),
    (lambda: galore(1e-3, weight_dimension_numbers={"w": galore_blocks.GaLoreDimensionNumbers(),
                                                   "b": galore_blocks.GaLoreDimensionNumbers()})
     .init({"w": jnp.ones((2, 2)), "b": jnp.ones(2)}), ValueError,
     r"scale_by_galore at \['b'\]: GaLore projects matrices"),
    (lambda: galore(1e-3, weight_dimension_numbers=[None]).init({"w": jnp.ones((2, 2))}),
     ValueError, "weight_dimension_numbers must be shaped like the params"),
    (lambda: galore(1e-3).init({"w": jnp.ones((2, 2), jnp.int32)}), TypeError,
     "scale_by_galore: parameter at"),
    (lambda: sophia(1e-3).init({"w": jnp.arange(3)}), TypeError, "scale_by_sophia: parameter at"),
]


@pytest.mark.parametrize("make,error,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_is_refused(make, error, match):
    with pytest.raises(error, match=match):
        make()
