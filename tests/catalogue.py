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
