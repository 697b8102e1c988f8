"""Interop: jtricks inside optax.chain, optax inside jt.chain, flax linen TrainState and
flax nnx Optimizer, each giving the pure-optax numbers."""

from __future__ import annotations

import typing

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from optax import contrib

import jtricks as jt

STEPS = 30


def _tree():
    rng = np.random.default_rng(0)
    shapes = {"dense": {"w": (4, 3), "b": (3,)}, "blocks": [(2, 3, 2), ()], "gain": (5,)}
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s), jnp.float32), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))


PARAMS = _tree()


def _run(tx, apply=optax.apply_updates, value=False):
    """STEPS updates on a smooth loss under lax.scan; returns the final params."""

    def step(carry, i):
        params, state = carry
        grads = jax.tree.map(lambda p: p + jnp.sin(3 * p + i), params)
        extra = {"value": 5.0 / (1.0 + i)} if value else {}
        updates, state = tx.update(grads, state, params, **extra)
        return (apply(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (PARAMS, tx.init(PARAMS)),
                                  jnp.arange(STEPS, dtype=jnp.float32))
    return params


_MASK = {"dense": {"w": True, "b": False}, "blocks": [True, False], "gain": True}

# (id, a mixed transform, its pure-optax twin)
MIXED = [
    ("jt_blocks_in_optax_chain",
     lambda: optax.chain(optax.clip_by_global_norm(1.0), jt.scale_by_adam(b1=0.8),
                         jt.scale_by_learning_rate(0.05)),
     lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(b1=0.8),
                         optax.scale_by_learning_rate(0.05))),
    ("jt_optimizer_in_optax_chain",
     lambda: optax.chain(optax.add_decayed_weights(1e-2), jt.adam(0.05)),
     lambda: optax.chain(optax.add_decayed_weights(1e-2), optax.adam(0.05))),
    ("jt_wrappers_in_optax_chain",
     lambda: optax.chain(jt.masked(jt.scale(0.5), _MASK), jt.skip_nonfinite(jt.sgd(0.1, 0.9))),
     lambda: optax.chain(optax.masked(optax.scale(0.5), _MASK),
                         optax.apply_if_finite(optax.sgd(0.1, 0.9), 10**6))),
    ("optax_in_jt_chain",
     lambda: jt.chain(optax.clip_by_global_norm(1.0), jt.scale_by_adam(b1=0.8),
                      optax.scale_by_learning_rate(0.05)),
     lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(b1=0.8),
                         optax.scale_by_learning_rate(0.05))),
    ("optax_in_jt_wrappers",
     lambda: jt.accumulate(jt.masked(optax.adam(0.05), _MASK), 2),
     lambda: optax.MultiSteps(optax.masked(optax.adam(0.05), _MASK), 2)),
    ("jt_inside_optax_wrappers",
     lambda: optax.MultiSteps(optax.masked(jt.adam(0.05), _MASK), 2),
     lambda: optax.MultiSteps(optax.masked(optax.adam(0.05), _MASK), 2)),
    ("jt_schedule_in_optax",
     lambda: optax.adam(jt.schedules.warmup_cosine_decay(0.0, 0.05, 5, STEPS)),
     lambda: optax.adam(optax.warmup_cosine_decay_schedule(0.0, 0.05, 5, STEPS))),
]


@pytest.mark.parametrize("name, mixed, pure", MIXED, ids=[m[0] for m in MIXED])
def test_mixed_chains_give_pure_optax_numbers(name, mixed, pure):
    got = jax.jit(lambda: _run(mixed()))()
    want = jax.jit(lambda: _run(pure()))()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
    assert not np.allclose(got["dense"]["w"], PARAMS["dense"]["w"])


def test_plateau_in_optax_chain_needs_the_extra_args_marker():
    # optax.chain forwards `value` only to GradientTransformationExtraArgs; wrapping the
    # jtricks transform's (init, update) pair in that marker gives optax's numbers.
    ours = optax.chain(optax.adam(0.05), optax.GradientTransformationExtraArgs(
        *jt.reduce_on_plateau(factor=0.5, patience=2)))
    theirs = optax.chain(optax.adam(0.05), contrib.reduce_on_plateau(factor=0.5, patience=2))
    got = jax.jit(lambda: _run(ours, value=True))()
    want = jax.jit(lambda: _run(theirs, value=True))()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


