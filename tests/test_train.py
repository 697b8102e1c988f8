"""make_step and fit: numbers, keys, metrics, model state, bad input, the on-device loop."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.extend import core as jex_core

import jtricks as jt
from jtricks import train

N, D, C, BS = 40, 4, 3, 8


def data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
    return x, y


def init_params(key):
    return {"w": 0.1 * jax.random.normal(key, (D, C)), "b": jnp.zeros(C)}


def xent(params, x, y):
    logits = x @ params["w"] + params["b"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))


def loss_fn(params, model_state, batch, key):
    """Counts its calls in model_state and reports a dropout-key draw as a metric."""
    x, y = batch
    keep = jax.random.bernoulli(key, 0.9, x.shape)
    loss = xent(params, jnp.where(keep, x / 0.9, 0.0), y)
    new_state = {"calls": model_state["calls"] + 1}
    return loss, (new_state, {"draw": jax.random.uniform(key)})


def fresh(tx=None, averaging=None, seed=0):
    step = train.make_step(loss_fn, tx or jt.adam(1e-2), averaging=averaging)
    state = step.init(init_params(jax.random.key(seed)), jax.random.key(seed + 1),
                      {"calls": jnp.zeros([], jnp.int32)})
    return step, state


def batch_at(t):
    x, y = data()
    i = (t * BS) % N
    return x[i:i + BS], y[i:i + BS]


def test_step_equals_hand_written_update():
    step, state = fresh()
    params = init_params(jax.random.key(0))
    tx = jt.adam(1e-2)
    opt = tx.init(params)
    base = jax.random.key(1)
    for t in range(3):
        batch = batch_at(t)
        state, metrics = step(state, batch)
        key = jax.random.fold_in(base, t)
        grads = jax.grad(lambda p, b=batch, k=key: loss_fn(p, {"calls": 0}, b, k)[0])(params)
        updates, opt = tx.update(grads, opt, params)
        params = jt.apply_updates(params, updates)
        np.testing.assert_allclose(metrics["grad_norm"], jt.tree.global_norm(grads), rtol=1e-5)
        np.testing.assert_allclose(metrics["draw"], jax.random.uniform(key), rtol=0)
    for k in params:
        np.testing.assert_allclose(state.params[k], params[k], rtol=1e-5, atol=1e-7)
    assert int(state.step) == 3 and state.step.dtype == jnp.int32
    assert int(state.model_state["calls"]) == 3


def test_metrics_report_scheduled_learning_rate():
    step, state = fresh(jt.adam(lambda count: 0.1 / (1.0 + count)))
    for t in range(3):
        state, metrics = step(state, batch_at(t))
        assert set(metrics) == {"loss", "grad_norm", "finite", "learning_rate", "draw"}
        np.testing.assert_allclose(metrics["learning_rate"], 0.1 / (1.0 + t), rtol=1e-6)
        assert bool(metrics["finite"])


def test_optax_transform_is_accepted_and_equals_jtricks():
    step_a, state_a = fresh(jt.adam(1e-2))
    step_b, state_b = fresh(optax.adam(1e-2))
    for t in range(3):
        state_a, _ = step_a(state_a, batch_at(t))
        state_b, metrics_b = step_b(state_b, batch_at(t))
    assert "learning_rate" not in metrics_b  # optax hides its rate in a closure
    for k in ("w", "b"):
        np.testing.assert_allclose(state_a.params[k], state_b.params[k], rtol=1e-4, atol=1e-6)


def test_new_learning_rate_does_not_recompile():
    # Both steps share one loss function, and every trace of the jitted step traces it
    # once: chex refuses a second trace. The wrapper is new, so the first step traces
    # it; a second trace would mean the step compiled again for adam(3e-4).
    chex.clear_trace_counter()
    counted = chex.assert_max_traces(loss_fn, n=1)
    states = []
    for tx in (jt.adam(1e-2), jt.adam(3e-4)):
        step = jt.train.make_step(counted, tx)
        state = step.init(init_params(jax.random.key(0)), jax.random.key(1),
                          {"calls": jnp.zeros([], jnp.int32)})
        state, _ = step(state, batch_at(0))
        states.append(state)
    assert not np.allclose(states[0].params["w"], states[1].params["w"])


def test_state_is_donated_and_init_copies_params():
    params = init_params(jax.random.key(0))
    step = train.make_step(loss_fn, jt.adam(1e-2), averaging=jt.averaging.ema(0.9))
    state = step.init(params, jax.random.key(1), {"calls": jnp.zeros([], jnp.int32)})
    old = state
    state, _ = step(state, batch_at(0))
    assert old.params["w"].is_deleted()
    assert not params["w"].is_deleted()  # the caller's params are not consumed


def test_nonfinite_step_keeps_model_state():
    def nan_loss(params, model_state, batch, key):
        loss, (ms, m) = loss_fn(params, model_state, batch, key)
        return loss * jnp.where(batch[0][0, 0] > 100, jnp.nan, 1.0), (ms, m)

    step = train.make_step(nan_loss, jt.adam(1e-2))
    state = step.init(init_params(jax.random.key(0)), jax.random.key(1),
                      {"calls": jnp.zeros([], jnp.int32)})
    x, y = batch_at(0)
    state, m1 = step(state, (x, y))
    x_bad = x.copy()
    x_bad[0, 0] = 1e3
    state, m2 = step(state, (x_bad, y))
    assert bool(m1["finite"]) and not bool(m2["finite"])
    assert int(state.model_state["calls"]) == 1


def test_ensemble_of_vmapped_states_runs_through_apply():
    step, _ = fresh()
    keys = jax.random.split(jax.random.key(3), 2)
    states = jax.vmap(lambda k: step.init(init_params(k), k,
                                          {"calls": jnp.zeros([], jnp.int32)}))(keys)
    states, metrics = jax.jit(jax.vmap(step.apply, in_axes=(0, None)))(states, batch_at(0))
    assert metrics["loss"].shape == (2,) and states.step.tolist() == [1, 1]


def plain_loss(params, model_state, batch, key):
    """Deterministic (no dropout), so gradients can be checked by hand."""
    return xent(params, *batch), (model_state, {})


def test_gradient_accumulation_through_the_wrapper():
    params = init_params(jax.random.key(0))
    step = train.make_step(plain_loss, jt.accumulate(jt.adam(1e-2), every_k=2))
    state = step.init(params, jax.random.key(1))
    state, _ = step(state, batch_at(0))
    np.testing.assert_array_equal(state.params["w"], params["w"])  # micro-step 1 of 2
    state, _ = step(state, batch_at(1))
    grads = [jax.grad(lambda p, t=t: xent(p, *batch_at(t)))(params) for t in (0, 1)]
    mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    tx = jt.adam(1e-2)
    updates, _ = tx.update(mean, tx.init(params), params)
    expect = jt.apply_updates(params, updates)
    np.testing.assert_allclose(state.params["w"], expect["w"], rtol=1e-5, atol=1e-7)


def test_skip_nonfinite_keeps_params_and_model_state():
    def loss(params, model_state, batch, key):
        value = xent(params, *batch) * jnp.where(batch[0][0, 0] > 100, jnp.nan, 1.0)
        return value, ({"calls": model_state["calls"] + 1}, {})

    step = train.make_step(loss, jt.skip_nonfinite(jt.adam(1e-2)))
    state = step.init(init_params(jax.random.key(0)), jax.random.key(1),
                      {"calls": jnp.zeros([], jnp.int32)})
    state, _ = step(state, batch_at(0))
    before = jax.tree.map(np.asarray, state.params)
    x, y = batch_at(1)
    x = x.copy()
    x[0, 0] = 1e3
    state, metrics = step(state, (x, y))
    assert not bool(metrics["finite"])
    np.testing.assert_array_equal(state.params["w"], before["w"])
    assert int(state.model_state["calls"]) == 1 and int(state.step) == 2
    state, metrics = step(state, batch_at(2))
    assert bool(metrics["finite"]) and not np.array_equal(state.params["w"], before["w"])


def test_reduce_on_plateau_is_fed_the_loss():
    # A loss that never improves: the plateau halves the rate after `patience` steps.
    def flat(params, model_state, batch, key):
        return 0.0 * jnp.sum(params["w"]) + 1.0, (model_state, {})

    tx = jt.chain(jt.adam(1e-2), jt.reduce_on_plateau(factor=0.5, patience=2))
    step = train.make_step(flat, tx)
    state = step.init(init_params(jax.random.key(0)), jax.random.key(1))
    rates = []
    for t in range(5):
        state, metrics = step(state, batch_at(t))
        rates.append(float(metrics["learning_rate"]))
    np.testing.assert_allclose(rates, [1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3], rtol=1e-6)


# ----------------------------------------------------------------- bad input


def _bad(out):
    return lambda params, model_state, batch, key: out(params, model_state, batch)


BAD_LOSS_FNS = [
    ("non-scalar loss",
     _bad(lambda p, ms, b: (jnp.sum(b[0] @ p["w"], axis=1), (ms, {}))),
     ValueError, r"scalar loss, got an array of shape \(8,\)"),
    ("bare loss",
     _bad(lambda p, ms, b: xent(p, *b)),
     TypeError, r"must return \(loss, \(model_state, metrics\)\)"),
    ("reserved metric",
     _bad(lambda p, ms, b: (xent(p, *b), (ms, {"loss": 0.0}))),
     ValueError, r"reserved names \['loss'\]"),
    ("model_state dtype changed",
     _bad(lambda p, ms, b: (xent(p, *b), ({"calls": ms["calls"] + 0.5}, {}))),
     ValueError, r"model_state at \['calls'\] from \(\) int32 to \(\) float32"),
    ("model_state structure changed",
     _bad(lambda p, ms, b: (xent(p, *b), ({"calls": ms["calls"], "x": 1}, {}))),
     ValueError, r"different structure"),
]


@pytest.mark.parametrize("name,fn,error,match", BAD_LOSS_FNS, ids=[c[0] for c in BAD_LOSS_FNS])
def test_bad_loss_fn_output_is_named(name, fn, error, match):
    step = train.make_step(fn, jt.adam(1e-2))
    state = step.init(init_params(jax.random.key(0)), jax.random.key(1),
                      {"calls": jnp.zeros([], jnp.int32)})
    with pytest.raises(error, match=match):
        step(state, batch_at(0))


@pytest.mark.parametrize("change,match", [
    (lambda x, y: (x[:5], y[:5]), r"batch leaf \[0\] has shape \(5, 4\) float32, but the "
                                  r"first batch had \(8, 4\) float32"),
    (lambda x, y: (x, y.astype(np.float32)), r"batch leaf \[1\] has shape \(8,\) float32"),
    (lambda x, y: {"x": x, "y": y}, r"structure differs from the first batch"),
])
def test_batch_that_differs_from_the_first_is_refused(change, match):
    step, state = fresh()
    state, _ = step(state, batch_at(0))
    with pytest.raises(ValueError, match=match):
        step(state, change(*batch_at(1)))


def test_bad_arguments():
    with pytest.raises(TypeError, match="loss_fn must be a function"):
        train.make_step(3, jt.adam(1e-3))
    with pytest.raises(TypeError, match="gradient transformation"):
        train.make_step(loss_fn, "adam")
    with pytest.raises(TypeError, match="averaging must have init/update/value"):
        train.make_step(loss_fn, jt.adam(1e-3), averaging=0.99)
    step, _ = fresh()
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        step.init(init_params(jax.random.key(0)), jnp.zeros(3))


# ----------------------------------------------------------------- fit


def eval_fn(params, model_state, eval_data):
    x, y = eval_data
    logits = x @ params["w"] + params["b"]
    return {"loss": xent(params, x, y), "accuracy": jnp.mean(logits.argmax(-1) == y)}


def test_fit_epoch_equals_the_same_steps_one_by_one():
    x, y = data()
    key = jax.random.key(7)
    step, state = fresh()
    state, hist = train.fit(step, state, (x, y), batch_size=16, epochs=2, key=key)
    ref_step, ref = fresh()
    losses = []
    for _ in range(2):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, ref.step), N))
        for b in range(N // 16):
            idx = perm[b * 16:(b + 1) * 16]
            ref, m = ref_step(ref, (x[idx], y[idx]))
            losses.append(float(m["loss"]))
    np.testing.assert_allclose(state.params["w"], ref.params["w"], rtol=1e-5, atol=1e-7)
    assert int(state.step) == int(ref.step) == 4
    np.testing.assert_allclose(hist["train"]["loss"], np.reshape(losses, (2, 2)).mean(1),
                               rtol=1e-5)
    assert hist["epochs"] == 2 and hist["best_epoch"] is None and not hist["stopped"]
    assert hist["eval"] == {}


def scripted_eval(params, model_state, scripted):
    # model_state counts steps; 2 steps per epoch (N=40, batch 16) picks this epoch's value.
    return {"score": scripted[model_state["calls"] // 2 - 1]}


@pytest.mark.parametrize("mode,scores,best,last,with_callback", [
    ("min", [5.0, 4.0, 3.0, 3.5, 2.9, 3.1, 3.2, 3.0, 1.0], 4, 7, False),
    ("max", [0.1, 0.5, 0.4, 0.6, 0.6, 0.55, 0.9, 0.2, 0.1, 0.3], 6, 9, False),
    ("max", [0.1, 0.5, 0.4, 0.6, 0.6, 0.55, 0.9, 0.2, 0.1, 0.3], 6, 9, True),
])
def test_fit_stops_at_the_right_epoch_and_restores_best(mode, scores, best, last,
                                                        with_callback):
    x, y = data()
    key = jax.random.key(2)
    es = train.EarlyStopping(patience=3, mode=mode)
    step, state = fresh()
    seen = []
    callback = (lambda e, s, m: seen.append((e, int(s.step), float(m["eval"]["score"])))
                if with_callback else None)
    state, hist = train.fit(step, state, (x, y), batch_size=16, epochs=20, key=key,
                            eval_data=jnp.asarray(scores), eval_fn=scripted_eval,
                            early_stopping=es, monitor="score", progress=True,
                            callback=callback)
    assert hist["stopped"] and hist["epochs"] == last + 1 and hist["best_epoch"] == best
    if with_callback:
        assert seen == [(e, 2 * (e + 1), np.float32(scores[e])) for e in range(last + 1)]
    np.testing.assert_allclose(hist["eval"]["score"], scores[:last + 1])
    assert int(state.step) == 2 * (last + 1)  # step and opt_state stay the last ones
    # The returned params are those after epoch `best`: replay that many epochs.
    step_ref, ref = fresh()
    ref, _ = train.fit(step_ref, ref, (x, y), batch_size=16, epochs=best + 1, key=key)
    np.testing.assert_allclose(state.params["w"], ref.params["w"], rtol=1e-6, atol=1e-8)
    assert int(state.model_state["calls"]) == 2 * (best + 1)


def test_fit_with_ema_evaluates_the_average():
    x, y = data()
    step, state = fresh(averaging=jt.averaging.ema(0.5))
    state, hist = train.fit(step, state, (x, y), batch_size=8, epochs=3, key=jax.random.key(0),
                            eval_data=(x, y), eval_fn=eval_fn)
    expect = eval_fn(step.eval_params(state), state.model_state, (x, y))
    np.testing.assert_allclose(hist["eval"]["loss"][-1], expect["loss"], rtol=1e-6)
    assert not np.allclose(step.eval_params(state)["w"], state.params["w"])
    assert set(hist["train"]) == {"loss", "grad_norm", "finite", "learning_rate", "draw"}
    assert hist["train"]["loss"].shape == (3,)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"batch_size": 41}, ValueError, r"batch_size=41 is larger than the 40 training examples"),
    ({"batch_size": 0}, ValueError, r"batch_size must be an integer >= 1, got 0"),
    ({"train_data": (np.zeros((40, 4), np.float32), np.zeros(39, np.int32))}, ValueError,
     r"disagree on the number of examples: \[0\] has 40, \[1\] has 39"),
    ({"early_stopping": train.EarlyStopping(2), "monitor": "acc"}, ValueError,
     r"monitor='acc' is not among the eval_fn metrics \['accuracy', 'loss'\]"),
    ({"eval_fn": lambda p, ms, d: d[0]}, TypeError, r"eval_fn must return a dict of scalars"),
])
def test_fit_bad_input(kwargs, error, match):
    x, y = data()
    step, state = fresh()
    args = {"train_data": (x, y), "batch_size": 8, "epochs": 1, "key": jax.random.key(0),
            "eval_data": (x, y), "eval_fn": eval_fn, **kwargs}
    with pytest.raises(error, match=match):
        train.fit(step, state, args.pop("train_data"), **args)


def test_fit_batch_must_match_the_steps_first_batch():
    x, y = data()
    step, state = fresh()
    state, _ = step(state, batch_at(0))
    with pytest.raises(ValueError, match=r"fit: batch leaf \[0\] has shape \(16, 4\)"):
        train.fit(step, state, (x, y), batch_size=16, epochs=1, key=jax.random.key(0))


# --- convolutions in a loop body (XLA CPU's fast kernel takes only NHWC / HWIO) ---------

NHWC = tuple(jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2)))


def conv_dims(jaxpr):
    """The dimension numbers of every convolution in ``jaxpr``, at any depth."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive is jax.lax.conv_general_dilated_p:
            out.append(tuple(eqn.params["dimension_numbers"]))
        for sub in jex_core.jaxprs_in_params(eqn.params):
            out += conv_dims(sub)
    return out


