"""The lesson's update rules, written out by hand, against the optimizers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import grad_fn, noise_sequence

import jtricks as jt

STEPS = 20


@jax.jit
def _step(tx, params, state, noise):
    updates, state = tx.update(grad_fn(params, noise), state, params)
    return jt.apply_updates(params, updates), state


def run(tx, params, steps=STEPS):
    """Params after ``steps`` updates with the shared noisy gradient (one jitted step
    that takes the transform as an argument)."""
    noise = noise_sequence(params, steps)
    state = tx.init(params)
    for k in range(steps):
        params, state = _step(tx, params, state, jax.tree.map(lambda n, k=k: n[k], noise))
    return params


def run_by_hand(rule, params, steps=STEPS):
    """The same loop with the update rule ``rule(w, g, aux) -> (w, aux)`` per leaf tree."""
    noise = noise_sequence(params, steps)
    aux = jax.tree.map(jnp.zeros_like, params)

    @jax.jit
    def step(params, aux, noise, t):
        return rule(params, grad_fn(params, noise), aux, t)

    for k in range(steps):
        params, aux = step(params, aux, jax.tree.map(lambda n, k=k: n[k], noise), k + 1)
    return params


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9])
def test_sgd_momentum_is_the_velocity_rule(params, gamma):
    lr = 0.05

    def rule(w, grad, v, t):
        # v <- gamma * v - lr * grad;  w <- w + v
        v = jax.tree.map(lambda v, g: gamma * v - lr * g, v, grad)
        return jax.tree.map(jnp.add, w, v), v

    assert_trees_close(run(jt.sgd(lr, momentum=gamma), params), run_by_hand(rule, params))


def test_momentum_zero_is_plain_sgd(params):
    def rule(w, grad, aux, t):
        return jax.tree.map(lambda w, g: w - 0.05 * g, w, grad), aux

    plain = run(jt.sgd(0.05), params)
    assert_trees_close(plain, run_by_hand(rule, params), rtol=0, atol=0)
    assert_trees_close(run(jt.sgd(0.05, momentum=0.0), params), plain, rtol=0, atol=0)


@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_normalized_sgd_steps_along_the_direction_only(params, eps):
    lr = 0.05

    def rule(w, grad, aux, t):
        # w <- w - lr * grad / ||grad||, with ||.|| the norm over every leaf together.
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grad)))
        return jax.tree.map(lambda w, g: w - lr * g / (norm + eps), w, grad), aux

    assert_trees_close(run(jt.normalized_sgd(lr, eps=eps), params), run_by_hand(rule, params))


def test_normalized_sgd_step_length_is_the_learning_rate(params, grads):
    tx = jt.normalized_sgd(0.05, eps=0.0)
    for factor in (1e-3, 1.0, 1e3):  # the gradient's size does not matter
        big = jax.tree.map(lambda g, f=factor: f * g, grads)
        updates, _ = tx.update(big, tx.init(params), params)
        np.testing.assert_allclose(jt.tree.global_norm(updates), 0.05, rtol=1e-5)


def test_clip_by_global_norm_below_the_threshold_is_unchanged(params, grads):
    norm = float(jt.tree.global_norm(grads))
    for threshold in (norm, 2 * norm, 10.0 * norm):
        tx = jt.clip_by_global_norm(threshold)
        updates, _ = tx.update(grads, tx.init(params), params)
        jax.tree.map(np.testing.assert_array_equal, updates, grads)


@pytest.mark.parametrize("threshold", [1.0, 10.0])
def test_clip_by_global_norm_above_the_threshold_rescales_to_it(params, grads, threshold):
    big = jax.tree.map(lambda g: 100 * g, grads)  # norm well above both thresholds
    norm = jt.tree.global_norm(big)
    assert norm > 10 * threshold
    tx = jt.clip_by_global_norm(threshold)
    updates, _ = tx.update(big, tx.init(params), params)
    np.testing.assert_allclose(jt.tree.global_norm(updates), threshold, rtol=1e-6)
    # Same direction: g * threshold / ||g||.
    assert_trees_close(updates, jax.tree.map(lambda g: g * (threshold / norm), big))


def test_exponential_decay_per_epoch(params):
    lr, steps_per_epoch = 0.1, 7
    schedule = jt.schedules.exponential_decay(lr, steps_per_epoch, 0.98, staircase=True)
    counts = jnp.arange(10 * steps_per_epoch)
    np.testing.assert_allclose(jax.vmap(schedule)(counts),
                               lr * 0.98 ** (np.arange(counts.size) // steps_per_epoch),
                               rtol=1e-6)
    # Used as a learning rate, update k steps by lr * 0.98**(k // steps_per_epoch).
    tx = jt.sgd(schedule)
    g = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    for k in range(2 * steps_per_epoch + 1):
        updates, state = tx.update(g, state, params)
        expected = -lr * 0.98 ** (k // steps_per_epoch)
        np.testing.assert_allclose(updates["scale"], expected, rtol=1e-6)


def test_adam_is_the_default_choice_and_matches_its_formula(params):
    lr, b1, b2, eps = 0.02, 0.9, 0.999, 1e-8

    def rule(w, grad, mv, t):
        # aux starts as zeros like params: split it into (m, v) on the first step.
        m, v = mv if isinstance(mv, tuple) else (mv, mv)
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, grad)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g**2, v, grad)
        c1, c2 = 1 - b1**t, 1 - b2**t
        w = jax.tree.map(lambda w, m, v: w - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), w, m, v)
        return w, (m, v)

    assert_trees_close(run(jt.adam(lr), params), run_by_hand(rule, params), rtol=1e-5, atol=1e-5)
