"""Bad input gets a clear error naming the argument, the value and the fix, never a NaN.

Checks run on concrete values only: a transform built from tracers inside ``jit``
passes through them.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtricks as jt

BAD_HYPERPARAMETERS = [
    # (call, error, pattern the message must match: the function, argument and value)
    (lambda: jt.sgd(-0.1), ValueError, r"sgd: learning_rate must be >= 0, got -0\.1"),
    (lambda: jt.adam(-1e-3), ValueError, r"adam: learning_rate must be >= 0, got -0\.001"),
    (lambda: jt.adamw(-1.0), ValueError, r"adamw: learning_rate must be >= 0, got -1\.0"),
    (lambda: jt.rmsprop(float("nan")), ValueError, r"rmsprop: learning_rate .* got nan"),
    (lambda: jt.adagrad(jnp.asarray([1e-3, -1e-3])), ValueError,
     r"adagrad: learning_rate must be >= 0, got Array\(\[ 0\.001, -0\.001\]"),
    (lambda: jt.normalized_sgd(-0.1), ValueError, r"normalized_sgd: learning_rate .* -0\.1"),
    (lambda: jt.scale_by_learning_rate(-0.1), ValueError,
     r"scale_by_learning_rate: learning_rate must be >= 0, got -0\.1.*flip_sign=False"),
    (lambda: jt.adam(1e-3, b1=1.0), ValueError, r"adam: b1 must be in \[0, 1\), got 1\.0"),
    (lambda: jt.adam(1e-3, b2=-0.1), ValueError, r"adam: b2 must be in \[0, 1\), got -0\.1"),
    (lambda: jt.adamw(1e-3, b1=1.5), ValueError, r"adamw: b1 must be in \[0, 1\), got 1\.5"),
    (lambda: jt.adamw(1e-3, b2=1.0), ValueError, r"adamw: b2 must be in \[0, 1\), got 1\.0"),
    (lambda: jt.scale_by_adam(b1=2.0), ValueError, r"scale_by_adam: b1 .* got 2\.0"),
    (lambda: jt.adam(1e-3, eps=-1e-8), ValueError, r"adam: eps must be >= 0, got -1e-08"),
    (lambda: jt.adamw(1e-3, eps=-1.0), ValueError, r"adamw: eps must be >= 0, got -1\.0"),
    (lambda: jt.rmsprop(1e-3, eps=-1e-8), ValueError, r"rmsprop: eps must be >= 0, got -1e-08"),
    (lambda: jt.adagrad(0.1, eps=-1e-7), ValueError, r"adagrad: eps must be >= 0, got -1e-07"),
    (lambda: jt.normalized_sgd(0.1, eps=-1.0), ValueError, r"normalized_sgd: eps .* -1\.0"),
    (lambda: jt.normalize_by_global_norm(-1e-6), ValueError,
     r"normalize_by_global_norm: eps must be >= 0, got -1e-06"),
    (lambda: jt.scale_by_rms(eps=-1.0), ValueError, r"scale_by_rms: eps must be >= 0, got -1"),
    (lambda: jt.scale_by_adagrad(eps=-1.0), ValueError, r"scale_by_adagrad: eps .* got -1"),
    (lambda: jt.adaptive_grad_clip(0.1, eps=-1.0), ValueError, r"adaptive_grad_clip: eps"),
    (lambda: jt.rmsprop(1e-3, decay=1.0), ValueError, r"rmsprop: decay must be in \[0, 1\)"),
    (lambda: jt.scale_by_rms(decay=-0.5), ValueError, r"scale_by_rms: decay .* got -0\.5"),
    (lambda: jt.adagrad(0.1, initial_accumulator_value=-1.0), ValueError,
     r"adagrad: initial_accumulator_value must be >= 0, got -1\.0"),
    (lambda: jt.rmsprop(0.1, initial_scale=-1.0), ValueError, r"rmsprop: initial_scale .* -1"),
    (lambda: jt.sgd(0.1, momentum=1.5), ValueError,
     r"sgd: momentum must be in \[0, 1\), got 1\.5\. momentum is an exponential decay rate"),
    (lambda: jt.sgd(0.1, momentum=-0.1), ValueError, r"sgd: momentum .* got -0\.1"),
    (lambda: jt.sgd(0.1, momentum=1.0), ValueError, r"sgd: momentum .* got 1\.0"),
    (lambda: jt.rmsprop(0.1, momentum=1.0), ValueError, r"rmsprop: momentum .* got 1\.0"),
    (lambda: jt.trace(1.5), ValueError, r"trace: decay must be in \[0, 1\], got 1\.5"),
    (lambda: jt.sgd(0.1, nesterov=True), ValueError, r"sgd: nesterov=True needs a momentum"),
    (lambda: jt.rmsprop(0.1, nesterov=True), ValueError, r"rmsprop: nesterov=True needs"),
    (lambda: jt.clip(0.0), ValueError, r"clip: max_delta must be > 0, got 0\.0"),
    (lambda: jt.clip(-1.0), ValueError, r"clip: max_delta must be > 0, got -1\.0"),
    (lambda: jt.clip_by_global_norm(0.0), ValueError,
     r"clip_by_global_norm: max_norm must be > 0, got 0\.0\. .*typical values are 1 to 10"),
    (lambda: jt.clip_by_global_norm(-1.0), ValueError, r"clip_by_global_norm: max_norm .* -1"),
    (lambda: jt.adaptive_grad_clip(0.0), ValueError, r"adaptive_grad_clip: clipping .* > 0"),
    (lambda: jt.add_decayed_weights(-1e-4), ValueError,
     r"add_decayed_weights: weight_decay must be >= 0, got -0\.0001"),
    (lambda: jt.adamw(1e-3, weight_decay=-0.1), ValueError, r"adamw: weight_decay .* -0\.1"),
    (lambda: jt.sgd("0.1"), TypeError, r"sgd: learning_rate must be a real number.*'0\.1'"),
    # Stateless transforms keep no step count: a schedule is refused, with what to do.
    (lambda: jt.clip(lambda k: 1.0), TypeError,
     r"clip: max_delta must be a number or an array, got a schedule.*no step count"),
    (lambda: jt.clip_by_global_norm(jt.schedules.constant(1.0)), TypeError,
     r"clip_by_global_norm: max_norm .* schedule"),
    (lambda: jt.normalize_by_global_norm(lambda k: 1e-6), TypeError,
     r"normalize_by_global_norm: eps .* schedule"),
    (lambda: jt.adaptive_grad_clip(lambda k: 0.1), TypeError, r"adaptive_grad_clip: clipping"),
    (lambda: jt.add_decayed_weights(-1.0, mask={"w": True}), ValueError,
     r"add_decayed_weights: weight_decay must be >= 0, got -1\.0"),
    (lambda: jt.scale(lambda k: 0.1), TypeError,
     r"scale: step_size .*jt\.scale_by_learning_rate\(schedule\)"),
    (lambda: jt.adagrad(0.1, initial_accumulator_value=lambda k: 0.1), TypeError,
     r"adagrad: initial_accumulator_value fills the accumulator once, in init"),
    (lambda: jt.add_decayed_weights(1e-4, mask={"w": 1}), TypeError,
     r"add_decayed_weights: mask leaves must be Python bools, got int 1"),
]


@pytest.mark.parametrize("call, error, pattern", BAD_HYPERPARAMETERS,
                         ids=[f"{i}-{p.split(':')[0]}" for i, (_, _, p)
                              in enumerate(BAD_HYPERPARAMETERS)])
def test_bad_hyperparameter_is_refused(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


OPTIMIZERS = [
    ("sgd", lambda: jt.sgd(0.1)),
    ("sgd_momentum", lambda: jt.sgd(0.1, momentum=0.9)),
    ("normalized_sgd", lambda: jt.normalized_sgd(0.1)),
    ("adagrad", lambda: jt.adagrad(0.1)),
    ("rmsprop", lambda: jt.rmsprop(0.1, centered=True, momentum=0.9)),
    ("adam", lambda: jt.adam(1e-3)),
    ("adamw", lambda: jt.adamw(1e-3)),
]


@pytest.mark.parametrize("factory", [f for _, f in OPTIMIZERS], ids=[n for n, _ in OPTIMIZERS])
def test_integer_params_are_refused_naming_the_path(factory, params):
    bad = {**params, "dense": {**params["dense"], "w": jnp.ones((4, 3), jnp.int32)}}
    with pytest.raises(TypeError, match=r"parameter at \['dense'\]\['w'\] has dtype int32.*"
                                        r"floating-point.*astype"):
        factory().init(bad)


STATEFUL = [
    ("trace", lambda: jt.trace(0.9), r"trace\.update.*state\.trace"),
    ("scale_by_adagrad", lambda: jt.scale_by_adagrad(), r"scale_by_rss\.update"),
    ("scale_by_rms", lambda: jt.scale_by_rms(), r"scale_by_rms\.update.*state\.nu"),
    ("scale_by_rms_centered", lambda: jt.scale_by_rms(centered=True),
     r"scale_by_stddev\.update.*state\.nu"),
    ("adam", lambda: jt.adam(1e-3), r"scale_by_adam\.update"),
    ("adamw", lambda: jt.adamw(1e-3), r"scale_by_adam\.update"),
]


@pytest.mark.parametrize("factory, where", [(f, w) for _, f, w in STATEFUL],
                         ids=[n for n, _, _ in STATEFUL])
def test_update_tree_unlike_the_state_names_the_first_differing_path(factory, where, params,
                                                                     grads):
    tx = factory()
    state = tx.init(params)
    renamed = {**grads, "dense": {"b": grads["dense"]["b"], "kernel": grads["dense"]["w"]}}
    with pytest.raises(ValueError, match=where + r".*different structures.*"
                                         r"\['dense'\]\['kernel'\].*\['dense'\]\['w'\]"):
        tx.update(renamed, state, params)
    missing = {k: v for k, v in grads.items() if k != "scale"}
    with pytest.raises(ValueError, match=where + r".*\['scale'\]"):
        tx.update(missing, state, params)


@pytest.mark.parametrize("factory, where", [(f, w) for _, f, w in STATEFUL],
                         ids=[n for n, _, _ in STATEFUL])
def test_update_leaf_shaped_unlike_the_state_is_refused_not_broadcast(factory, where, params,
                                                                      grads):
    # A (n, 1) update against an (n,) moment would broadcast into an (n, n) state.
    tx = factory()
    state = tx.init(params)
    column = {**grads, "dense": {**grads["dense"], "b": grads["dense"]["b"][:, None]}}
    shape = tuple(params["dense"]["b"].shape)
    with pytest.raises(ValueError, match=where.split(".*")[0] + r".*different shapes.*"
                       r"updates\['dense'\]\['b'\] has shape " + re.escape(str((*shape, 1)))):
        tx.update(column, state, params)
    with pytest.raises(ValueError, match=r"different shapes"):
        jax.jit(tx.update)(column, state, params)


def test_params_tree_unlike_the_updates_names_the_path(params, grads):
    extra = {**params, "head": jnp.zeros(2)}
    for tx in (jt.add_decayed_weights(1e-4), jt.adaptive_grad_clip(0.1)):
        with pytest.raises(ValueError, match=r"update.*updates tree and the params tree.*"
                                             r"\['head'\]"):
            tx.update(grads, tx.init(params), extra)


def test_transforms_that_need_params_say_so(grads):
    for tx, name in ((jt.add_decayed_weights(1e-4), "add_decayed_weights"),
                     (jt.adaptive_grad_clip(0.1), "adaptive_grad_clip"),
                     (jt.adamw(1e-3), "add_decayed_weights")):
        with pytest.raises(ValueError, match=name + r".*params is None.*"
                                                    r"tx\.update\(grads, state, params\)"):
            tx.update(grads, tx.init(grads))


def test_mask_unlike_the_params_names_the_path(params, grads):
    tx = jt.add_decayed_weights(1e-4, mask={"w": True})
    with pytest.raises(ValueError, match=r"add_decayed_weights.*mask.*does not match"):
        tx.update(grads, tx.init(params), params)


def test_adaptive_grad_clip_asks_for_axes_on_unusual_ranks():
    p = {"w": jnp.ones((2, 2, 2, 2, 2, 2))}
    tx = jt.adaptive_grad_clip(0.1)
    with pytest.raises(ValueError, match=r"adaptive_grad_clip.*shape \(2, 2, 2, 2, 2, 2\).*axis="):
        tx.update(p, tx.init(p), p)
    u, _ = jt.adaptive_grad_clip(0.1, axis=(0, 1)).update(p, tx.init(p), p)
    assert u["w"].shape == p["w"].shape


def test_apply_updates_refuses_a_shape_mismatch_naming_path_and_shapes():
    with pytest.raises(ValueError, match=r"apply_updates: shape mismatch at \['w'\]: params "
                                         r"\(2, 3\) vs updates \(3,\)"):
        jt.apply_updates({"w": jnp.zeros((2, 3))}, {"w": jnp.zeros(3)})


def test_tracers_pass_through_the_checks(params, grads):
    builders = [
        lambda h: jt.sgd(h, momentum=h, nesterov=True),
        lambda h: jt.normalized_sgd(h, eps=h),
        lambda h: jt.adagrad(h, initial_accumulator_value=h, eps=h),
        lambda h: jt.rmsprop(h, decay=h, eps=h, centered=True, momentum=h, initial_scale=h),
        lambda h: jt.adam(h, b1=h, b2=h, eps=h, eps_root=h),
        lambda h: jt.adamw(h, b1=h, b2=h, eps=h, weight_decay=h),
        lambda h: jt.chain(jt.clip(h), jt.clip_by_global_norm(h), jt.adaptive_grad_clip(h, h),
                           jt.normalize_by_global_norm(h), jt.add_decayed_weights(h),
                           jt.trace(h), jt.scale(h)),
    ]

    @jax.jit
    def build_and_step(h):
        out = []
        for build in builders:
            tx = build(h)  # validation sees a tracer and lets it through
            out.append(tx.update(grads, tx.init(params), params)[0])
        return out

    for updates in build_and_step(jnp.asarray(0.5)):
        assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))


def test_zero_gradients_give_zero_updates_not_nan(tx_case, params):
    # 0/0 traps: the norm of a zero gradient (normalize, clip), an empty accumulator.
    # Zero params too, so weight decay adds nothing. Every update must be finite and
    # equal optax's wherever optax's is finite.
    name, factory, optax_factory = tx_case
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx, otx = factory(), optax_factory()
    updates, _ = tx.update(zeros, tx.init(zeros), zeros)
    theirs, _ = otx.update(zeros, otx.init(zeros), zeros)
    for u, t in zip(jax.tree.leaves(updates), jax.tree.leaves(theirs)):
        assert np.all(np.isfinite(u)), name
        finite = np.isfinite(t)
        np.testing.assert_allclose(np.asarray(u)[finite], np.asarray(t)[finite], atol=1e-12,
                                   err_msg=name)
    # (optax's zero everywhere but yogi, whose moments start above 0, and the noise
    # rows; the comparison above makes ours zero wherever optax's is.)
    assert any(not np.any(t) for t in jax.tree.leaves(theirs)) or "yogi" in name or (
        "nois" in name)
