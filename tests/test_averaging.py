"""EMA and SWA equal their formulas; an ensemble of N equals N separate trainings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtricks as jt
from jtricks import averaging


def trajectory(steps=12, seed=0):
    """A random sequence of parameter trees p_1 .. p_T (and p_0 to init with)."""
    rng = np.random.default_rng(seed)
    return [{"w": rng.normal(size=(3, 2)).astype(np.float32),
             "b": rng.normal(size=(2,)).astype(np.float32)} for _ in range(steps + 1)]


def run(avg, ps):
    update = jax.jit(avg.update)
    s = avg.init(ps[0])
    for p in ps[1:]:
        s = update(p, s)
    return s


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.999])
def test_debiased_ema_equals_formula(decay):
    ps = trajectory()
    s = run(averaging.ema(decay), ps)
    d = float(np.float32(decay))  # the decay as the fp32 computation sees it
    for k in ("w", "b"):
        e = np.zeros_like(ps[0][k], np.float64)
        for p in ps[1:]:
            e = d * e + (1 - d) * p[k]
        expected = e / (1 - d ** (len(ps) - 1))
        np.testing.assert_allclose(averaging.ema(decay).value(s)[k], expected,
                                   rtol=2e-5, atol=1e-6)
    assert int(s.count) == len(ps) - 1 and s.count.dtype == jnp.int32


@pytest.mark.parametrize("decay", [0.5, 0.9])
def test_plain_ema_starts_from_the_initial_params(decay):
    ps = trajectory()
    s = run(averaging.ema(decay, debias=False), ps)
    m = ps[0]["w"].astype(np.float64)
    for p in ps[1:]:
        m = decay * m + (1 - decay) * p["w"]
    np.testing.assert_allclose(s.mean["w"], m, rtol=1e-5, atol=1e-6)


def test_ema_decay_schedule_uses_the_update_count():
    ps = trajectory(5)
    sched = lambda count: 0.2 + 0.1 * count
    s = run(averaging.ema(sched, debias=False), ps)
    m = ps[0]["b"].astype(np.float64)
    for t, p in enumerate(ps[1:]):
        m = (0.2 + 0.1 * t) * m + (1 - (0.2 + 0.1 * t)) * p["b"]
    np.testing.assert_allclose(s.mean["b"], m, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("start,every", [(1, 1), (4, 1), (3, 4), (12, 5), (20, 1)])
def test_swa_equals_the_mean_of_its_snapshots(start, every):
    ps = trajectory(12)
    s = run(averaging.swa(start, every), ps)
    taken = [t for t in range(1, 13) if t >= start and (t - start) % every == 0]
    assert int(s.n) == len(taken)
    for k in ("w", "b"):
        # Before the first snapshot the "average" is the current params.
        expected = np.mean([ps[t][k] for t in taken], axis=0) if taken else ps[-1][k]
        np.testing.assert_allclose(s.mean[k], expected, rtol=1e-5, atol=1e-6)


def test_bf16_params_are_averaged_in_fp32():
    ps = [{"w": jnp.full((4,), 1.0 + i * 1e-3, jnp.bfloat16)} for i in range(50)]
    avg = averaging.ema(0.99)
    s = run(avg, ps)
    assert s.mean["w"].dtype == jnp.float32
    assert avg.value(s, like=ps[0])["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(
        s.mean["w"],
        np.sum([0.99 ** (49 - t) * 0.01 * float(ps[t]["w"][0]) for t in range(1, 50)])
        / (1 - 0.99**49), rtol=1e-5)


# ----------------------------------------------------------------- through make_step


def loss_fn(params, model_state, batch, key):
    x, y = batch
    pred = jnp.tanh(x @ params["w"]) @ params["v"]
    noise = 0.01 * jax.random.normal(key, pred.shape)
    return jnp.mean((pred + noise - y) ** 2), (model_state, {})


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {"w": jax.random.normal(k1, (3, 8)) / 2, "v": jax.random.normal(k2, (8, 1)) / 3}


def batches(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.normal(size=(16, 3)).astype(np.float32)
        out.append((x, np.sin(x[:, :1]) + x[:, 1:2]))
    return out


@pytest.mark.parametrize("avg", [averaging.ema(0.8), averaging.swa(3, 2)])
def test_make_step_keeps_the_average_of_its_params(avg):
    step = jt.train.make_step(loss_fn, jt.adam(1e-2), averaging=avg)
    state = step.init(init_params(jax.random.key(0)), jax.random.key(1))
    seen = [jax.tree.map(np.asarray, state.params)]
    for b in batches(8):
        state, _ = step(state, b)
        seen.append(jax.tree.map(np.asarray, state.params))
    ref = run(avg, seen)
    np.testing.assert_allclose(step.eval_params(state)["w"], ref.mean["w"], rtol=1e-6)


def test_ensemble_of_n_equals_n_separate_trainings():
    step = jt.train.make_step(loss_fn, jt.adam(1e-2))
    keys = jax.random.split(jax.random.key(5), 3)
    states = jax.jit(jax.vmap(lambda k: step.init(init_params(k), k)))(keys)
    # Member i starts exactly where a separate run from key i starts.
    singles = [jax.tree.map(lambda a, i=i: a[i], states) for i in range(3)]
    for k, single in zip(keys, singles):
        np.testing.assert_array_equal(single.params["w"], init_params(k)["w"])
    ens = averaging.ensemble_step(step)
    data = batches(5)
    for b in data:
        states, metrics = ens(states, b)
    assert metrics["loss"].shape == (3,)
    for i, single in enumerate(singles):
        for b in data:
            single, _ = step(single, b)
        for name in ("w", "v"):
            np.testing.assert_allclose(states.params[name][i], single.params[name],
                                       rtol=1e-5, atol=1e-6)
    # Predictions averaged over members.
    x = data[0][0]
    apply = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
    members = [apply(jax.tree.map(lambda a, i=i: a[i], states.params), x) for i in range(3)]
    np.testing.assert_allclose(averaging.ensemble_predict(apply, states.params, x),
                               np.mean(members, axis=0), rtol=1e-5, atol=1e-6)


def test_ensemble_with_one_batch_per_member():
    step = jt.train.make_step(loss_fn, jt.adam(1e-2))
    keys = jax.random.split(jax.random.key(2), 2)
    states = jax.jit(jax.vmap(lambda k: step.init(init_params(k), k)))(keys)
    single = jax.tree.map(lambda a: a[1], states)
    b0, b1 = batches(2, seed=3)
    stacked = jax.tree.map(lambda a, b: np.stack([a, b]), b0, b1)
    states, _ = averaging.ensemble_step(step, batch_axis=0)(states, stacked)
    single, _ = step(single, b1)
    np.testing.assert_allclose(states.params["w"][1], single.params["w"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make,error,match", [
    (lambda: averaging.ema(1.0), ValueError, r"ema: decay must be in \[0, 1\), got 1.0"),
    (lambda: averaging.ema(-0.1), ValueError, r"decay must be in \[0, 1\), got -0.1"),
    (lambda: averaging.swa(0), ValueError, r"swa: start must be an integer >= 1"),
    (lambda: averaging.swa(5, every=0), ValueError, r"every must be an integer >= 1 .*, got 0"),
    (lambda: averaging.ensemble_step(lambda s, b: (s, {}), batch_axis=1), ValueError,
     r"batch_axis must be None .* got 1"),
])
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_mismatched_params_tree_names_the_path():
    avg = averaging.ema(0.9)
    s = avg.init({"w": jnp.zeros(2), "b": jnp.zeros(1)})
    with pytest.raises(ValueError, match=r"ema.update: .*structures"):
        avg.update({"w": jnp.zeros(2)}, s)
