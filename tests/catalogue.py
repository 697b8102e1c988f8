"""The shared driver of the catalogue tests (tests/test_catalogue_*.py).

Every family's rows (``(name, jtricks_factory, optax_factory)``) run ``STEPS`` updates
in both libraries inside ONE compiled program per dtype; the checks below compare
trajectories, state layouts (``flax.serialization`` state dicts), bf16 runs,
signatures, learning-rate programs (one trace for two rates, ``vmap`` over rates) and
donated steps. A family's test file calls these and keeps only what is its own.
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
from conftest import FAST_COMPILE, grad_fn, make_params, noise_sequence, trajectory

from jtricks.base import apply_updates

STEPS = 100


def run_rows(rows, dtype_name: str, restore: bool = False):
    """For every row, in one compiled program: both libraries' trajectories and final
    states after STEPS updates; with ``restore``, also one more update by each library
    from optax's final state, jtricks' copy restored out of optax's
    ``flax.serialization`` state dict (a checkpoint crossing libraries)."""
    params = make_params(0, jnp.dtype(dtype_name))
    noise = noise_sequence(params, STEPS + 1)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run_all(params, noise):
        out = {}
        steps = jax.tree.map(lambda n: n[:STEPS], noise)
        for name, ours, theirs in rows:
            a, sa = trajectory(ours(), apply_updates, params, steps)
            b, sb = trajectory(theirs(), optax.apply_updates, params, steps)
            out[name] = (a, b, sa, sb)
            if restore:
                last = jax.tree.map(lambda x: x[-1], b)
                g = grad_fn(last, jax.tree.map(lambda n: n[-1], noise))
                restored = flax.serialization.from_state_dict(
                    ours().init(params), flax.serialization.to_state_dict(sb))
                out[name] += (ours().update(g, restored, last), theirs().update(g, sb, last))
        return out

    return params, noise, run_all(params, noise)


def _run_from(tx, apply, params, state, noise):
    def body(carry, n):
        p, s = carry
        u, s = tx.update(grad_fn(p, n), s, p)
        return (apply(p, u), s), None

    (params, _), _ = jax.lax.scan(body, (params, state), noise)
    return params


def state_layout(state):
    """``flax.serialization.to_state_dict`` of a state, leaves as (shape, dtype)."""
    return jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype).name),
                        flax.serialization.to_state_dict(state))


def paths(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(p) for p, _ in flat], [x for _, x in flat]


def check_fp32_parity(name, ours, theirs):
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for path, a, b in zip(*paths(ours), jax.tree.leaves(theirs)):
        assert a.dtype == jnp.float32 and a.shape[0] == STEPS
        assert not np.allclose(a[-1], a[0]), f"{name}: {path} never moved"
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{name} at {path}")


def check_bf16(name, params, bf16, fp32, initial_state):
    ours, theirs, state, theirs_state = bf16
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert a.dtype == b.dtype == jnp.bfloat16, name
    # The state keeps the dtypes init gave it, and those are optax's.
    assert jax.tree.map(lambda x: x.dtype, state) == jax.tree.map(lambda x: x.dtype,
                                                                  initial_state)
    assert state_layout(state) == state_layout(theirs_state), name
    # Judged against the fp32 trajectory: no further from it than optax's bf16 run,
    # give or take 2% of the parameters' scale (as test_parity_optax.py judges).
    scale = max(float(jnp.max(jnp.abs(p.astype(jnp.float32)))) for p in jax.tree.leaves(params))
    for path, a, b, r in zip(*paths(ours), jax.tree.leaves(theirs), jax.tree.leaves(fp32)):
        a, b, r = (np.asarray(x, np.float32) for x in (a, b, r))
        assert np.all(np.isfinite(a)), f"{name} at {path}"
        assert np.max(np.abs(a - r)) <= np.max(np.abs(b - r)) + 0.02 * scale, f"{name} {path}"


def signature_rows(ours, theirs):
    """``(name, kind, default)`` per parameter, and jtricks' extras (keyword-only, last)."""
    def rows(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    a, b = rows(ours), rows(theirs)
    extra = a[len(b):]
    assert all(kind is inspect.Parameter.KEYWORD_ONLY for _, kind, _ in extra), extra
    return a[:len(b)], b


def lr_programs(factories, params, noise):
    """Runs every ``factory(lr)`` for two rates through one jitted step that takes the
    transforms as an argument (it must trace once), then the same through ``vmap``
    over the stacked rates."""

    def body(txs, params, noise):
        return {name: _run_from(tx, apply_updates, params, tx.init(params), noise)
                for name, tx in txs.items()}

    chex.clear_trace_counter()  # chex keys its counter on the caller's stack and source
    run = jax.jit(chex.assert_max_traces(body, n=1), compiler_options=FAST_COMPILE)
    rates = (0.02, 0.005)
    separate = [run({n: f(lr) for n, f in factories.items()}, params, noise) for lr in rates]
    sweep = jax.jit(jax.vmap(lambda lr: body({n: f(lr) for n, f in factories.items()},
                                             params, noise)), compiler_options=FAST_COMPILE)
    return separate, sweep(jnp.asarray(rates))


def donated_two_steps(rows, params, noise):
    """Two steps of every row in one jitted program that donates params and state."""
    txs = {name: ours() for name, ours, _ in rows}

    @functools.partial(jax.jit, donate_argnums=(0, 1), compiler_options=FAST_COMPILE)
    def step(ps, states, n):
        out_p, out_s = {}, {}
        for name, tx in txs.items():
            u, out_s[name] = tx.update(grad_fn(ps[name], n), states[name], ps[name])
            out_p[name] = apply_updates(ps[name], u)
        return out_p, out_s

    ps = {name: jax.tree.map(jnp.copy, params) for name in txs}
    states = {name: tx.init(params) for name, tx in txs.items()}
    for name, s in states.items():
        buffers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(s)]
        assert len(set(buffers)) == len(buffers), f"{name}: two state fields share a buffer"
    for k in range(2):
        ps, states = step(ps, states, jax.tree.map(lambda x, k=k: x[k], noise))
    return ps


