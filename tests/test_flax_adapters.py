"""jtricks.flax: nnx's Optimizer and linen's TrainState with the transform as data.

Each adapter: one compiled step serves three learning rates, a ``jax.vmap`` sweep
over the rate equals the separate runs, and the numbers are flax's own class driven
by the optax twin. (test_checkpoint_crossing.py reuses the models and steps here.)
"""

from __future__ import annotations

import importlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import FAST_COMPILE
from flax import nnx, serialization
from flax.training import train_state

import jtricks as jt
import jtricks.flax as jtf

STEPS = 5
RATES = (1e-2, 2e-2, 3e-2)
_rng = np.random.default_rng(3)
X = jnp.asarray(_rng.standard_normal((32, 3)), jnp.float32)
Y = jnp.sin(X.sum(axis=1, keepdims=True))


def ours(lr):
    return jt.adamw(lr, weight_decay=0.05)


def theirs(lr):
    return optax.adamw(lr, weight_decay=0.05)


def close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


# --- linen --------------------------------------------------------------------------


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.relu(nn.Dense(8)(x)))


LINEN = LinenMLP()
LINEN_PARAMS = LINEN.init(jax.random.key(0), X)["params"]
LINEN_TRACES = []


def linen_update(state):
    def loss(p):
        return jnp.mean((state.apply_fn({"params": p}, X) - Y) ** 2)

    return state.apply_gradients(grads=jax.grad(loss)(state.params))


def _counted(state):
    LINEN_TRACES.append(type(state))
    return linen_update(state)


linen_step = jax.jit(_counted, compiler_options=FAST_COMPILE)


def linen_state(tx, cls=jtf.TrainState):
    return cls.create(apply_fn=LINEN.apply, params=LINEN_PARAMS, tx=tx)


def linen_run(state, steps=STEPS):
    for _ in range(steps):
        state = linen_step(state)
    return state


def test_train_state_one_compile_for_three_rates_and_flax_numbers():
    # The rate is data, not static: the first rate traces at most once (another test
    # of this process may have traced the step already), the others never.
    LINEN_TRACES.clear()
    runs = [linen_run(linen_state(ours(RATES[0])))]
    first = LINEN_TRACES.count(jtf.TrainState)
    runs += [linen_run(linen_state(ours(lr))) for lr in RATES[1:]]
    assert first <= 1 and LINEN_TRACES.count(jtf.TrainState) == first
    assert not np.allclose(runs[0].params["Dense_1"]["kernel"],
                           runs[2].params["Dense_1"]["kernel"])
    flax_run = linen_run(linen_state(theirs(RATES[2]), train_state.TrainState))
    close(runs[2].params, flax_run.params)
    close(jax.tree.leaves(runs[2].opt_state), jax.tree.leaves(flax_run.opt_state))
    assert int(runs[2].step) == int(flax_run.step) == STEPS
    assert isinstance(runs[2], train_state.TrainState)  # code checking flax's type works

    @jax.jit
    def sweep(rates):
        def one(lr):
            state = linen_state(ours(lr))
            for _ in range(STEPS):
                state = linen_update(state)
            return state.params
        return jax.vmap(one)(rates)

    swept = sweep(jnp.asarray(RATES))
    for i, run in enumerate(runs):
        close(jax.tree.map(lambda x, i=i: x[i], swept), run.params)


def test_train_state_accepts_an_optax_transform_and_subclasses_keep_flaxs_layout():
    state = linen_run(linen_state(optax.sgd(0.1)), steps=1)
    assert int(state.step) == 1

    class WithStats(jtf.TrainState):
        stats: dict

    sub = WithStats.create(apply_fn=LINEN.apply, params=LINEN_PARAMS, tx=ours(1e-2),
                           stats={"n": jnp.zeros(())})
    assert set(serialization.to_state_dict(sub)) == {"step", "params", "opt_state", "stats"}
    with pytest.raises(ValueError, match=r"jtricks.flax.TrainState: .*missing \['stats'\]"):
        serialization.from_state_dict(sub, serialization.to_state_dict(linen_state(ours(1))))


# --- nnx ----------------------------------------------------------------------------


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(3, 8, rngs=rngs)
        self.l2 = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


NNX_TRACES = []


def nnx_update(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
    optimizer.update(model, grads)


@nnx.jit
def nnx_step(model, optimizer):
    NNX_TRACES.append(type(optimizer))
    nnx_update(model, optimizer)


def nnx_params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def nnx_run(tx, optimizer_type=jtf.Optimizer, seed=0, steps=STEPS):
    model = NnxMLP(nnx.Rngs(seed))
    optimizer = optimizer_type(model, tx, wrt=nnx.Param)
    for _ in range(steps):
        nnx_step(model, optimizer)
    return model, optimizer


def test_nnx_optimizer_one_compile_for_three_rates_and_flax_numbers():
    NNX_TRACES.clear()  # as for linen: at most one trace, for the first rate only
    runs = [nnx_run(ours(RATES[0]))]
    first = NNX_TRACES.count(jtf.Optimizer)
    runs += [nnx_run(ours(lr)) for lr in RATES[1:]]
    assert first <= 1 and NNX_TRACES.count(jtf.Optimizer) == first
    model, optimizer = runs[2]
    flax_model, flax_optimizer = nnx_run(theirs(RATES[2]), nnx.Optimizer)
    close(nnx_params(model), nnx_params(flax_model))
    ours_state = nnx.to_pure_dict(nnx.state(optimizer, nnx.optimizer.OptState))
    theirs_state = nnx.to_pure_dict(nnx.state(flax_optimizer))
    assert jax.tree.structure(ours_state) == jax.tree.structure(theirs_state)
    close(ours_state, theirs_state)
    assert isinstance(optimizer, nnx.Optimizer) and int(optimizer.step[...]) == STEPS
    # The transform's numbers are variables of their own kind, outside OptState.
    rate = optimizer.transform.transforms[-1].learning_rate
    np.testing.assert_allclose(rate, RATES[2])

    @jax.jit
    def sweep(rates):
        def one(lr):
            model = NnxMLP(nnx.Rngs(0))
            optimizer = jtf.Optimizer(model, ours(lr), wrt=nnx.Param)
            for _ in range(STEPS):
                nnx_update(model, optimizer)
            return nnx_params(model)
        return jax.vmap(one)(rates)

    swept = sweep(jnp.asarray(RATES))  # an array learning rate: nnx's own refuses one
    for i, (m, _) in enumerate(runs):
        close(jax.tree.map(lambda x, i=i: x[i], swept), nnx_params(m))


def test_without_flax_the_import_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "flax", None)
    monkeypatch.delitem(sys.modules, "jtricks.flax")
    with pytest.raises(ImportError, match=r"jtricks.flax needs flax .*pip install flax"):
        importlib.import_module("jtricks.flax")
