"""Schedules beyond optax: warmup-stable-decay, PyTorch's cyclic and warm-restart
schedules, a warmup in front of any schedule, and products of schedules.

Each formula is checked at chosen steps against values worked out by hand and, over
every step of a range, against a plain-Python transcription of the published formula
(PyTorch's ``CyclicLR`` and ``CosineAnnealingWarmRestarts`` docs, ``t_mult=2``
included). Every schedule is evaluated in ONE jitted program with traced steps.
"""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAST_COMPILE

import jtricks as jt

S = jt.schedules
N = 700
K = np.arange(N)


# --- the published formulas, transcribed ---------------------------------------------


def torch_cyclic(k, base, top, step_size, mode, gamma=1.0):
    """PyTorch CyclicLR.get_lr with step_size_up = step_size_down (last_epoch = k)."""
    total = 2.0 * step_size
    ratio = step_size / total
    cycle = math.floor(1 + k / total)
    x = 1.0 + k / total - cycle
    factor = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
    height = (top - base) * factor
    scale = {"triangular": 1.0, "triangular2": 1 / 2.0 ** (cycle - 1),
             "exp_range": gamma**k}[mode]
    return base + height * scale


def torch_warm_restarts(k, lr, t_0, t_mult, eta_min):
    """PyTorch CosineAnnealingWarmRestarts.step(epoch=k). The cycle index is PyTorch's
    ``log(k / T_0 * (T_mult - 1) + 1, T_mult)``, taken exactly (by integers)."""
    if k >= t_0:
        if t_mult == 1:
            t_cur, t_i = k % t_0, t_0
        else:
            n = 0
            while t_0 * (t_mult ** (n + 1) - 1) // (t_mult - 1) <= k:
                n += 1
            t_cur = k - t_0 * (t_mult**n - 1) / (t_mult - 1)
            t_i = t_0 * t_mult**n
    else:
        t_cur, t_i = k, t_0
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


def wsd_reference(k, peak, w, s, d, end, kind, init=0.0):
    if k < w:
        return init + (peak - init) * k / w
    if k < w + s:
        return peak
    f = min((k - w - s) / d, 1.0)
    return {"linear": peak + (end - peak) * f,
            "cosine": end + (peak - end) * (1 + math.cos(math.pi * f)) / 2,
            "sqrt": end + (peak - end) * (1 - math.sqrt(f))}[kind]


CYCLIC = [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.995)]
RESTARTS = [(10, 1, 0.0), (10, 2, 1e-3), (7, 3, 0.0), (1, 2, 0.0)]
WSD = [("linear", 50, 400, 200, 1e-5), ("cosine", 0, 300, 350, 0.0),
       ("sqrt", 100, 250, 300, 2e-4)]


def _schedules():
    out = {}
    for mode, gamma in CYCLIC:
        out["cyclic", mode] = (S.cyclic(1e-4, 1e-2, 37, mode=mode, gamma=gamma),
                               lambda k, m=mode, g=gamma: torch_cyclic(k, 1e-4, 1e-2, 37, m,
                                                                       g))
    for t_0, t_mult, eta in RESTARTS:
        out["restarts", t_0, t_mult] = (
            S.cosine_warm_restarts(0.1, t_0, t_mult, eta),
            lambda k, a=t_0, b=t_mult, e=eta: torch_warm_restarts(k, 0.1, a, b, e))
    for kind, w, s, d, end in WSD:
        out["wsd", kind] = (S.warmup_stable_decay(3e-3, w, s, d, end, kind),
                            lambda k, a=(3e-3, w, s, d, end, kind): wsd_reference(k, *a))
    cyc = S.cyclic(1e-4, 1e-2, 37)
    out["warmup"] = (S.warmup(cyc, 25, init_value=1e-5),
                     lambda k: 1e-5 + (1e-4 - 1e-5) * k / 25 if k < 25
                     else torch_cyclic(k - 25, 1e-4, 1e-2, 37, "triangular"))
    env = S.cosine_decay(1.0, N)
    restarts = S.cosine_warm_restarts(0.1, 10, 2)
    out["product"] = (restarts * env * 2.0,
                      lambda k: torch_warm_restarts(k, 0.1, 10, 2, 0.0) * 2.0
                      * 0.5 * (1 + math.cos(math.pi * k / N)))
    out["warmup_product"] = (S.warmup(S.product(3.0, restarts, env), 40),
                             lambda k: (3.0 * 0.1 * k / 40) if k < 40 else 3.0
                             * torch_warm_restarts(k - 40, 0.1, 10, 2, 0.0)
                             * 0.5 * (1 + math.cos(math.pi * (k - 40) / N)))
    return out


