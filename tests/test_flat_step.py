"""make_step(..., flat_params=True) and fit: the params stored flat train like the tree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

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
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


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


def continue_from(step, state, start_at, n):
    x, y = data()
    for i in range(start_at, start_at + n):
        rows = slice((i * BS) % N, (i * BS) % N + BS)
        state, _ = step(state, (x[rows], y[rows]))
    return state


@pytest.mark.parametrize("saved_flat", [False, True])
def test_a_checkpoint_crosses_between_tree_and_flat_params(tmp_path, saved_flat):
    # 10 steps in one form, saved, restored into the other form, 10 more steps there:
    # the same numbers as 20 steps in the first form (Adam's moments and the EMA are
    # converted along with the params; the counts, key and model state are read as is).
    def make(flat):
        return train.make_step(loss_fn, jt_tx(), averaging=jt.averaging.ema(0.9),
                               flat_params=flat)

    first, second = make(saved_flat), make(not saved_flat)
    half = continue_from(first, start(first), 0, 10)
    path = train.save(tmp_path / "ckpt", half, step=10)
    whole = continue_from(first, half, 10, 10)
    restored = train.restore(path, like=start(second))
    assert isinstance(restored.params, jt.FlatParams) is (not saved_flat)
    assert int(restored.step) == 10
    resumed = continue_from(second, restored, 10, 10)
    assert_close(second.eval_params(resumed), first.eval_params(whole))
    adam_r, adam_w = resumed.opt_state[1][0], whole.opt_state[1][0]
    for a, b in [(resumed.params, whole.params), (adam_r.mu, adam_w.mu),
                 (adam_r.nu, adam_w.nu), (resumed.averages.mean, whole.averages.mean)]:
        assert isinstance(a, jt.FlatParams) is (not saved_flat)
        assert_close(as_tree(a), as_tree(b))
    assert_close(resumed.model_state, whole.model_state)


def as_tree(x):
    return x.tree() if isinstance(x, jt.FlatParams) else x


def test_a_checkpoint_that_cannot_cross_is_refused_with_the_leaf(tmp_path):
    tree_step = train.make_step(loss_fn, jt.adam(1e-2))
    path = train.save(tmp_path / "ckpt", start(tree_step), step=0)
    # Another optimizer: its state has other leaves than the saved one's.
    flat_step = train.make_step(loss_fn, jt.sgd(1e-2, momentum=0.9), flat_params=True)
    with pytest.raises(train.CheckpointError, match=r"(?s)other form.*cannot be mapped.*"
                                                    r"leaf #\d+"):
        train.restore(path, like=start(flat_step))


def test_grad_norm_stays_finite_when_the_squares_overflow():
    # Gradients of ~1e20 per entry: their squares overflow fp32, the norm does not.
    def huge(params, model_state, batch, key):
        loss = sum(jnp.sum(p) for p in jax.tree.leaves(params)) * 1e20
        return loss, (model_state, {})

    params = {f"p{i}": jnp.ones((3,)) for i in range(4)} | {"big": jnp.ones((5000,))}
    for flat in (False, True):
        step = train.make_step(huge, jt.sgd(0.0), flat_params=flat)
        _, metrics = step(step.init(params, jax.random.key(0)), None)
        np.testing.assert_allclose(metrics["grad_norm"], 1e20 * np.sqrt(5012), rtol=1e-5)
        assert bool(metrics["finite"])


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


def test_flat_params_with_tensor_parallel_specs_and_bad_arguments_are_refused():
    mesh = jax.make_mesh((1,), ("data",))
    specs = {"l1": {"w": P(), "b": P()}, "l2": {"w": P(), "b": P()}, "scale": P()}
    with pytest.raises(ValueError, match=r"(?s)flat_params=True cannot take param_sharding "
                                         r"as a tree of PartitionSpecs.*Keep "
                                         r"flat_params=False"):
        train.make_step(loss_fn, jt.adam(1e-2), mesh=mesh, param_sharding=specs,
                        flat_params=True)
    with pytest.raises(TypeError, match="flat_params must be True or False"):
        train.make_step(loss_fn, jt.adam(1e-2), flat_params="yes")
    tree_state = start(train.make_step(loss_fn, jt.adam(1e-2)))
    with pytest.raises(TypeError, match="built with flat_params=True"):
        train.make_step(loss_fn, jt.adam(1e-2), flat_params=True)(tree_state, data())
    step = train.make_step(loss_fn, jt.muon(1e-2), mesh=mesh, flat_params=True)
    with pytest.raises(ValueError, match=r"flat_params=True cannot run.*ScaleByMuon"):
        start(step)


def test_flat_step_on_a_one_device_mesh_equals_the_step_without_one():
    mesh = jax.make_mesh((1,), ("data",))
    _, plain, m_plain = run_steps(True, n=4)
    step = train.make_step(loss_fn, jt_tx(), averaging=jt.averaging.ema(0.9), mesh=mesh,
                           zero=True, flat_params=True)
    state = start(step)
    x, y = data()
    for i in range(4):
        state, m = step(state, (x[i * BS:(i + 1) * BS], y[i * BS:(i + 1) * BS]))
    assert isinstance(state.params, jt.FlatParams)
    assert_close(state.params.tree(), plain.params.tree())
    assert_close(step.eval_params(state), plain.averages.mean.tree())
    np.testing.assert_allclose(m["loss"], m_plain["loss"][-1], rtol=1e-6)


def start_padded(step, pad_to):
    """A flat step's state built from params padded to ``pad_to`` (what a mesh of
    ``pad_to`` devices stores), on one device."""
    return step.init(jt.flat_params(init_params(jax.random.key(0)), pad_to=pad_to),
                     jax.random.key(1), {"mean": jnp.zeros(H)})


@pytest.mark.parametrize("saved, into", [("flat8", "tree"), ("tree", "flat8"),
                                         ("flat8", "flat3")])
def test_a_checkpoint_crosses_between_paddings(tmp_path, saved, into):
    # As above with the vectors padded as on 8 (or 3) devices: saving drops nothing
    # but padding, restoring re-pads; the padding stays zero and the numbers agree.
    def make(form):
        step = train.make_step(loss_fn, jt_tx(), averaging=jt.averaging.ema(0.9),
                               flat_params=form != "tree")
        return step, (start(step) if form == "tree" else start_padded(step, int(form[4:])))

    (first, s0), (second, like) = make(saved), make(into)
    half = continue_from(first, s0, 0, 5)
    path = train.save(tmp_path / "ckpt", half, step=5)
    whole = continue_from(first, half, 5, 5)
    restored = train.restore(path, like=like)
    assert jax.tree.map(np.shape, restored) == jax.tree.map(np.shape, like)
    resumed = continue_from(second, restored, 5, 5)
    assert_close(second.eval_params(resumed), first.eval_params(whole))
    adam_r, adam_w = resumed.opt_state[1][0], whole.opt_state[1][0]
    for a, b in [(resumed.params, whole.params), (adam_r.mu, adam_w.mu),
                 (adam_r.nu, adam_w.nu), (resumed.averages.mean, whole.averages.mean)]:
        assert_close(as_tree(a), as_tree(b))
        if isinstance(a, jt.FlatParams):  # the padding stayed zero
            n = a.sizes()["float32"]
            assert not np.any(np.asarray(a.vectors["float32"][n:]))