# --- the tests every family runs on its rows ----------------------------------------------

def family_tests(rows, subset, lr_factories, *, vmap_atol=1e-5):
    """The table checks of one family as pytest functions, for its module to take in
    with ``globals().update(family_tests(ROWS, SUBSET, LR_FACTORIES))``: optax's state
    layout at init (fp32 and bf16); fp32 parity at every step with optax's state kept;
    optax's state restored into jtricks continuing with optax's numbers; bf16 kept (the
    rows of ``subset``); one compilation for two rates and ``vmap`` over rates (the
    factories ``lr -> transform``); ``eval_shape`` of ``init``; a donated step (``subset``).
    Also ``results(dtype_name)``, the family's cached run, for its own further tests."""
    import pytest

    ids = [name for name, _, _ in rows]
    few = [r for r in rows if r[0] in subset]

    @functools.cache
    def results(dtype_name: str):
        chosen = rows if dtype_name == "float32" else few
        return run_rows(chosen, dtype_name, restore=dtype_name == "float32")

    @pytest.mark.parametrize("row", rows, ids=ids)
    def test_state_layout_is_optax_at_init(row):
        name, ours, theirs = row
        for dtype in (jnp.float32, jnp.bfloat16):
            params = make_params(0, dtype)
            assert (state_layout(jax.eval_shape(ours().init, params))
                    == state_layout(jax.eval_shape(theirs().init, params))), (name, dtype)

    @pytest.mark.parametrize("row", rows, ids=ids)
    def test_fp32_equals_optax_and_keeps_its_state(row):
        ours, theirs, state, theirs_state = results("float32")[2][row[0]][:4]
        check_fp32_parity(row[0], ours, theirs)
        assert state_layout(state) == state_layout(theirs_state)

    @pytest.mark.parametrize("row", rows, ids=ids)
    def test_optax_state_restores_and_continues(row):
        (ours, state), (theirs, theirs_state) = results("float32")[2][row[0]][4:]
        assert state_layout(state) == state_layout(theirs_state)
        for path, a, b in zip(*paths((ours, state)), jax.tree.leaves((theirs, theirs_state))):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{row[0]} at {path}")

    @pytest.mark.parametrize("row", few, ids=[r[0] for r in few])
    def test_bf16_stays_bf16_and_close_to_optax(row):
        params, _, out = results("bfloat16")
        initial = jax.eval_shape(row[1]().init, params)
        check_bf16(row[0], params, out[row[0]], results("float32")[2][row[0]][0], initial)

    def test_one_compilation_for_two_rates_and_vmap_over_rates():
        params = make_params(3)
        separate, swept = lr_programs(lr_factories, params, noise_sequence(params, 8))
        for name in lr_factories:
            a, b = separate[0][name], separate[1][name]
            assert not all(np.allclose(x, y)
                           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), name
            for i, run in enumerate(separate):
                for x, y in zip(jax.tree.leaves(swept[name]), jax.tree.leaves(run[name])):
                    # The same numbers batched: XLA may order a few roundings differently.
                    np.testing.assert_allclose(x[i], y, rtol=1e-5, atol=vmap_atol,
                                               err_msg=name)

    @pytest.mark.parametrize("row", rows, ids=ids)
    def test_eval_shape_of_init(row):
        params = make_params(0)
        tx = row[1]()
        shapes, real = jax.eval_shape(tx.init, params), tx.init(params)
        assert jax.tree.structure(shapes) == jax.tree.structure(real)
        for s, x in zip(jax.tree.leaves(shapes), jax.tree.leaves(real)):
            assert (s.shape, s.dtype) == (x.shape, x.dtype)

    def test_donated_steps_give_the_trajectory():
        params, noise, out = results("float32")
        ps = donated_two_steps(few, params, noise)
        for name, _, _ in few:
            for x, traj in zip(jax.tree.leaves(ps[name]), jax.tree.leaves(out[name][0])):
                np.testing.assert_allclose(x, traj[1], rtol=1e-6, atol=1e-7, err_msg=name)

    return {f.__name__: f for f in (
        results, test_state_layout_is_optax_at_init, test_fp32_equals_optax_and_keeps_its_state,
        test_optax_state_restores_and_continues, test_bf16_stays_bf16_and_close_to_optax,
        test_one_compilation_for_two_rates_and_vmap_over_rates, test_eval_shape_of_init,
        test_donated_steps_give_the_trajectory)}