# --- flax ---------------------------------------------------------------------------

_rng = np.random.default_rng(1)
X = jnp.asarray(_rng.standard_normal((64, 3)), jnp.float32)
Y = jnp.sin(X.sum(axis=1, keepdims=True))


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.relu(nn.Dense(16)(x)))


@jax.jit
def _linen_step(state):
    def loss(p):
        return jnp.mean((state.apply_fn({"params": p}, X) - Y) ** 2)

    value, grads = jax.value_and_grad(loss)(state.params)
    return state.apply_gradients(grads=grads), value


def _linen_losses(tx):
    model = LinenMLP()
    params = model.init(jax.random.key(0), X)["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    losses = []
    for _ in range(STEPS):
        state, value = _linen_step(state)
        losses.append(float(value))
    return np.asarray(losses)


LINEN = [
    ("adam", lambda: jt.adam(1e-2), lambda: optax.adam(1e-2)),
    ("adam_schedule", lambda: jt.adam(jt.schedules.cosine_decay(1e-2, STEPS, alpha=0.1)),
     lambda: optax.adam(optax.cosine_decay_schedule(1e-2, STEPS, alpha=0.1))),
    ("skip_nonfinite_sgd", lambda: jt.skip_nonfinite(jt.sgd(0.05, momentum=0.9)),
     lambda: optax.apply_if_finite(optax.sgd(0.05, momentum=0.9), 10**6)),
]


@pytest.mark.parametrize("name, ours, theirs", LINEN, ids=[c[0] for c in LINEN])
def test_flax_train_state_trains_like_optax(name, ours, theirs):
    tx = ours()
    assert hash(tx) == hash(ours())  # TrainState keeps tx as a static field
    got = _linen_losses(tx)
    assert got[-1] < 0.5 * got[0]
    np.testing.assert_allclose(got, _linen_losses(theirs()), rtol=1e-4)


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(3, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


@nnx.jit
def _nnx_step(model, optimizer):
    value, grads = nnx.value_and_grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
    optimizer.update(model, grads)
    return value


def _nnx_losses(tx, optimizer_type=nnx.Optimizer):
    model = NnxMLP(nnx.Rngs(0))
    optimizer = optimizer_type(model, tx, wrt=nnx.Param)
    return np.asarray([float(_nnx_step(model, optimizer)) for _ in range(STEPS)])


NNX = [
    ("adam", lambda: jt.adam(1e-2), lambda: optax.adam(1e-2)),
    ("adam_schedule",
     lambda: jt.adam(jt.schedules.warmup_cosine_decay(0.0, 1e-2, 5, STEPS)),
     lambda: optax.adam(optax.warmup_cosine_decay_schedule(0.0, 1e-2, 5, STEPS))),
]


@pytest.mark.parametrize("name, ours, theirs", NNX, ids=[c[0] for c in NNX])
def test_flax_nnx_optimizer_trains_like_optax(name, ours, theirs):
    got = _nnx_losses(ours())
    assert got[-1] < 0.5 * got[0]
    np.testing.assert_allclose(got, _nnx_losses(theirs()), rtol=1e-4)


class DataOptimizer(nnx.Optimizer):
    """nnx keeps ``tx`` static; array hyperparameters need it declared as data."""

    tx: typing.Any = nnx.data()


def test_flax_nnx_optimizer_with_array_hyperparameters():
    # An array learning rate is data, so nnx refuses it in a static attribute...
    with pytest.raises(ValueError, match="static attribute 'tx'"):
        nnx.Optimizer(NnxMLP(nnx.Rngs(0)), jt.adam(jnp.asarray(1e-2)), wrt=nnx.Param)
    # ...and trains once the attribute is declared as data (the rate is then traced).
    got = _nnx_losses(jt.adam(jnp.asarray(1e-2)), DataOptimizer)
    np.testing.assert_allclose(got, _nnx_losses(optax.adam(1e-2)), rtol=1e-4)
