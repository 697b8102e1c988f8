"""Hyperparameters report themselves: the learning-rate metric of jt.train and
jt.hyperparams.current, under partitions, masks, plateaus and foreign optax members;
and gradient-health verdicts that agree however the norms were measured."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jtricks as jt

PARAMS = {"enc": {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}, "head": {"w": jnp.ones((2, 1))}}
GROUPS = {"enc": "slow", "head": "fast"}


def rates_after(tx, steps=1, value=1.0):
    """The learning-rate report of the last of ``steps`` updates on unit gradients."""
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    state = tx.init(PARAMS)
    for _ in range(steps):
        old = state
        _, state = tx.update(grads, state, PARAMS, value=jnp.asarray(value))
    return {k: float(v) for k, v in
            jt.hyperparams.learning_rates(tx, PARAMS, old, state).items()}


def test_one_rate_is_reported_as_learning_rate_with_the_schedule_at_its_count():
    sched = jt.schedules.linear(0.1, 0.0, 10)
    assert rates_after(jt.adam(1e-3)) == pytest.approx({"learning_rate": 1e-3})
    # The third update (index 2) used sched(2).
    assert rates_after(jt.chain(jt.clip(1.0), jt.sgd(sched)), steps=3) == pytest.approx(
        {"learning_rate": float(sched(2))})


def test_partition_with_two_rates_reports_each_group():
    tx = jt.partition({"slow": jt.adam(1e-4), "fast": jt.sgd(0.1, momentum=0.9)}, GROUPS)
    assert rates_after(tx) == pytest.approx({"learning_rate/enc": 1e-4,
                                             "learning_rate/head/w": 0.1})


def test_a_frozen_group_has_no_rate_and_one_remaining_rate_is_the_learning_rate():
    tx = jt.partition({"slow": jt.adam(1e-4), "fast": jt.scale(0.0)}, GROUPS)
    assert rates_after(tx) == pytest.approx({"learning_rate": 1e-4})


def test_a_masked_plateau_scales_only_its_own_leaves():
    # A constant loss never improves: with patience 1 the scale halves at once.
    plateau = jt.reduce_on_plateau(factor=0.5, patience=1, rtol=0.0)
    tx = jt.chain(jt.adam(1e-2), jt.masked(plateau, {"enc": True, "head": False}))
    got = rates_after(tx, steps=3)
    assert got == pytest.approx({"learning_rate/enc": 1e-2 * 0.5 ** 2,
                                 "learning_rate/head/w": 1e-2})
    # Unmasked, the same plateau scales every parameter: one rate.
    whole = rates_after(jt.chain(jt.adam(1e-2), plateau), steps=3)
    assert whole == pytest.approx({"learning_rate": 1e-2 * 0.5 ** 2})


def test_foreign_optax_members():
    # A rate inside optax.adam lives in a closure: nothing to report (documented).
    assert rates_after(jt.chain(jt.clip(1.0), optax.adam(1e-3))) == {}
    # optax.inject_hyperparams keeps it in the state, where it is read.
    injected = optax.inject_hyperparams(optax.adam)(learning_rate=2e-3)
    assert rates_after(jt.chain(jt.clip(1.0), injected)) == pytest.approx(
        {"learning_rate": 2e-3})
    tx = jt.chain(injected)
    assert jt.hyperparams.current(tx, tx.init(PARAMS))["0/learning_rate"] == 2e-3


def test_make_step_reports_the_groups_and_refuses_metric_names_that_clash():
    def loss_fn(params, model_state, batch, key):
        del batch, key
        return sum(jnp.sum(p ** 2) for p in jax.tree.leaves(params)), (model_state, {})

    tx = jt.partition({"slow": jt.adam(1e-4), "fast": jt.sgd(0.1)}, GROUPS)
    step = jt.train.make_step(loss_fn, tx)
    _, metrics = step(step.init(PARAMS, jax.random.key(0)), jnp.zeros(1))
    assert {k for k in metrics if k.startswith("learning_rate")} == {
        "learning_rate/enc", "learning_rate/head/w"}
    np.testing.assert_allclose(metrics["learning_rate/head/w"], 0.1)

    def clashing(params, model_state, batch, key):
        loss, (ms, _) = loss_fn(params, model_state, batch, key)
        return loss, (ms, {"learning_rate/mine": loss})

    step = jt.train.make_step(clashing, jt.sgd(0.1))
    with pytest.raises(ValueError, match=r"reserved names \['learning_rate/mine'\]"):
        step(step.init(PARAMS, jax.random.key(0)), jnp.zeros(1))


def test_current_gives_every_hyperparameter_by_path_at_the_states_step():
    sched = jt.schedules.linear(0.1, 0.0, 10)
    tx = jt.skip_nonfinite(jt.chain(jt.clip_by_global_norm(2.0),
                                    jt.adamw(sched, b1=0.8, weight_decay=0.01)))
    state = tx.init(PARAMS)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    for _ in range(4):
        _, state = tx.update(grads, state, PARAMS)
    got = jt.hyperparams.current(tx, state)
    assert got == pytest.approx({
        "inner/0/max_norm": 2.0, "inner/1/0/b1": 0.8, "inner/1/0/b2": 0.999,
        "inner/1/0/eps": 1e-8, "inner/1/0/eps_root": 0.0, "inner/1/1/weight_decay": 0.01,
        "inner/1/2/learning_rate": float(sched(4)),  # the next update is the fifth
    })
    part = jt.partition({"slow": jt.adam(1e-4), "fast": jt.sgd(0.1)}, GROUPS)
    got = jt.hyperparams.current(part, part.init(PARAMS))
    assert got["slow/1/learning_rate"] == 1e-4 and got["fast/1/learning_rate"] == 0.1


@pytest.mark.parametrize("entry, verdict", [(1e20, "exploding"), (jnp.inf, "nonfinite"),
                                            (jnp.nan, "nonfinite")])
def test_report_and_report_from_norms_agree_on_huge_and_nonfinite_gradients(entry,
                                                                              verdict):
    grads = {"w": jnp.full((4,), entry, jnp.float32), "b": jnp.ones(2)}
    direct = jt.diagnostics.report(grads)
    tx = jt.record_norms(jt.sgd(0.1))
    _, state = jax.jit(tx.update)(grads, tx.init(grads), grads)
    monitored = jt.diagnostics.report_from_norms(state)
    for rep in (direct, monitored):
        kinds = {f.kind for f in rep.flags if f.name == "w"}
        assert kinds == {verdict}, rep
    if verdict == "exploding":
        # The norm of four entries of 1e20 is 2e20, finite though its square is not.
        np.testing.assert_allclose(monitored.grad_norms["w"], 2e20, rtol=1e-6)
        np.testing.assert_allclose(direct.grad_norms["w"], 2e20, rtol=1e-6)


def test_overflow_safe_norms_equal_plain_norms_when_nothing_overflows():
    rng = np.random.default_rng(0)
    tree = {"a": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=7), jnp.bfloat16), "c": jnp.zeros((0, 2))}
    plain = jt.tree.global_norm(tree)
    safe, per = jax.jit(jt.tree.norms)(tree)
    assert float(safe) == float(plain)
    assert float(per["c"]) == 0.0
    huge = {"a": jnp.full((3,), 3e19), "b": jnp.full((4,), 4e19)}
    assert np.isinf(jt.tree.global_norm(huge))
    np.testing.assert_allclose(jt.tree.global_norm(huge, overflow_safe=True),
                               np.sqrt(3 * 9e38 + 4 * 16e38), rtol=1e-6)


def test_set_replaces_by_name_and_by_path_and_matches_a_fresh_build():
    sched = jt.schedules.linear(0.1, 0.0, 10)
    tx = jt.chain(jt.clip_by_global_norm(1.0), jt.adamw(1e-3, weight_decay=0.01))
    slower = jt.hyperparams.set(tx, learning_rate=3e-4)
    fresh = jt.chain(jt.clip_by_global_norm(1.0), jt.adamw(3e-4, weight_decay=0.01))
    assert slower == fresh
    tighter = jt.hyperparams.set(tx, {"0/max_norm": 0.5, "1/0/b1": 0.8})
    assert tighter == jt.chain(jt.clip_by_global_norm(0.5),
                               jt.adamw(1e-3, b1=0.8, weight_decay=0.01))
    # Every rate of a partition at once; a schedule where a constant was.
    part = jt.partition({"slow": jt.adam(1e-4), "fast": jt.sgd(0.1)}, GROUPS)
    both = jt.hyperparams.set(part, learning_rate=sched)
    got = jt.hyperparams.current(both, both.init(PARAMS))
    assert got["slow/1/learning_rate"] == got["fast/1/learning_rate"] == pytest.approx(0.1)
    # No recompilation for a new value: set inside a jitted, vmapped sweep.
    grads = jax.tree.map(jnp.ones_like, PARAMS)

    def first_update(lr):
        t = jt.hyperparams.set(jt.adam(1.0), learning_rate=lr)
        return t.update(grads, t.init(PARAMS), PARAMS)[0]["head"]["w"]

    swept = jax.jit(jax.vmap(first_update))(jnp.asarray([1e-3, 1e-2]))
    np.testing.assert_allclose(swept[:, 0, 0], [-1e-3, -1e-2], rtol=1e-4)
    with pytest.raises(ValueError, match=r"no hyperparameter named or at \['b3'\]"):
        jt.hyperparams.set(tx, b3=0.5)
    with pytest.raises(ValueError, match=r"\['9/eps'\]"):
        jt.hyperparams.set(tx, {"9/eps": 0.5})
    with pytest.raises(ValueError, match=r"hyperparams.set: learning_rate must be finite"):
        jt.hyperparams.set(tx, learning_rate=float("nan"))