SCHEDULES = _schedules()
IDS = ["-".join(map(str, key)) if isinstance(key, tuple) else key for key in SCHEDULES]


@functools.cache
def values():
    """Every schedule at steps 0..N-1, in one jitted program with the steps traced."""
    scheds = {i: s for i, (s, _) in zip(IDS, SCHEDULES.values())}
    run = jax.jit(lambda ss, k: {i: jax.vmap(s)(k) for i, s in ss.items()},
                  compiler_options=FAST_COMPILE)
    return jax.tree.map(np.asarray, run(scheds, jnp.asarray(K, jnp.int32)))


@pytest.mark.parametrize("key", list(SCHEDULES), ids=IDS)
def test_every_step_equals_the_published_formula(key):
    got = values()[IDS[list(SCHEDULES).index(key)]]
    ref = np.array([SCHEDULES[key][1](int(k)) for k in K])
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-8)


# --- hand-computed values ------------------------------------------------------------


def _at(schedule, steps):
    return [float(v) for v in jax.jit(jax.vmap(schedule))(jnp.asarray(steps))]


def test_hand_values_warmup_stable_decay():
    lin = S.warmup_stable_decay(1.0, 10, 20, 40, end_value=0.2)
    assert _at(lin, [0, 5, 10, 29, 30, 50, 70, 1000]) == pytest.approx(
        [0.0, 0.5, 1.0, 1.0, 1.0, 0.6, 0.2, 0.2])
    cos = S.warmup_stable_decay(1.0, 0, 10, 40, decay="cosine")
    assert _at(cos, [0, 10, 30, 50]) == pytest.approx([1.0, 1.0, 0.5, 0.0], abs=1e-7)
    sq = S.warmup_stable_decay(1.0, 0, 0, 100, decay="sqrt", init_value=0.3)
    assert _at(sq, [0, 25, 100]) == pytest.approx([1.0, 0.5, 0.0], abs=1e-7)


def test_hand_values_cyclic():
    tri2 = S.cyclic(0.0, 1.0, 10, mode="triangular2")
    # Cycle 1 peaks at 10 with 1, cycle 2 at 30 with 1/2, cycle 3 at 50 with 1/4.
    assert _at(tri2, [0, 5, 10, 15, 20, 30, 50]) == pytest.approx(
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.5, 0.25])
    exp = S.cyclic(0.0, 1.0, 10, mode="exp_range", gamma=0.5)
    assert _at(exp, [10, 30]) == pytest.approx([0.5**10, 0.5**30], rel=1e-5)


def test_hand_values_warm_restarts_t_mult_2():
    # t_0=10, t_mult=2: cycles [0, 10), [10, 30), [30, 70), [70, 150).
    s = S.cosine_warm_restarts(1.0, 10, t_mult=2, eta_min=0.0)
    assert _at(s, [0, 5, 9, 10, 20, 29, 30, 50, 70, 110, 150]) == pytest.approx(
        [1.0, 0.5, 0.5 * (1 + math.cos(0.9 * math.pi)), 1.0, 0.5,
         0.5 * (1 + math.cos(19 / 20 * math.pi)), 1.0, 0.5, 1.0, 0.5, 1.0], abs=1e-6)
    # Far out, where the float guess of the cycle index is most fragile: restarts at
    # 10 * (2**n - 1).
    restarts = [10 * (2**n - 1) for n in range(12, 20)]
    assert _at(s, restarts) == pytest.approx([1.0] * len(restarts), abs=1e-6)
    assert max(_at(s, [r - 1 for r in restarts])) < 1e-3


def test_hand_values_warmup_and_product():
    w = S.warmup(S.constant(2.0), 4, init_value=1.0)
    assert _at(w, [0, 2, 4, 100]) == pytest.approx([1.0, 1.5, 2.0, 2.0])
    p = S.linear(1.0, 0.0, 100) * S.constant(3.0)
    assert _at(p, [0, 50, 100]) == pytest.approx([3.0, 1.5, 0.0], abs=1e-6)
    assert _at(0.5 * S.constant(4.0), [7]) == pytest.approx([2.0])


