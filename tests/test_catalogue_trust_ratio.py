"""The layer-wise optimizers against optax 0.2.8: signatures, states, numbers, JAX.

Every row of ``cases_trust_ratio.ROWS`` runs 100 steps in both libraries inside ONE
compiled program per dtype. Checked for every function: the signature is optax's;
the state has optax's ``to_state_dict`` keys, shapes and dtypes (at init in fp32 and
bf16, and after 100 steps), and optax's state restored into jtricks continues with
optax's numbers; fp32 parity at every step (the trajectory must move); bf16 stays
bf16 and is no further from the fp32 run than optax's bf16 run; one compilation for
two learning rates; ``vmap`` over a stacked rate; ``eval_shape`` of ``init``; two
donated steps; bad hyperparameters refused with the argument's name. The driver
below is shared with test_catalogue_classic.py.
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
from cases_trust_ratio import ROWS, SOME_LEAVES, kernels_only, lr_schedule
from conftest import CASES, FAST_COMPILE, grad_fn, make_params, noise_sequence, trajectory

from jtricks.base import apply_updates, chain
from jtricks.optimizers import trust_ratio as opt
from jtricks.transforms import trust_ratio as blocks
from jtricks.transforms.scaling import scale_by_learning_rate

STEPS = 100
MORE = 10  # steps run on from a state restored out of optax's state dict


# --- the driver --------------------------------------------------------------------------

def run_rows(rows, dtype_name: str, restore=()):
    """``(params, runs, restored)``, all from one compiled program.

    ``runs[name] = (ours, theirs, our_state, their_state)``: both libraries'
    trajectories and final states for every row. For the rows named in ``restore``,
    optax's final state is restored into a jtricks state through
    ``flax.serialization`` and both libraries run MORE steps on from it:
    ``restored[name] = (ours, theirs)`` (one row per kind of state is enough).
    """
    params = make_params(0, jnp.dtype(dtype_name))
    noise = noise_sequence(params, STEPS)
    more = noise_sequence(params, MORE, seed=7)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run_all(params, noise, more):
        out, restored = {}, {}
        for name, ours, theirs in rows:
            a, sa = trajectory(ours(), apply_updates, params, noise)
            b, sb = trajectory(theirs(), optax.apply_updates, params, noise)
            out[name] = (a, b, sa, sb)
            if name in restore:
                last = jax.tree.map(lambda x: x[-1], b)
                state = flax.serialization.from_state_dict(
                    ours().init(params), flax.serialization.to_state_dict(sb))
                restored[name] = (_steps(ours(), apply_updates, last, state, more),
                                  _steps(theirs(), optax.apply_updates, last, sb, more))
        return out, restored

    out, restored = run_all(params, noise, more)
    return params, out, restored


def _steps(tx, apply, params, state, noise):
    def body(carry, n):
        p, s = carry
        u, s = tx.update(grad_fn(p, n), s, p)
        return (apply(p, u), s), None

    return jax.lax.scan(body, (params, state), noise)[0][0]


def state_layout(state):
    """``to_state_dict`` of a state with each leaf as ``(shape, dtype)``."""
    return jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)),
                        flax.serialization.to_state_dict(state))


def paths(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(p) for p, _ in flat], [x for _, x in flat]


def check_fp32(name, run):
    ours, theirs, state, theirs_state = run
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for path, a, b in zip(*paths(ours), jax.tree.leaves(theirs)):
        assert a.dtype == jnp.float32 and a.shape[0] == STEPS
        assert not np.allclose(a[-1], a[0]), f"{name}: {path} never moved"
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{name} at {path}")
    assert state_layout(state) == state_layout(theirs_state), name


def check_bf16(name, params, run, fp32, initial):
    ours, theirs, state, _ = run
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert a.dtype == b.dtype == jnp.bfloat16, name
    # The state keeps the dtypes init gave it (and init's are optax's, checked apart).
    assert state_layout(state) == state_layout(initial), name
    scale = max(float(jnp.max(jnp.abs(p.astype(jnp.float32)))) for p in jax.tree.leaves(params))
    for path, a, b, r in zip(*paths(ours), jax.tree.leaves(theirs), jax.tree.leaves(fp32)):
        a, b, r = (np.asarray(x, np.float32) for x in (a, b, r))
        assert np.all(np.isfinite(a)), f"{name} at {path}"
        assert np.max(np.abs(a - r)) <= np.max(np.abs(b - r)) + 0.02 * scale, f"{name} {path}"


def check_init_layouts(name, ours, theirs):
    for dtype in (jnp.float32, jnp.bfloat16):
        params = make_params(0, dtype)
        assert (state_layout(jax.eval_shape(ours().init, params))
                == state_layout(jax.eval_shape(theirs().init, params))), (name, dtype)


def check_signature(ours, theirs):
    """Names, kinds and defaults equal optax's; jtricks' extras keyword-only, at the end."""
    def rows(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    a, b = rows(ours), rows(theirs)
    assert all(kind is inspect.Parameter.KEYWORD_ONLY for _, kind, _ in a[len(b):])
    assert a[:len(b)] == b


def check_rates(factories):
    """Every ``factory(lr)`` for two rates through one jitted step taking the transforms
    as an argument (it must trace once), then through ``vmap`` over the stacked rates."""
    params = make_params(3)
    noise = noise_sequence(params, 8)

    def body(txs, params, noise):
        return {n: _steps(tx, apply_updates, params, tx.init(params), noise)
                for n, tx in txs.items()}

    chex.clear_trace_counter()  # chex counts traces per function, across callers
    run = jax.jit(chex.assert_max_traces(body, n=1), compiler_options=FAST_COMPILE)
    rates = (0.02, 0.005)
    separate = [run({n: f(lr) for n, f in factories.items()}, params, noise) for lr in rates]
    sweep = jax.jit(jax.vmap(lambda lr: body({n: f(lr) for n, f in factories.items()},
                                             params, noise)), compiler_options=FAST_COMPILE)
    swept = sweep(jnp.asarray(rates))
    for name in factories:
        a, b = (jax.tree.leaves(s[name]) for s in separate)
        assert not all(np.allclose(x, y) for x, y in zip(a, b)), f"{name}: rate unused"
        for i, run_i in enumerate(separate):
            for x, y in zip(jax.tree.leaves(swept[name]), jax.tree.leaves(run_i[name])):
                np.testing.assert_allclose(x[i], y, rtol=1e-5, atol=1e-6, err_msg=name)


def _buffers(state):
    leaves = [x for x in jax.tree.leaves(state)
              if not jnp.issubdtype(x.dtype, jax.dtypes.prng_key)]
    return [x.unsafe_buffer_pointer() for x in leaves]


def check_donation(rows, fp32_runs):
    """Two steps of every row in one jitted program donating params and state equal
    the first two steps of the trajectory; no state holds one buffer twice."""
    params, out, _ = fp32_runs
    noise = noise_sequence(params, STEPS)
    txs = {name: ours() for name, ours, _ in rows}

    @functools.partial(jax.jit, donate_argnums=(0, 1), compiler_options=FAST_COMPILE)
    def step(ps, states, n):
        new_p, new_s = {}, {}
        for name, tx in txs.items():
            u, new_s[name] = tx.update(grad_fn(ps[name], n), states[name], ps[name])
            new_p[name] = apply_updates(ps[name], u)
        return new_p, new_s

    ps = {name: jax.tree.map(jnp.copy, params) for name in txs}
    states = {name: tx.init(ps[name]) for name, tx in txs.items()}
    for name in txs:
        pointers = _buffers(states[name]) + _buffers(ps[name])
        assert len(set(pointers)) == len(pointers), f"{name}: one buffer held twice"
    for k in range(2):
        ps, states = step(ps, states, jax.tree.map(lambda x, k=k: x[k], noise))
    for name in txs:
        for x, traj in zip(jax.tree.leaves(ps[name]), jax.tree.leaves(out[name][0])):
            np.testing.assert_allclose(x, traj[1], rtol=1e-6, atol=1e-7, err_msg=name)


def check_eval_shape(tx):
    params = make_params(0)
    shapes, real = jax.eval_shape(tx.init, params), tx.init(params)
    assert jax.tree.structure(shapes) == jax.tree.structure(real)
    for s, x in zip(jax.tree.leaves(shapes), jax.tree.leaves(real)):
        assert (s.shape, s.dtype) == (x.shape, x.dtype)


# --- this family ---------------------------------------------------------------------------

def not_in_table(rows):
    """The rows the shared table (conftest.CASES, which runs parity, bf16 and state
    checks over every family it lists) does not run yet: once the table picks up
    this family, this file keeps only the checks the table does not make."""
    table = {name for name, _, _ in CASES}
    return [row for row in rows if row[0] not in table]


# One row per kind of state: restored from optax's state dict and run on.
RESTORE = ("lamb_named", "lamb_scheduled_decay", "lars_nesterov_masked", "fromage_schedule")

ROWS_HERE = not_in_table(ROWS)


@functools.cache
def results(dtype_name: str):
    return run_rows(ROWS_HERE, dtype_name, RESTORE if dtype_name == "float32" else ())


IDS = [name for name, _, _ in ROWS_HERE]

PAIRS = [(getattr(m, n), getattr(optax, n)) for m in (opt, blocks) for n in m.__all__
         if n[0].islower()]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_signature_is_optax(ours, theirs):
    check_signature(ours, theirs)


@pytest.mark.parametrize("row", ROWS_HERE, ids=IDS)
def test_state_layout_is_optax_at_init(row):
    check_init_layouts(*row)


@pytest.mark.parametrize("row", ROWS_HERE, ids=IDS)
def test_fp32_equals_optax_and_keeps_its_state(row):
    check_fp32(row[0], results("float32")[1][row[0]])


def test_optax_state_restores_and_continues():
    restored = results("float32")[2]
    assert set(restored) == set(RESTORE) & set(IDS)
    for name, (ours, theirs) in restored.items():
        for path, a, b in zip(*paths(ours), jax.tree.leaves(theirs)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{name} {path}")


@pytest.mark.parametrize("row", ROWS_HERE, ids=IDS)
def test_bf16_stays_bf16_and_close_to_optax(row):
    params, out, _ = results("bfloat16")
    check_bf16(row[0], params, out[row[0]], results("float32")[1][row[0]][0],
               jax.eval_shape(row[1]().init, params))


def test_one_compilation_for_two_rates_and_vmap_over_rates():
    check_rates({
        "lamb": lambda lr: opt.lamb(lr, weight_decay=0.1, mask=kernels_only),
        "lars": lambda lr: opt.lars(lr, weight_decay=0.01, trust_coefficient=0.1),
        "fromage": opt.fromage,
        "scale_by_trust_ratio": lambda lr: chain(blocks.scale_by_trust_ratio(),
                                                 scale_by_learning_rate(lr)),
        "scale_by_param_block_norm": lambda lr: chain(blocks.scale_by_param_block_norm(),
                                                      scale_by_learning_rate(lr)),
        "scale_by_param_block_rms": lambda lr: chain(blocks.scale_by_param_block_rms(),
                                                     scale_by_learning_rate(lr)),
    })


@pytest.mark.parametrize("row", ROWS_HERE, ids=IDS)
def test_eval_shape_of_init(row):
    check_eval_shape(row[1]())


def test_donated_steps_give_the_trajectory():
    check_donation(ROWS_HERE, results("float32"))


def test_states_nest_as_optax_for_more_configurations():
    params = make_params(0)
    for ours, theirs in [
        (opt.lamb(0.1, weight_decay=lr_schedule), optax.lamb(0.1, weight_decay=lr_schedule)),
        (opt.lamb(lr_schedule, mask=SOME_LEAVES), optax.lamb(lr_schedule, mask=SOME_LEAVES)),
        (opt.lars(0.1, weight_decay_mask=None), optax.lars(0.1, weight_decay_mask=None)),
        (opt.lars(0.1, weight_decay=lr_schedule), optax.lars(0.1, weight_decay=lr_schedule)),
        (opt.fromage(jnp.float32(0.1)), optax.fromage(jnp.float32(0.1))),
    ]:
        assert state_layout(ours.init(params)) == state_layout(theirs.init(params))


def test_updates_need_params():
    params = make_params(0)
    for tx in (blocks.scale_by_trust_ratio(), blocks.scale_by_param_block_norm(),
               blocks.scale_by_param_block_rms()):
        with pytest.raises(ValueError, match="params is None"):
            tx.update(params, tx.init(params))


BAD = [
    (lambda: opt.lamb(-1e-3), "lamb: learning_rate"),
    (lambda: opt.lamb(1e-3, b1=1.0), "lamb: b1"),
    (lambda: opt.lamb(1e-3, b2=-0.1), "lamb: b2"),
    (lambda: opt.lamb(1e-3, eps=-1.0), "lamb: eps"),
    (lambda: opt.lamb(1e-3, eps_root=float("nan")), "lamb: eps_root"),
    (lambda: opt.lamb(1e-3, weight_decay=-0.1), "lamb: weight_decay"),
    (lambda: opt.lars(-1e-3), "lars: learning_rate"),
    (lambda: opt.lars(1e-3, weight_decay=-1.0), "lars: weight_decay"),
    (lambda: opt.lars(1e-3, trust_coefficient=-1.0), "lars: trust_coefficient"),
    (lambda: opt.lars(1e-3, eps=-1.0), "lars: eps"),
    (lambda: opt.lars(1e-3, momentum=1.0), "lars: momentum"),
    (lambda: opt.fromage(-1e-3), "fromage: learning_rate"),
    (lambda: opt.fromage(1e-3, min_norm=-1.0), "fromage: min_norm"),
    (lambda: blocks.scale_by_trust_ratio(min_norm=-1.0), "scale_by_trust_ratio: min_norm"),
    (lambda: blocks.scale_by_trust_ratio(trust_coefficient=float("nan")),
     "scale_by_trust_ratio: trust_coefficient"),
    (lambda: blocks.scale_by_trust_ratio(eps=-1.0), "scale_by_trust_ratio: eps"),
    (lambda: blocks.scale_by_param_block_norm(-1.0), "scale_by_param_block_norm: min_scale"),
    (lambda: blocks.scale_by_param_block_rms(-1.0), "scale_by_param_block_rms: min_scale"),
]


@pytest.mark.parametrize("make,match", BAD, ids=[m for _, m in BAD])
def test_bad_hyperparameters_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_schedules_refused_where_no_count_can_evaluate_them():
    with pytest.raises(TypeError, match="scale_by_trust_ratio: eps"):
        blocks.scale_by_trust_ratio(eps=lr_schedule)
    with pytest.raises(TypeError, match="scale_by_param_block_rms: min_scale"):
        blocks.scale_by_param_block_rms(lr_schedule)
