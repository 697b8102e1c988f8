"""make_step(..., flat_params=True) and fit: the params stored flat train like the tree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jtricks as jt
from jtricks import train

N, D, H, C, BS, STEPS = 80, 6, 16, 3, 8, 20
TRACES = {"loss": 0}


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {"l1": {"w": 0.3 * jax.random.normal(k1, (D, H)), "b": jnp.zeros(H)},
            "l2": {"w": 0.3 * jax.random.normal(k2, (H, C)), "b": jnp.zeros(C)},
            "scale": jnp.ones(())}


def forward(params, model_state, x, key=None):
    """A two-layer MLP with a batch-norm-like running mean and dropout."""
    h = x @ params["l1"]["w"] + params["l1"]["b"]
    mean = jnp.mean(h, axis=0)
    # (Subtracting the batch mean would zero the bias gradient: Adam would then
    # amplify its rounding noise, which differs between any two programs.)
    h = jax.nn.relu(h - jax.lax.stop_gradient(mean)) * params["scale"]
    if key is not None:
        h = jnp.where(jax.random.bernoulli(key, 0.9, h.shape), h / 0.9, 0.0)
    logits = h @ params["l2"]["w"] + params["l2"]["b"]
    return logits, {"mean": 0.9 * model_state["mean"] + 0.1 * mean}


def loss_fn(params, model_state, batch, key):
    TRACES["loss"] += 1  # counts traces (compilations), not calls
    x, y = batch
    logits, new_state = forward(params, model_state, x, key)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (new_state, {"acc": jnp.mean(logits.argmax(-1) == y)})


def eval_fn(params, model_state, eval_data):
    x, y = eval_data
    logits = x @ params["l1"]["w"] + params["l1"]["b"] - model_state["mean"]
    logits = jax.nn.relu(logits) * params["scale"] @ params["l2"]["w"] + params["l2"]["b"]
    return {"accuracy": jnp.mean(logits.argmax(-1) == y)}


def jt_tx():
    return jt.chain(jt.clip_by_global_norm(0.5), jt.adamw(3e-2, weight_decay=1e-2))


def start(step):
    return step.init(init_params(jax.random.key(0)), jax.random.key(1),
                     {"mean": jnp.zeros(H)})


def assert_close(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def run_steps(flat, n=STEPS):
    step = train.make_step(loss_fn, jt_tx(), averaging=jt.averaging.ema(0.9),
                           flat_params=flat)
    state, history = start(step), []
    x, y = data()
    for i in range(n):
        rows = slice((i * BS) % N, (i * BS) % N + BS)
        state, metrics = step(state, (x[rows], y[rows]))
        history.append(metrics)
    return step, state, jax.tree.map(lambda *v: jnp.stack(v), *history)


def test_flat_step_trains_like_the_tree_in_one_compilation():
    before = TRACES["loss"]
    tree_step, on_tree, m_tree = run_steps(False)
    flat_step, on_flat, m_flat = run_steps(True)
    assert TRACES["loss"] - before == 2  # one compilation each for all 20 steps
    assert isinstance(on_flat.params, jt.FlatParams)
    assert list(on_flat.params.vectors) == ["float32"]  # one vector for 5 arrays
    assert isinstance(on_flat.averages.mean, jt.FlatParams)
    assert_close(on_flat.params.tree(), on_tree.params)
    assert_close(flat_step.eval_params(on_flat), tree_step.eval_params(on_tree))
    assert_close(on_flat.model_state, on_tree.model_state)
    assert m_flat.keys() == m_tree.keys()
    for name in ("loss", "grad_norm", "acc", "learning_rate"):
        np.testing.assert_allclose(m_flat[name], m_tree[name], rtol=1e-6, err_msg=name)
    assert bool(jnp.all(m_flat["finite"]))


def test_fit_with_flat_params_equals_fit_on_the_tree():
    # An optax optimizer this time: adamw + clipping, EMA averaging, 2 epochs of 10.
    def fit(flat):
        tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(3e-2, weight_decay=1e-2))
        step = train.make_step(loss_fn, tx, averaging=jt.averaging.ema(0.9),
                               flat_params=flat)
        state, hist = train.fit(step, start(step), data(), batch_size=BS,
                                epochs=STEPS * BS // N, key=jax.random.key(2),
                                eval_data=data(1), eval_fn=eval_fn,
                                early_stopping=train.EarlyStopping(5, mode="max",
                                                                   restore_best=True),
                                monitor="accuracy")
        return step, state, hist

    tree_step, on_tree, h_tree = fit(False)
    flat_step, on_flat, h_flat = fit(True)
    assert int(on_flat.step) == int(on_tree.step) == STEPS
    assert isinstance(on_flat.params, jt.FlatParams)
    assert_close(on_flat.params.tree(), on_tree.params)
    assert_close(flat_step.eval_params(on_flat), tree_step.eval_params(on_tree))
    assert h_flat["epochs"] == h_tree["epochs"] and h_flat["best_epoch"] == h_tree["best_epoch"]
    for part in ("train", "eval"):
        assert h_flat[part].keys() == h_tree[part].keys()
        for k in h_tree[part]:
            np.testing.assert_allclose(h_flat[part][k], h_tree[part][k], rtol=1e-6)


def test_flat_state_round_trips_through_a_checkpoint(tmp_path):
    step, state, _ = run_steps(True, n=3)
    path = train.save(tmp_path / "ckpt", state, step=3)
    restored = train.restore(path, like=start(step))
    assert isinstance(restored.params, jt.FlatParams)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    # ... and the restored run continues bit for bit.
    x, y = data()
    batch = (x[:BS], y[:BS])
    copy = jax.tree.map(jnp.copy, state)
    after, _ = step(restored, batch)
    expected, _ = step(copy, batch)
    jax.tree.map(np.testing.assert_array_equal, after.params.vectors,
                 expected.params.vectors)


@pytest.mark.parametrize("tx, name", [
    (jt.chain(jt.adaptive_grad_clip(0.1), jt.sgd(0.1)), "AdaptiveGradClip"),
    (jt.adafactor(1e-2), "ScaleByFactoredRms"),
    (jt.muon(1e-2), "ScaleByMuon"),
    (jt.adamw(1e-2, mask={"l1": {"w": True, "b": False}, "l2": {"w": True, "b": False},
                          "scale": False}), "Masked"),
    (jt.param_groups(jt.adam(1e-2), {"*/b": {"learning_rate": 0.0}}), "ParamGroups"),
])
def test_shape_dependent_transforms_are_refused_at_init(tx, name):
    step = train.make_step(loss_fn, tx, flat_params=True)
    with pytest.raises(ValueError, match=rf"make_step.init: flat_params=True cannot run "
                                         rf".*{name}.*flat_params=False"):
        start(step)
    start(train.make_step(loss_fn, tx))  # the tree is fine


def test_an_optax_transform_that_needs_the_tree_is_refused_at_init():
    mask = {"l1": {"w": True, "b": False}, "l2": {"w": True, "b": False}, "scale": False}
    step = train.make_step(loss_fn, optax.masked(optax.adam(1e-2), mask), flat_params=True)
    with pytest.raises(ValueError, match=r"(?s)init failed on the flat params.*flat_params=False"):
        start(step)


def test_flat_params_on_a_mesh_and_bad_arguments_are_refused():
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(ValueError, match=r"flat_params=True does not run on a mesh.*"
                                         r"replicated"):
        train.make_step(loss_fn, jt.adam(1e-2), mesh=mesh, flat_params=True)
    with pytest.raises(TypeError, match="flat_params must be True or False"):
        train.make_step(loss_fn, jt.adam(1e-2), flat_params="yes")
    tree_state = start(train.make_step(loss_fn, jt.adam(1e-2)))
    with pytest.raises(TypeError, match="built with flat_params=True"):
        train.make_step(loss_fn, jt.adam(1e-2), flat_params=True)(tree_state, data())
