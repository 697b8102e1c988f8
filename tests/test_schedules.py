"""Schedules: parity with optax over steps 0..1000, constants as data, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jtricks as jt

S = jt.schedules
STEPS = jnp.arange(1001, dtype=jnp.int32)

# (id, jtricks schedule, optax twin) with explicit, non-default constants.
PARITY = [
    ("constant", S.constant(0.3), optax.constant_schedule(0.3)),
    ("exponential", S.exponential_decay(0.1, 0.99, 7),
     optax.exponential_decay(0.1, transition_steps=7, decay_rate=0.99)),
    ("exponential_staircase_begin_end",
     S.exponential_decay(0.1, 0.9, 37, transition_begin=50, staircase=True, end_value=0.02),
     optax.exponential_decay(0.1, 37, 0.9, transition_begin=50, staircase=True,
                             end_value=0.02)),
    ("exponential_growth_capped", S.exponential_decay(0.1, 1.01, 10, end_value=0.5),
     optax.exponential_decay(0.1, 10, 1.01, end_value=0.5)),
    ("piecewise_constant", S.piecewise_constant(0.1, {300: 0.5, 100: 0.1, 700: 3.0}),
     optax.piecewise_constant_schedule(0.1, {300: 0.5, 100: 0.1, 700: 3.0})),
    ("linear_begin", S.linear(1.0, 0.01, 300, transition_begin=100),
     optax.linear_schedule(1.0, 0.01, 300, transition_begin=100)),
    ("cosine", S.cosine_decay(1e-3, 700), optax.cosine_decay_schedule(1e-3, 700)),
    ("cosine_alpha_exponent", S.cosine_decay(1e-3, 700, alpha=0.1, exponent=2.0),
     optax.cosine_decay_schedule(1e-3, 700, alpha=0.1, exponent=2.0)),
    ("warmup_cosine", S.warmup_cosine_decay(1e-5, 1e-3, 100, 800, end_value=1e-5,
                                            exponent=1.5),
     optax.warmup_cosine_decay_schedule(1e-5, 1e-3, 100, 800, end_value=1e-5,
                                        exponent=1.5)),
    ("warmup_cosine_no_warmup", S.warmup_cosine_decay(0.0, 1e-3, 0, 800),
     optax.warmup_cosine_decay_schedule(0.0, 1e-3, 0, 800)),
    ("one_cycle", S.one_cycle(900, 0.1), optax.cosine_onecycle_schedule(900, 0.1)),
    ("one_cycle_custom", S.one_cycle(1000, 0.1, pct_start=0.29, div_factor=10.0,
                                     final_div_factor=100.0),
     optax.cosine_onecycle_schedule(1000, 0.1, 0.29, 10.0, 100.0)),
    ("join", S.join([S.linear(0.0, 1.0, 100), S.cosine_decay(1.0, 300), S.constant(0.2)],
                    [100, 400]),
     optax.join_schedules([optax.linear_schedule(0.0, 1.0, 100),
                           optax.cosine_decay_schedule(1.0, 300),
                           optax.constant_schedule(0.2)], [100, 400])),
    ("join_plain_function", S.join([lambda c: 0.5 * jnp.ones_like(c, jnp.float32),
                                    S.exponential_decay(0.5, 0.5, 100)], [250]),
     optax.join_schedules([optax.constant_schedule(0.5),
                           optax.exponential_decay(0.5, 100, 0.5)], [250])),
]


def _values(schedule):
    # vmap (op by op, no fusion) gives the same fp32 roundings as step-by-step calls.
    return np.asarray(jax.vmap(lambda c: jnp.asarray(schedule(c), jnp.float32))(STEPS))


@pytest.mark.parametrize("name, ours, theirs", PARITY, ids=[p[0] for p in PARITY])
def test_equals_optax_over_1000_steps(name, ours, theirs):
    np.testing.assert_allclose(_values(ours), _values(theirs), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name, ours, theirs", PARITY, ids=[p[0] for p in PARITY])
def test_traced_constants_match_optax(name, ours, theirs):
    # The schedule passed *into* jit: every constant is a traced fp32/int32 leaf.
    got = jax.jit(lambda s: jax.vmap(s)(STEPS))(ours)
    want = _values(theirs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_lesson_exponential_per_epoch():
    steps_per_epoch, lr = 50, 0.1
    sched = S.exponential_decay(lr, 0.98, steps_per_epoch, staircase=True)
    counts = np.arange(0, 1000)
    np.testing.assert_allclose(_values(sched)[:1000], lr * 0.98 ** (counts // steps_per_epoch),
                               rtol=1e-5)


# Pairs of schedules of one kind that differ only in numeric constants.
RETARGET = [
    ("exponential", S.exponential_decay(0.1, 0.9, 10), S.exponential_decay(0.3, 0.95, 20)),
    ("piecewise_constant", S.piecewise_constant(0.1, {10: 0.5}),
     S.piecewise_constant(0.2, {30: 0.1})),
    ("linear", S.linear(1.0, 0.0, 100), S.linear(0.5, 0.1, 40, transition_begin=5)),
    ("cosine", S.cosine_decay(1e-3, 100), S.cosine_decay(3e-4, 50, alpha=0.2)),
    ("warmup_cosine", S.warmup_cosine_decay(0.0, 1e-3, 10, 100),
     S.warmup_cosine_decay(1e-4, 3e-3, 20, 200, end_value=1e-5)),
    ("one_cycle", S.one_cycle(100, 0.1), S.one_cycle(200, 0.3, pct_start=0.5)),
    ("join", S.join([S.constant(1.0), S.linear(1.0, 0.0, 10)], [5]),
     S.join([S.constant(2.0), S.linear(2.0, 1.0, 20)], [15])),
]


@pytest.mark.parametrize("name, a, b", RETARGET, ids=[r[0] for r in RETARGET])
def test_new_constants_do_not_recompile(name, a, b):
    traces = []

    @jax.jit
    def values(schedule):
        traces.append(1)
        return jax.vmap(schedule)(jnp.arange(64, dtype=jnp.int32))

    va, vb = values(a), values(b)
    assert len(traces) == 1
    assert not np.allclose(va, vb)
    np.testing.assert_allclose(vb, _values(b)[:64], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name, a, b", RETARGET, ids=[r[0] for r in RETARGET])
def test_vmap_over_stacked_schedules(name, a, b):
    stacked = jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]), a, b)
    swept = jax.vmap(lambda s: jax.vmap(s)(STEPS[:300]))(stacked)
    np.testing.assert_allclose(swept[0], _values(a)[:300], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(swept[1], _values(b)[:300], rtol=1e-5, atol=1e-7)


def test_structure_is_static_constants_are_leaves():
    s = S.exponential_decay(0.1, 0.9, 10, staircase=True, end_value=0.01)
    assert jax.tree.leaves(s) == [0.1, 0.9, 10, 0, 0.01]
    flipped = S.exponential_decay(0.1, 0.9, 10, staircase=False, end_value=0.01)
    assert jax.tree.structure(s) != jax.tree.structure(flipped)
    # Built from Python numbers: hashable and equal by value (flax keeps tx static).
    assert hash(s) == hash(S.exponential_decay(0.1, 0.9, 10, staircase=True, end_value=0.01))
    assert s == S.exponential_decay(0.1, 0.9, 10, staircase=True, end_value=0.01)
    assert s != S.exponential_decay(0.2, 0.9, 10, staircase=True, end_value=0.01)


BAD = [
    (lambda: S.exponential_decay(0.1, 0.98, 0), ValueError, r"transition_steps must be > 0"),
    (lambda: S.exponential_decay(0.1, 0.98, -5), ValueError, r"transition_steps.*-5"),
    (lambda: S.exponential_decay(0.1, 1000, 0.98), ValueError, r"look swapped.*keyword"),
    (lambda: S.exponential_decay(0.1, 0.0, 10), ValueError, r"decay_rate must be > 0"),
    (lambda: S.exponential_decay(0.1, 0.9, 10, transition_begin=-1), ValueError,
     r"transition_begin must be >= 0"),
    (lambda: S.exponential_decay(float("nan"), 0.9, 10), ValueError, r"init_value.*nan"),
    (lambda: S.linear(1.0, 0.0, 0), ValueError, r"linear: transition_steps must be > 0"),
    (lambda: S.cosine_decay(1e-3, 0), ValueError, r"decay_steps must be > 0"),
    (lambda: S.cosine_decay(1e-3, 100, exponent=0.0), ValueError, r"exponent must be > 0"),
    (lambda: S.warmup_cosine_decay(0.0, 1e-3, 100, 50), ValueError,
     r"decay_steps must be greater than warmup_steps.*includes the warmup"),
    (lambda: S.warmup_cosine_decay(0.0, 1e-3, 100, 100), ValueError,
     r"greater than warmup_steps"),
    (lambda: S.warmup_cosine_decay(0.0, 1e-3, -1, 100), ValueError,
     r"warmup_steps must be >= 0"),
    (lambda: S.one_cycle(0, 0.1), ValueError, r"one_cycle: transition_steps must be > 0"),
    (lambda: S.one_cycle(100, 0.1, pct_start=1.0), ValueError, r"pct_start must be in"),
    (lambda: S.one_cycle(100, 0.1, div_factor=0.0), ValueError, r"div_factor must be > 0"),
    (lambda: S.piecewise_constant(0.1, {100: -0.5}), ValueError,
     r"scale at boundary 100 must be >= 0"),
    (lambda: S.piecewise_constant(0.1, {-3: 0.5}), ValueError, r"boundary must be a step"),
    (lambda: S.join([S.constant(1.0), S.constant(2.0)], []), ValueError,
     r"2 schedules need 1 boundaries"),
    (lambda: S.join([S.constant(1.0)] * 3, [200, 100]), ValueError, r"non-decreasing"),
    (lambda: S.join([S.constant(1.0), 0.5], [10]), TypeError, r"schedules\[1\].*constant"),
    (lambda: S.join([], []), ValueError, r"schedules is empty"),
    (lambda: S.constant("fast"), TypeError, r"value must be a real number"),
]


@pytest.mark.parametrize("make, error, match", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input_raises_clear_error(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_tracers_pass_validation():
    # Inside jit the factory gets tracers; checks are skipped, values still right.
    f = jax.jit(lambda steps, peak: S.one_cycle(steps, peak)(jnp.int32(30)))
    np.testing.assert_allclose(f(100, 0.1), S.one_cycle(100, 0.1)(30), rtol=1e-6)
    g = jax.jit(lambda t: S.exponential_decay(0.1, 0.9, t)(jnp.int32(20)))
    np.testing.assert_allclose(g(10), 0.1 * 0.9**2, rtol=1e-6)