def conv_init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"nchw": 0.3 * jax.random.normal(k1, (4, 2, 3, 3)),  # OIHW
            "nhwc": 0.3 * jax.random.normal(k2, (3, 3, 4, 4)),  # HWIO
            "w": 0.3 * jax.random.normal(k3, (4, C))}


def conv_loss(params, model_state, batch, key):
    """An NCHW convolution, then an NHWC one under a jit: both layouts and a nesting."""
    x, y = batch
    h = jax.lax.conv_general_dilated(x, params["nchw"], (2, 2), "SAME",
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
    h = jax.jit(lambda h, k: jax.lax.conv_general_dilated(
        h, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))(
        jax.nn.relu(h).transpose(0, 2, 3, 1), params["nhwc"])
    logits = jax.nn.relu(h).mean((1, 2)) @ params["w"]
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
    return loss, (model_state, {})


def conv_data(n=N):
    x = np.random.default_rng(3).normal(size=(n, 2, 8, 8)).astype(np.float32)
    return x, (x[:, 0, 0, 0] > 0).astype(np.int32)


def test_canonical_convs_keeps_values_and_leaves_only_nhwc_convs():
    canonical_convs = jt.train.canonical_convs  # the public name
    step = train.make_step(conv_loss, jt.adam(1e-2))
    state = step.init(conv_init(jax.random.key(0)), jax.random.key(1), None)
    x, y = conv_data(2 * BS)
    batches = (x.reshape(2, BS, *x.shape[1:]), y.reshape(2, BS))

    def epoch(body):
        return lambda s, b: jax.lax.scan(body, s, b)

    plain = jax.make_jaxpr(epoch(step.apply))(state, batches)
    assert set(conv_dims(plain.jaxpr)) - {NHWC}, "the backward pass has other layouts"
    rewritten = jax.make_jaxpr(epoch(canonical_convs(step.apply)))(state, batches)
    assert set(conv_dims(rewritten.jaxpr)) == {NHWC}
    assert len(conv_dims(rewritten.jaxpr)) == len(conv_dims(plain.jaxpr))
    (want, want_m), (got, got_m) = (jax.jit(epoch(f))(state, batches)
                                    for f in (step.apply, canonical_convs(step.apply)))
    chex.assert_trees_all_close(got.params, want.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_m["loss"], want_m["loss"], rtol=1e-5)
    # Nothing to rewrite: the function is traced as it is.
    dense = jax.make_jaxpr(canonical_convs(lambda p: xent(p, *data())))(init_params(
        jax.random.key(0)))
    assert str(dense) == str(jax.make_jaxpr(lambda p: xent(p, *data()))(init_params(
        jax.random.key(0))))


def test_fit_of_a_conv_model_equals_the_same_steps_one_by_one():
    x, y = conv_data()
    key = jax.random.key(5)

    def fresh_conv():
        step = train.make_step(conv_loss, jt.adam(1e-2))
        return step, step.init(conv_init(jax.random.key(0)), jax.random.key(1), None)

    step, state = fresh_conv()
    state, hist = train.fit(step, state, (x, y), batch_size=BS, epochs=2, key=key)
    ref_step, ref = fresh_conv()
    losses = []
    for _ in range(2):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, ref.step), N))
        for b in range(N // BS):
            idx = perm[b * BS:(b + 1) * BS]
            ref, m = ref_step(ref, (x[idx], y[idx]))
            losses.append(float(m["loss"]))
    chex.assert_trees_all_close(state.params, ref.params, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(hist["train"]["loss"], np.reshape(losses, (2, -1)).mean(1),
                               rtol=1e-5)
