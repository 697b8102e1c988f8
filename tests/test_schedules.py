"""Schedules: parity with optax over steps 0..1000, optax's signatures, constants as
data (no recompile, vmap over stacked schedules, traced constants), bad input.

Deliberate refusals, where optax logs and carries on or silently builds something
other than its docstring says (each raises a ValueError naming the argument):

* a non-positive ``transition_steps`` (optax: a constant ``init_value``) in
  exponential_decay, polynomial, linear, warmup_exponential_decay;
* a zero or negative ``decay_rate`` (optax: a constant, or NaN for a negative rate);
* a negative ``transition_begin`` (optax: silently 0);
* ``polynomial(power <= 0)`` (optax: a constant for 0, an infinite end for < 0);
* ``warmup_constant(warmup_steps=0)`` (optax holds ``init_value`` for ever);
* a negative boundary in piecewise_constant / piecewise_interpolate / join;
* one-cycle ``pct_start`` outside [0, 1), ``linear_onecycle`` ``pct_final`` outside
  (pct_start, 1) or rounding onto pct_start's step (optax's boundary dict would
  silently merge the phases);
* ``warmup_cosine_decay(decay_steps <= warmup_steps)`` and ``cosine_decay`` /
  one-cycle ``transition_steps <= 0`` (optax raises too, with a terser message);
* an empty ``sgdr`` (optax fails at the first call).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jtricks as jt

S = jt.schedules
STEPS = jnp.arange(1001, dtype=jnp.int32)

CYCLES = [dict(init_value=0.0, peak_value=1e-3, warmup_steps=20, decay_steps=300),
          dict(init_value=1e-4, peak_value=5e-4, warmup_steps=0, decay_steps=200,
               end_value=1e-5, exponent=2.0),
          dict(init_value=0.0, peak_value=1e-4, warmup_steps=10, decay_steps=250)]

# (id, jtricks schedule, optax twin) with explicit, non-default constants.
PARITY = [
    ("constant", S.constant(0.3), optax.constant_schedule(0.3)),
    ("constant_int", S.constant(2), optax.constant_schedule(2)),
    ("exponential", S.exponential_decay(0.1, 7, 0.99),
     optax.exponential_decay(0.1, transition_steps=7, decay_rate=0.99)),
    ("exponential_staircase_begin_end",
     S.exponential_decay(0.1, 37, 0.9, transition_begin=50, staircase=True, end_value=0.02),
     optax.exponential_decay(0.1, 37, 0.9, transition_begin=50, staircase=True,
                             end_value=0.02)),
    ("exponential_growth_capped", S.exponential_decay(0.1, 10, 1.01, end_value=0.5),
     optax.exponential_decay(0.1, 10, 1.01, end_value=0.5)),
    ("exponential_optax_order", S.exponential_decay(0.1, 1000, 0.98),
     optax.exponential_decay(0.1, 1000, 0.98)),
    ("piecewise_constant", S.piecewise_constant(0.1, {300: 0.5, 100: 0.1, 700: 3.0}),
     optax.piecewise_constant_schedule(0.1, {300: 0.5, 100: 0.1, 700: 3.0})),
    ("piecewise_constant_none", S.piecewise_constant(0.7),
     optax.piecewise_constant_schedule(0.7)),
    ("linear_begin", S.linear(1.0, 0.01, 300, transition_begin=100),
     optax.linear_schedule(1.0, 0.01, 300, transition_begin=100)),
    ("linear_up", S.linear(0.0, 2.0, 999), optax.linear_schedule(0.0, 2.0, 999)),
    ("polynomial", S.polynomial(1.0, 0.01, 2, 300, 100),
     optax.polynomial_schedule(1.0, 0.01, 2, 300, 100)),
    ("polynomial_sqrt", S.polynomial(0.5, 0.0, 0.5, 700),
     optax.polynomial_schedule(0.5, 0.0, 0.5, 700)),
    ("polynomial_cubic_up", S.polynomial(0.0, 1.0, 3.0, 1000, transition_begin=7),
     optax.polynomial_schedule(0.0, 1.0, 3.0, 1000, transition_begin=7)),
    ("cosine", S.cosine_decay(1e-3, 700), optax.cosine_decay_schedule(1e-3, 700)),
    ("cosine_alpha_exponent", S.cosine_decay(1e-3, 700, alpha=0.1, exponent=2.0),
     optax.cosine_decay_schedule(1e-3, 700, alpha=0.1, exponent=2.0)),
    ("warmup_cosine", S.warmup_cosine_decay(1e-5, 1e-3, 100, 800, end_value=1e-5,
                                            exponent=1.5),
     optax.warmup_cosine_decay_schedule(1e-5, 1e-3, 100, 800, end_value=1e-5,
                                        exponent=1.5)),
    ("warmup_cosine_no_warmup", S.warmup_cosine_decay(0.0, 1e-3, 0, 800),
     optax.warmup_cosine_decay_schedule(0.0, 1e-3, 0, 800)),
    ("warmup_constant", S.warmup_constant(0.0, 1e-3, 300),
     optax.warmup_constant_schedule(0.0, 1e-3, 300)),
    ("warmup_constant_down", S.warmup_constant(1.0, 0.25, 1),
     optax.warmup_constant_schedule(1.0, 0.25, 1)),
    ("warmup_exponential", S.warmup_exponential_decay(0.0, 1e-3, 100, 50, 0.9),
     optax.warmup_exponential_decay_schedule(0.0, 1e-3, 100, 50, 0.9)),
    ("warmup_exponential_staircase_begin_end",
     S.warmup_exponential_decay(1e-5, 1e-3, 100, 37, 0.9, 50, True, 1e-4),
     optax.warmup_exponential_decay_schedule(1e-5, 1e-3, 100, 37, 0.9, 50, True, 1e-4)),
    ("warmup_exponential_no_warmup_growth",
     S.warmup_exponential_decay(0.0, 1e-3, 0, 100, 1.5, end_value=2e-3),
     optax.warmup_exponential_decay_schedule(0.0, 1e-3, 0, 100, 1.5, end_value=2e-3)),
    ("cosine_onecycle", S.cosine_onecycle(900, 0.1),
     optax.cosine_onecycle_schedule(900, 0.1)),
    ("cosine_onecycle_custom", S.cosine_onecycle(1000, 0.1, pct_start=0.29,
                                                 div_factor=10.0, final_div_factor=100.0),
     optax.cosine_onecycle_schedule(1000, 0.1, 0.29, 10.0, 100.0)),
    ("cosine_onecycle_no_rise", S.cosine_onecycle(800, 0.1, pct_start=0.0),
     optax.cosine_onecycle_schedule(800, 0.1, pct_start=0.0)),
    ("one_cycle", S.one_cycle(900, 0.1), optax.cosine_onecycle_schedule(900, 0.1)),
    ("linear_onecycle", S.linear_onecycle(900, 0.1), optax.linear_onecycle_schedule(900, 0.1)),
    ("linear_onecycle_custom", S.linear_onecycle(1000, 0.2, 0.25, 0.7, 10.0, 100.0),
     optax.linear_onecycle_schedule(1000, 0.2, 0.25, 0.7, 10.0, 100.0)),
    ("linear_onecycle_no_rise", S.linear_onecycle(700, 1.0, pct_start=0.0, pct_final=0.5),
     optax.linear_onecycle_schedule(700, 1.0, pct_start=0.0, pct_final=0.5)),
    ("piecewise_interpolate_linear",
     S.piecewise_interpolate("linear", 0.1, {300: 0.5, 100: 0.1, 700: 3.0}),
     optax.piecewise_interpolate_schedule("linear", 0.1, {300: 0.5, 100: 0.1, 700: 3.0})),
    ("piecewise_interpolate_cosine_from_0",
     S.piecewise_interpolate("cosine", 0.1, {0: 2.0, 300: 0.5, 100: 0.1, 999: 3.0}),
     optax.piecewise_interpolate_schedule("cosine", 0.1, {0: 2.0, 300: 0.5, 100: 0.1,
                                                          999: 3.0})),
    ("piecewise_interpolate_none", S.piecewise_interpolate("cosine", 0.1),
     optax.piecewise_interpolate_schedule("cosine", 0.1)),
    ("sgdr", S.sgdr(CYCLES), optax.sgdr_schedule(CYCLES)),
    ("sgdr_one_cycle", S.sgdr(CYCLES[1:2]), optax.sgdr_schedule(CYCLES[1:2])),
    ("join", S.join([S.linear(0.0, 1.0, 100), S.cosine_decay(1.0, 300), S.constant(0.2)],
                    [100, 400]),
     optax.join_schedules([optax.linear_schedule(0.0, 1.0, 100),
                           optax.cosine_decay_schedule(1.0, 300),
                           optax.constant_schedule(0.2)], [100, 400])),
    ("join_plain_function", S.join([lambda c: 0.5 * jnp.ones_like(c, jnp.float32),
                                    S.exponential_decay(0.5, 100, 0.5)], [250]),
     optax.join_schedules([optax.constant_schedule(0.5),
                           optax.exponential_decay(0.5, 100, 0.5)], [250])),
]


def _values(schedule):
    # vmap (op by op, no fusion) gives the same fp32 roundings as step-by-step calls.
    return np.asarray(jax.vmap(lambda c: jnp.asarray(schedule(c), jnp.float32))(STEPS))


def _jitted_values(schedule):
    return np.asarray(jax.jit(jax.vmap(lambda c: jnp.asarray(schedule(c), jnp.float32)))(
        STEPS))


@pytest.mark.parametrize("name, ours, theirs", PARITY, ids=[p[0] for p in PARITY])
def test_equals_optax_over_1000_steps(name, ours, theirs):
    # Bit-identical: the same operations in the same order, in fp32.
    np.testing.assert_array_equal(_values(ours), _values(theirs))


@pytest.mark.parametrize("name, ours, theirs", PARITY, ids=[p[0] for p in PARITY])
def test_traced_constants_match_optax(name, ours, theirs):
    # The schedule passed *into* jit: every constant is a traced fp32/int32 leaf.
    # Compared with optax compiled alike: under jit XLA may turn ``t / T`` into
    # ``t * (1 / T)`` in both libraries, which a power < 1 magnifies at a ramp's end.
    got = jax.jit(lambda s: jax.vmap(s)(STEPS))(ours)
    want = _jitted_values(theirs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("name, ours, theirs", PARITY, ids=[p[0] for p in PARITY])
def test_every_schedule_is_a_hashable_schedule_pytree(name, ours, theirs):
    del theirs
    assert isinstance(ours, S.Schedule)
    rebuilt = jax.tree.unflatten(jax.tree.structure(ours), jax.tree.leaves(ours))
    assert rebuilt == ours and hash(rebuilt) == hash(ours)


def test_lesson_exponential_per_epoch():
    steps_per_epoch, lr, counts = 50, 0.1, np.arange(0, 1000)
    sched = S.exponential_decay(lr, steps_per_epoch, 0.98, staircase=True)
    np.testing.assert_allclose(_values(sched)[:1000], lr * 0.98 ** (counts // steps_per_epoch),
                               rtol=1e-5)


# --- signatures: optax's names, order, kinds and defaults ---------------------------

# optax name -> jtricks name where dropping "_schedule" is not the whole rule. There
# is no deviation from optax's signatures to list: every one is equal.
RENAMED = {"join_schedules": "join"}
OPTAX_SCHEDULES = sorted(n for n in dir(optax.schedules) if n[0].islower() and not
                         n.startswith(("_", "inject")) and callable(getattr(optax.schedules, n)))


def _twin(optax_name):
    return RENAMED.get(optax_name, optax_name.removesuffix("_schedule"))


def test_every_optax_schedule_has_a_twin():
    assert len(OPTAX_SCHEDULES) == 14, OPTAX_SCHEDULES
    missing = [n for n in OPTAX_SCHEDULES if not hasattr(S, _twin(n))]
    assert not missing
    assert S.one_cycle is S.cosine_onecycle  # the earlier name, the same object


@pytest.mark.parametrize("optax_name", OPTAX_SCHEDULES)
def test_signature_equals_optax(optax_name):
    theirs = list(inspect.signature(getattr(optax.schedules, optax_name)).parameters.values())
    ours = list(inspect.signature(getattr(S, _twin(optax_name))).parameters.values())

    def described(params):
        return [(p.name, p.kind, p.default) for p in params]

    assert described(ours[:len(theirs)]) == described(theirs)
    # jtricks may only add keyword-only options at the end.
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[len(theirs):])


# --- constants are data -------------------------------------------------------------

# Pairs of schedules of one kind that differ only in numeric constants.
RETARGET = [
    ("constant", S.constant(0.1), S.constant(0.2)),
    ("exponential", S.exponential_decay(0.1, 10, 0.9), S.exponential_decay(0.3, 20, 0.95)),
    ("exponential_end", S.exponential_decay(0.1, 10, 0.9, 3, True, 0.05),
     S.exponential_decay(0.3, 5, 1.1, 7, True, 0.5)),
    ("piecewise_constant", S.piecewise_constant(0.1, {10: 0.5}),
     S.piecewise_constant(0.2, {30: 0.1})),
    ("linear", S.linear(1.0, 0.0, 100), S.linear(0.5, 0.1, 40, transition_begin=5)),
    ("polynomial", S.polynomial(1.0, 0.0, 2.0, 100), S.polynomial(0.5, 0.1, 0.5, 40, 5)),
    ("cosine", S.cosine_decay(1e-3, 100), S.cosine_decay(3e-4, 50, alpha=0.2)),
    ("warmup_cosine", S.warmup_cosine_decay(0.0, 1e-3, 10, 100),
     S.warmup_cosine_decay(1e-4, 3e-3, 20, 200, end_value=1e-5)),
    ("warmup_constant", S.warmup_constant(0.0, 1e-3, 10), S.warmup_constant(1e-4, 3e-3, 40)),
    ("warmup_exponential", S.warmup_exponential_decay(0.0, 1e-3, 10, 10, 0.9),
     S.warmup_exponential_decay(1e-4, 3e-3, 20, 5, 0.5, transition_begin=3)),
    ("cosine_onecycle", S.cosine_onecycle(100, 0.1), S.cosine_onecycle(200, 0.3, 0.5)),
    ("linear_onecycle", S.linear_onecycle(100, 0.1),
     S.linear_onecycle(60, 0.3, 0.2, 0.5, 5.0, 10.0)),
    ("piecewise_interpolate", S.piecewise_interpolate("cosine", 0.1, {10: 0.5, 40: 2.0}),
     S.piecewise_interpolate("cosine", 0.2, {5: 3.0, 20: 0.1})),
    ("sgdr", S.sgdr(CYCLES[:2]), S.sgdr([dict(CYCLES[0], decay_steps=30),
                                         dict(CYCLES[1], init_value=1e-3)])),
    ("join", S.join([S.constant(1.0), S.linear(1.0, 0.0, 10)], [5]),
     S.join([S.constant(2.0), S.linear(2.0, 1.0, 20)], [15])),
]


def test_retarget_covers_every_schedule():
    kinds = {type(a) for _, a, _ in RETARGET}
    assert kinds >= {type(ours) for _, ours, _ in PARITY}


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
    s = S.exponential_decay(0.1, 10, 0.9, staircase=True, end_value=0.01)
    assert jax.tree.leaves(s) == [0.1, 10, 0.9, 0, 0.01]
    flipped = S.exponential_decay(0.1, 10, 0.9, staircase=False, end_value=0.01)
    assert jax.tree.structure(s) != jax.tree.structure(flipped)
    # Built from Python numbers: hashable and equal by value (flax keeps tx static).
    assert hash(s) == hash(S.exponential_decay(0.1, 10, 0.9, staircase=True, end_value=0.01))
    assert s == S.exponential_decay(0.1, 10, 0.9, staircase=True, end_value=0.01)
    assert s != S.exponential_decay(0.2, 10, 0.9, staircase=True, end_value=0.01)
    linear = S.piecewise_interpolate("linear", 1.0, {10: 0.5})
    cosine = S.piecewise_interpolate("cosine", 1.0, {10: 0.5})
    assert jax.tree.leaves(linear) == jax.tree.leaves(cosine) == [1.0, 10, 0.5]
    assert jax.tree.structure(linear) != jax.tree.structure(cosine)


# --- traced hyperparameters (the factory called inside jit) --------------------------

# (jtricks name, numbers passed traced, static options); dict keys are static too.
TRACED = [
    ("exponential_decay", dict(init_value=0.1, transition_steps=37, decay_rate=0.9,
                               transition_begin=50, end_value=0.02), dict(staircase=True)),
    ("polynomial", (1.0, 0.01, 2.0, 300, 100), {}),
    ("linear", (1.0, 0.01, 300, 100), {}),
    ("piecewise_constant", (0.1, {100: 0.5, 400: 3.0}), {}),
    ("piecewise_interpolate", dict(init_value=0.1, boundaries_and_scales={100: 0.5, 400: 3.0}),
     dict(interpolate_type="cosine")),
    ("cosine_decay", (1e-3, 700, 0.1, 2.0), {}),
    ("warmup_cosine_decay", (1e-5, 1e-3, 100, 800, 1e-5, 1.5), {}),
    ("warmup_constant", (0.0, 1e-3, 300), {}),
    ("warmup_exponential_decay", dict(init_value=1e-5, peak_value=1e-3, warmup_steps=100,
                                      transition_steps=37, decay_rate=0.9,
                                      transition_begin=50, end_value=1e-4),
     dict(staircase=True)),
    # pct_start * transition_steps is floored in fp32 when traced: 0.3 * 1000 is exact.
    ("cosine_onecycle", (1000, 0.1, 0.3, 10.0, 100.0), {}),
    ("linear_onecycle", (1000, 0.2, 0.25, 0.75, 10.0, 100.0), {}),
    ("sgdr", ([CYCLES[0], CYCLES[1]],), {}),
]
TWIN = {_twin(n): getattr(optax.schedules, n) for n in OPTAX_SCHEDULES}


def _build(factory, numbers, static):
    if isinstance(numbers, dict):
        return factory(**numbers, **static)
    return factory(*numbers, **static)


@pytest.mark.parametrize("name, numbers, static", TRACED, ids=[t[0] for t in TRACED])
def test_factories_accept_traced_hyperparameters(name, numbers, static):
    got = jax.jit(lambda v: jax.vmap(_build(getattr(S, name), v, static))(STEPS))(numbers)
    want = _jitted_values(_build(TWIN[name], numbers, static))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_join_accepts_traced_schedules_and_boundaries():
    def make(v):
        return S.join([S.constant(v[0]), S.linear(v[0], v[1], v[2])], [v[3]])

    got = jax.jit(lambda v: jax.vmap(make(v))(STEPS))((1.0, 0.1, 300, 200))
    want = optax.join_schedules([optax.constant_schedule(1.0),
                                 optax.linear_schedule(1.0, 0.1, 300)], [200])
    np.testing.assert_allclose(got, _jitted_values(want), rtol=1e-6)


def test_tracers_pass_validation():
    # Inside jit the factory gets tracers; checks are skipped, values still right.
    f = jax.jit(lambda steps, peak: S.one_cycle(steps, peak)(jnp.int32(30)))
    np.testing.assert_allclose(f(100, 0.1), S.one_cycle(100, 0.1)(30), rtol=1e-6)
    g = jax.jit(lambda t: S.exponential_decay(0.1, t, 0.9)(jnp.int32(20)))
    np.testing.assert_allclose(g(10), 0.1 * 0.9**2, rtol=1e-6)


def test_ramp_ends_exactly_under_jit():
    # XLA may divide by multiplying with the reciprocal, so under jit t / T can exceed
    # 1 by an ulp at t = T; (negative) ** 0.5 would be NaN (optax's is, under jit).
    sched = S.polynomial(0.5, 0.1, 0.5, 40, 5)
    got = np.asarray(jax.jit(lambda s: jax.vmap(s)(STEPS[:64]))(sched))
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got[45:], np.float32(0.1))


# --- step counts beyond int32 -------------------------------------------------------


@pytest.mark.parametrize("ours, theirs, warmup", [
    (S.cosine_decay(1.0, int(1e10)), optax.cosine_decay_schedule(1.0, int(1e10)), 0),
    (S.warmup_cosine_decay(0.0, 1.0, 100, int(1e10)),
     optax.warmup_cosine_decay_schedule(0.0, 1.0, 100, int(1e10)), 100),
], ids=["cosine_decay", "warmup_cosine_decay"])
def test_decay_steps_beyond_int32_under_jit(ours, theirs, warmup):
    counts = jnp.asarray([0, 1000, 10**9, 2**31 - 1], jnp.int32)
    want = jax.jit(jax.vmap(theirs))(counts)
    closed = jax.jit(jax.vmap(ours))(counts)                     # the schedule as a constant
    passed = jax.jit(lambda s, c: jax.vmap(s)(c))(ours, counts)  # ... as an argument
    np.testing.assert_array_equal(closed, want)
    np.testing.assert_array_equal(passed, want)
    exact = 0.5 * (1 + np.cos(np.pi * (1e9 - warmup) / (1e10 - warmup)))
    np.testing.assert_allclose(closed[2], exact, rtol=1e-6)


def test_other_counts_beyond_int32_work_as_arguments():
    count = jnp.int32(10**9)
    at = jax.jit(lambda s, c: s(c))
    np.testing.assert_allclose(at(S.exponential_decay(1.0, 10**10, 0.5), count), 0.5**0.1,
                               rtol=1e-6)
    assert float(at(S.join([S.constant(1.0), S.constant(2.0)], [10**10]), count)) == 1.0
    np.testing.assert_allclose(at(S.cosine_decay(1.0, np.int64(10**10)), count),
                               0.5 * (1 + np.cos(0.1 * np.pi)), rtol=1e-6)


# --- bad input ----------------------------------------------------------------------

BAD = [
    (lambda: S.exponential_decay(0.1, 0, 0.98), ValueError, r"transition_steps must be > 0"),
    (lambda: S.exponential_decay(0.1, -5, 0.98), ValueError, r"transition_steps.*-5"),
    (lambda: S.exponential_decay(0.1, 10, 0.0), ValueError, r"decay_rate must be > 0"),
    (lambda: S.exponential_decay(0.1, 10, -0.5), ValueError, r"decay_rate must be > 0.*-0.5"),
    (lambda: S.exponential_decay(0.1, 10, 0.9, transition_begin=-1), ValueError,
     r"transition_begin must be >= 0"),
    (lambda: S.exponential_decay(float("nan"), 10, 0.9), ValueError, r"init_value.*nan"),
    (lambda: S.exponential_decay(0.1, 10, 0.9, end_value=float("nan")), ValueError,
     r"end_value must be finite"),
    (lambda: S.linear(1.0, 0.0, 0), ValueError, r"linear: transition_steps must be > 0"),
    (lambda: S.linear(1.0, 0.0, 10, -3), ValueError, r"linear: transition_begin must be >= 0"),
    (lambda: S.polynomial(1.0, 0.0, 2, 0), ValueError,
     r"polynomial: transition_steps must be > 0"),
    (lambda: S.polynomial(1.0, 0.0, 0.0, 10), ValueError,
     r"polynomial: power must be > 0.*1 is linear"),
    (lambda: S.polynomial(1.0, 0.0, -1, 10), ValueError, r"power must be > 0, got -1"),
    (lambda: S.polynomial(1.0, float("-inf"), 2, 10), ValueError, r"end_value must be finite"),
    (lambda: S.cosine_decay(1e-3, 0), ValueError, r"decay_steps must be > 0"),
    (lambda: S.cosine_decay(1e-3, 100, exponent=0.0), ValueError, r"exponent must be > 0"),
    (lambda: S.warmup_cosine_decay(0.0, 1e-3, 100, 50), ValueError,
     r"decay_steps must be greater than warmup_steps.*includes the warmup"),
    (lambda: S.warmup_cosine_decay(0.0, 1e-3, 100, 100), ValueError,
     r"greater than warmup_steps"),
    (lambda: S.warmup_cosine_decay(0.0, 1e-3, -1, 100), ValueError,
     r"warmup_steps must be >= 0"),
    (lambda: S.warmup_constant(0.0, 1e-3, 0), ValueError,
     r"warmup_constant: warmup_steps must be > 0.*constant\(peak_value\)"),
    (lambda: S.warmup_constant(0.0, float("nan"), 10), ValueError, r"peak_value.*nan"),
    (lambda: S.warmup_exponential_decay(0.0, 1e-3, -5, 10, 0.9), ValueError,
     r"warmup_exponential_decay: warmup_steps must be >= 0, got -5"),
    (lambda: S.warmup_exponential_decay(0.0, 1e-3, 5, 0, 0.9), ValueError,
     r"warmup_exponential_decay: transition_steps must be > 0"),
    (lambda: S.warmup_exponential_decay(0.0, 1e-3, 5, 10, 0.0), ValueError,
     r"warmup_exponential_decay: decay_rate must be > 0"),
    (lambda: S.one_cycle(0, 0.1), ValueError, r"cosine_onecycle: transition_steps must be > 0"),
    (lambda: S.one_cycle(100, 0.1, pct_start=1.0), ValueError, r"pct_start must be in"),
    (lambda: S.one_cycle(100, 0.1, div_factor=0.0), ValueError, r"div_factor must be > 0"),
    (lambda: S.cosine_onecycle(100, 0.1, final_div_factor=-1.0), ValueError,
     r"final_div_factor must be > 0"),
    (lambda: S.linear_onecycle(-10, 0.1), ValueError,
     r"linear_onecycle: transition_steps must be > 0"),
    (lambda: S.linear_onecycle(100, 0.1, pct_start=-0.1), ValueError,
     r"pct_start must be in \[0, 1\), got -0.1"),
    (lambda: S.linear_onecycle(100, 0.1, pct_start=0.5, pct_final=0.4), ValueError,
     r"pct_final must be in \(pct_start, 1\) = \(0.5, 1\), got 0.4"),
    (lambda: S.linear_onecycle(100, 0.1, pct_final=1.0), ValueError, r"pct_final must be in"),
    (lambda: S.linear_onecycle(10, 0.1, pct_start=0.3, pct_final=0.35), ValueError,
     r"int\(pct_final \* transition_steps\) must be after.* = 3, got 3.*pct_final"),
    (lambda: S.piecewise_constant(0.1, {100: -0.5}), ValueError,
     r"scale at boundary 100 must be >= 0"),
    (lambda: S.piecewise_constant(0.1, {-3: 0.5}), ValueError, r"boundary must be a step"),
    (lambda: S.piecewise_interpolate("linear", 0.1, {-3: 0.5}), ValueError,
     r"piecewise_interpolate: every boundary must be a step number >= 0, got -3"),
    (lambda: S.piecewise_interpolate("linear", 0.1, {10: -0.5}), ValueError,
     r"scale at boundary 10 must be >= 0"),
    (lambda: S.piecewise_interpolate("quadratic", 0.1), ValueError,
     r"interpolate_type must be 'linear' or 'cosine', got 'quadratic'"),
    (lambda: S.piecewise_interpolate("linear", float("nan")), ValueError,
     r"init_value must be finite"),
    (lambda: S.sgdr([]), ValueError, r"sgdr: cosine_kwargs is empty"),
    (lambda: S.sgdr([dict(init_value=0.0, peak_value=1.0, warmup_steps=5)]), TypeError,
     r"cosine_kwargs\[0\] must be a dict .* decay_steps"),
    (lambda: S.sgdr([CYCLES[0], dict(CYCLES[0], decay_steps=0)]), ValueError,
     r"sgdr \(cosine_kwargs\[1\]\): decay_steps must be > 0"),
    (lambda: S.join([S.constant(1.0), S.constant(2.0)], []), ValueError,
     r"2 schedules need 1 boundaries"),
    (lambda: S.join([S.constant(1.0)] * 3, [200, 100]), ValueError, r"non-decreasing"),
    (lambda: S.join([S.constant(1.0)] * 2, [-1]), ValueError, r"boundaries\[0\] must be >= 0"),
    (lambda: S.join([S.constant(1.0), 0.5], [10]), TypeError, r"schedules\[1\].*constant"),
    (lambda: S.join([], []), ValueError, r"schedules is empty"),
    (lambda: S.constant("fast"), TypeError, r"value must be a real number"),
]


@pytest.mark.parametrize("make, error, match", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input_raises_clear_error(make, error, match):
    with pytest.raises(error, match=match):
        make()