# --- pytrees: composition, one trace, vmap -----------------------------------------


def test_product_flattens_and_takes_numbers_and_functions_on_either_side():
    a, b = S.constant(2.0), S.linear(1.0, 0.0, 10)
    assert isinstance(a * b, S.Product) and len((a * b * a).factors) == 3
    assert len((2.0 * (a * b)).factors) == 3
    for p in (a * 3.0, 3.0 * a, np.float32(3.0) * a, jnp.float32(3.0) * a):
        assert float(p(0)) == pytest.approx(6.0)
    fn = a * (lambda k: 0.5)   # a plain function becomes a static FunctionSchedule
    assert float(fn(3)) == 1.0 and jax.tree.leaves(fn) == [2.0]
    with pytest.raises(TypeError):
        a * "fast"


def test_jit_with_the_schedule_as_argument_traces_once_and_vmaps():
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def at(schedule, k):
        return schedule(k)

    def make(peak):
        return S.warmup(S.warmup_stable_decay(peak, 10, 20, 30) * S.cyclic(0.5, 1.0, 8),
                        5) * S.cosine_warm_restarts(1.0, 6, 2)

    one, two = at(make(1e-3), jnp.int32(40)), at(make(3e-3), jnp.int32(40))
    assert float(two) == pytest.approx(3 * float(one), rel=1e-5)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), make(1e-3), make(3e-3))
    swept = jax.jit(jax.vmap(lambda s: s(jnp.int32(40))))(stacked)
    np.testing.assert_allclose(swept, [one, two], rtol=1e-6)
    assert hash(make(1e-3)) == hash(make(1e-3))


def test_schedules_drive_an_optimizer_under_jit():
    sched = 1e-2 * S.cosine_warm_restarts(1.0, 5, 2)
    tx = jt.sgd(sched)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    step = jax.jit(lambda s: tx.update({"w": jnp.ones(3)}, s, params))
    u, state = step(state)
    assert float(u["w"][0]) == pytest.approx(-1e-2)


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("call,match", [
    (lambda: S.warmup_stable_decay(1.0, -1, 10, 10), "warmup_stable_decay: warmup_steps"),
    (lambda: S.warmup_stable_decay(1.0, 1, -1, 10), "warmup_stable_decay: stable_steps"),
    (lambda: S.warmup_stable_decay(1.0, 1, 1, 0), "warmup_stable_decay: decay_steps"),
    (lambda: S.warmup_stable_decay(float("nan"), 1, 1, 1), "warmup_stable_decay: peak_value"),
    (lambda: S.warmup_stable_decay(1.0, 1, 1, 1, decay="exp"), "warmup_stable_decay: decay"),
    (lambda: S.cyclic(1e-2, 1e-4, 10), "cyclic: max"),
    (lambda: S.cyclic(1e-4, 1e-2, 0), "cyclic: step_size"),
    (lambda: S.cyclic(1e-4, 1e-2, 10, mode="sine"), "cyclic: mode"),
    (lambda: S.cyclic(1e-4, 1e-2, 10, mode="exp_range", gamma=1.5), "cyclic: gamma"),
    (lambda: S.cosine_warm_restarts(0.1, 0), "cosine_warm_restarts: t_0"),
    (lambda: S.cosine_warm_restarts(0.1, 10.5), "cosine_warm_restarts: t_0"),
    (lambda: S.cosine_warm_restarts(0.1, 10, t_mult=0), "cosine_warm_restarts: t_mult"),
    (lambda: S.cosine_warm_restarts(0.1, 10, t_mult=1.5), "cosine_warm_restarts: t_mult"),
    (lambda: S.cosine_warm_restarts(0.1, 10, eta_min=float("inf")),
     "cosine_warm_restarts: eta_min"),
    (lambda: S.warmup(0.1, 10), "warmup: schedule"),
    (lambda: S.warmup(S.constant(1.0), -5), "warmup: warmup_steps"),
    (lambda: S.product(), "product: no factors"),
    (lambda: S.product(2.0, 3.0), "product: no factor is a schedule"),
    (lambda: S.product(S.constant(1.0), float("nan")), "product: factor 1"),
    (lambda: S.product(S.constant(1.0), "x"), "product: factor 1"),
])
def test_bad_input_is_refused_naming_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
