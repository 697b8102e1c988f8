"""The classic optimizers against optax 0.2.8: signatures, states, numbers, JAX.

The same checks as test_catalogue_trust_ratio.py (whose driver this file uses) over
``cases_classic.ROWS``, plus what is particular to this family: Polyak's ``value=``
keyword, the explicit key of the noise, SM3's refusal of 0-d parameters, and
Adadelta's required learning rate.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cases_classic import ROWS, FeedLoss, kernels_only, lr_schedule
from conftest import make_params
from test_catalogue_trust_ratio import (
    check_bf16,
    check_donation,
    check_eval_shape,
    check_fp32,
    check_init_layouts,
    check_rates,
    check_signature,
    not_in_table,
    paths,
    run_rows,
    state_layout,
)

from jtricks.base import chain
from jtricks.optimizers import classic as opt
from jtricks.transforms import classic as blocks
from jtricks.transforms import gradient_difference as diff_blocks
from jtricks.transforms import noise as noise_blocks
from jtricks.transforms import normalize as norm_blocks
from jtricks.transforms import step_size as step_blocks
from jtricks.transforms.scaling import scale_by_learning_rate

# optax deprecates optimistic_adam (for optimistic_adam_v2); jtricks keeps both quietly.
pytestmark = [pytest.mark.filterwarnings("ignore:`optimistic_adam` is deprecated"),
              pytest.mark.filterwarnings("ignore:\"seed\" is deprecated")]

MODULES = (opt, blocks, diff_blocks, noise_blocks, norm_blocks, step_blocks)


ROWS_HERE = not_in_table(ROWS)

# One row per kind of state: restored from optax's state dict and run on.
RESTORE = ("novograd_named", "adadelta_named", "adadelta_scheduled", "rprop_named",
           "sm3_named", "polyak_sgd_schedule", "optimistic_adam_named",
           "optimistic_adam_v2_named", "adan_named", "noisy_sgd_named",
           "scale_by_distance_over_gradients_fp32_sums")


@functools.cache
def results(dtype_name: str):
    return run_rows(ROWS_HERE, dtype_name, RESTORE if dtype_name == "float32" else ())


IDS = [name for name, _, _ in ROWS_HERE]

PAIRS = [(getattr(m, n), getattr(optax, n)) for m in MODULES for n in m.__all__
         if n[0].islower() and n != "map_with_blocks"]


def test_every_public_function_has_an_optax_twin():
    assert len(PAIRS) == 21


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_signature_is_optax(ours, theirs):
    check_signature(ours, theirs)


def test_polyak_update_takes_value_as_optax_does():
    ours = step_blocks.ScaleByPolyak.update
    theirs = optax.scale_by_polyak().update
    import inspect
    a, b = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
    assert a["value"].kind is b["value"].kind is inspect.Parameter.KEYWORD_ONLY
    assert a["value"].default is b["value"].default is inspect.Parameter.empty


@pytest.mark.parametrize("row", ROWS_HERE, ids=IDS)
def test_state_layout_is_optax_at_init(row):
    check_init_layouts(*row)


@pytest.mark.parametrize("row", ROWS_HERE, ids=IDS)
def test_fp32_equals_optax_and_keeps_its_state(row):
    check_fp32(row[0], results("float32")[1][row[0]])


def test_optax_state_restores_and_continues():
    restored = results("float32")[2]
    assert set(restored) == set(RESTORE) & set(IDS)
    for name, (ours, theirs) in restored.items():
        for path, a, b in zip(*paths(ours), jax.tree.leaves(theirs)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{name} {path}")


@pytest.mark.parametrize("row", ROWS_HERE, ids=IDS)
def test_bf16_stays_bf16_and_close_to_optax(row):
    params, out, _ = results("bfloat16")
    check_bf16(row[0], params, out[row[0]], results("float32")[1][row[0]][0],
               jax.eval_shape(row[1]().init, params))


def _then_rate(block):
    return lambda lr: chain(block, scale_by_learning_rate(lr))


def test_one_compilation_for_two_rates_and_vmap_over_rates():
    check_rates({
        "novograd": lambda lr: opt.novograd(lr, weight_decay=0.01),
        "adadelta": lambda lr: opt.adadelta(lr * 10, weight_decay=0.01,
                                            weight_decay_mask=kernels_only),
        "rprop": opt.rprop,
        "polyak_sgd": lambda lr: FeedLoss(inner=opt.polyak_sgd(scaling=lr, f_min=-40.0)),
        "optimistic_gradient_descent": opt.optimistic_gradient_descent,
        "optimistic_adam": opt.optimistic_adam,
        "optimistic_adam_v2": lambda lr: opt.optimistic_adam_v2(lr, beta=0.5),
        "adan": lambda lr: opt.adan(lr, weight_decay=0.02),
        "noisy_sgd": lambda lr: opt.noisy_sgd(lr, key=0),
        "scale_by_adadelta": _then_rate(blocks.scale_by_adadelta()),
        "scale_by_novograd": _then_rate(blocks.scale_by_novograd()),
        "scale_by_adan": _then_rate(diff_blocks.scale_by_adan()),
        "scale_by_optimistic_gradient": _then_rate(diff_blocks.scale_by_optimistic_gradient()),
        "normalize_by_update_norm": _then_rate(norm_blocks.normalize_by_update_norm()),
        "centralize": _then_rate(norm_blocks.centralize()),
        "add_noise": _then_rate(noise_blocks.add_noise(0.01, 0.55, 1)),
        "scale_by_distance_over_gradients": _then_rate(
            step_blocks.scale_by_distance_over_gradients(1e-3)),
    })


def test_sm3_rate_is_data_and_sweeps():
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,))}
    grads = jax.tree.map(lambda p: 0.5 * p, params)

    def step(tx):
        return tx.update(grads, tx.init(params), params)[0]

    run = jax.jit(step)
    a, b = run(opt.sm3(0.1)), run(opt.sm3(0.2))
    assert run._cache_size() == 1
    swept = jax.vmap(lambda lr: step(opt.sm3(lr)))(jnp.asarray([0.1, 0.2]))
    for x, y, z in zip(jax.tree.leaves(swept), jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x[0], y, rtol=1e-6)
        np.testing.assert_allclose(x[1], z, rtol=1e-6)


@pytest.mark.parametrize("row", ROWS_HERE, ids=IDS)
def test_eval_shape_of_init(row):
    check_eval_shape(row[1]())


def test_donated_steps_give_the_trajectory():
    check_donation(ROWS_HERE, results("float32"))


def test_states_nest_as_optax_for_more_configurations():
    params = make_params(0)
    no_scalar = {k: v for k, v in params.items() if k != "scale"}
    pairs = [
        (opt.adadelta(1.0, weight_decay=lr_schedule, weight_decay_mask=kernels_only),
         optax.adadelta(1.0, weight_decay=lr_schedule, weight_decay_mask=kernels_only)),
        (opt.adan(lr_schedule, weight_decay=lr_schedule),
         optax.adan(lr_schedule, weight_decay=lr_schedule)),
        (opt.novograd(0.1), optax.novograd(0.1)),
        (blocks.scale_by_novograd(mu_dtype=jnp.bfloat16),
         optax.scale_by_novograd(mu_dtype=jnp.bfloat16)),
        (opt.noisy_sgd(0.1, seed=3), optax.noisy_sgd(0.1, seed=3)),
        (step_blocks.scale_by_distance_over_gradients(),
         optax.scale_by_distance_over_gradients()),
    ]
    for ours, theirs in pairs:
        assert state_layout(ours.init(params)) == state_layout(theirs.init(params))
    assert (state_layout(opt.sm3(0.1).init(no_scalar))
            == state_layout(optax.sm3(0.1).init(no_scalar)))


def test_novograd_mu_dtype():
    # fp32 params, bf16 momentum: optax's numbers. bf16 params, fp32 momentum: jtricks
    # runs (optax's first-step lax.cond fails on the mixed dtypes there).
    params = make_params(0)
    grads = jax.tree.map(lambda p: 0.5 * p, params)
    kw = {"weight_decay": 0.01, "mu_dtype": jnp.bfloat16}
    ours, theirs = blocks.scale_by_novograd(**kw), optax.scale_by_novograd(**kw)
    sa, sb = ours.init(params), theirs.init(params)
    for _ in range(3):
        a, sa = ours.update(grads, sa, params)
        b, sb = theirs.update(grads, sb, params)
    for x, y in zip(jax.tree.leaves((a, sa)), jax.tree.leaves((b, sb))):
        assert x.dtype == y.dtype
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                                   rtol=1e-2)
    bf16 = make_params(0, jnp.bfloat16)
    tx = blocks.scale_by_novograd(mu_dtype=jnp.float32)
    _, state = tx.update(bf16, tx.init(bf16), bf16)
    assert {x.dtype for x in jax.tree.leaves(state.mu)} == {jnp.dtype(jnp.float32)}


def test_noise_is_optax_draw_for_draw_and_the_key_is_required():
    params = make_params(0)
    for key in (7, jax.random.key(7)):
        ours, theirs = noise_blocks.add_noise(0.1, 0.55, key), optax.add_noise(0.1, 0.55, key)
        a, sa = ours.update(params, ours.init(params))
        b, sb = theirs.update(params, theirs.init(params))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(x, y)
        assert jax.random.key_data(sa.rng_key).tolist() == jax.random.key_data(
            sb.rng_key).tolist()
    raw = noise_blocks.add_noise(0.1, 0.55, jax.random.PRNGKey(7)).init(params)
    assert jax.random.key_data(raw.rng_key).tolist() == jax.random.PRNGKey(7).tolist()
    with pytest.raises(ValueError, match="add_noise: key is required"):
        noise_blocks.add_noise(0.1, 0.55)
    with pytest.raises(ValueError, match="noisy_sgd: key is required"):
        opt.noisy_sgd(0.1)
    with pytest.raises(ValueError, match="noisy_sgd: give key or seed"):
        opt.noisy_sgd(0.1, key=1, seed=2)


def test_polyak_needs_the_loss_value():
    params = make_params(0)
    tx = opt.polyak_sgd()
    with pytest.raises(TypeError, match="value"):
        tx.update(params, tx.init(params), params)
    u, _ = tx.update(params, tx.init(params), params, value=jnp.float32(2.0))
    v, _ = optax.polyak_sgd().update(params, optax.polyak_sgd().init(params), params,
                                     value=jnp.float32(2.0))
    for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(v)):
        np.testing.assert_allclose(x, y, rtol=1e-6)


def test_zero_gradient_and_scalar_parameters():
    params = make_params(0)
    zeros = jax.tree.map(jnp.zeros_like, params)
    u, _ = opt.polyak_sgd().update(zeros, opt.polyak_sgd().init(params), params, value=1.0)
    assert all(not np.any(x) for x in jax.tree.leaves(u))
    with pytest.raises(ValueError, match=r"scale_by_sm3: parameter at \['scale'\] is 0-d"):
        opt.sm3(0.1).init(params)
    dog = step_blocks.scale_by_distance_over_gradients()
    u, _ = dog.update(params, dog.init(params), params)
    assert u["scale"].shape == ()  # optax's is (1,)


def test_updates_need_params():
    params = make_params(0)
    for tx in (blocks.scale_by_novograd(), step_blocks.scale_by_distance_over_gradients()):
        with pytest.raises(ValueError, match="params is None"):
            tx.update(params, tx.init(params))


BAD = [
    (lambda: opt.novograd(-1e-3), "novograd: learning_rate"),
    (lambda: opt.novograd(1e-3, b1=1.0), "novograd: b1"),
    (lambda: opt.novograd(1e-3, b2=-0.5), "novograd: b2"),
    (lambda: opt.novograd(1e-3, eps=-1.0), "novograd: eps"),
    (lambda: opt.novograd(1e-3, eps_root=-1.0), "novograd: eps_root"),
    (lambda: opt.novograd(1e-3, weight_decay=-1.0), "novograd: weight_decay"),
    (lambda: opt.adadelta(-1.0), "adadelta: learning_rate"),
    (lambda: opt.adadelta(1.0, rho=1.0), "adadelta: rho"),
    (lambda: opt.adadelta(1.0, eps=-1.0), "adadelta: eps"),
    (lambda: opt.adadelta(1.0, weight_decay=-1.0), "adadelta: weight_decay"),
    (lambda: opt.rprop(-1.0), "rprop: learning_rate"),
    (lambda: opt.rprop(1e-3, eta_minus=1.5), "rprop: eta_minus"),
    (lambda: opt.rprop(1e-3, eta_plus=0.5), "rprop: eta_plus"),
    (lambda: opt.rprop(1e-3, min_step_size=-1.0), "rprop: min_step_size"),
    (lambda: opt.rprop(1e-3, min_step_size=1.0, max_step_size=0.5), "rprop: max_step_size"),
    (lambda: opt.sm3(-0.1), "sm3: learning_rate"),
    (lambda: opt.sm3(0.1, momentum=1.0), "sm3: momentum"),
    (lambda: opt.polyak_sgd(-1.0), "polyak_sgd: max_learning_rate"),
    (lambda: opt.polyak_sgd(scaling=-1.0), "polyak_sgd: scaling"),
    (lambda: opt.polyak_sgd(f_min=float("nan")), "polyak_sgd: f_min"),
    (lambda: opt.polyak_sgd(eps=-1.0), "polyak_sgd: eps"),
    (lambda: opt.polyak_sgd(variant="sps-"), "polyak_sgd: variant"),
    (lambda: opt.optimistic_gradient_descent(-0.1), "optimistic_gradient_descent: learning"),
    (lambda: opt.optimistic_gradient_descent(0.1, alpha=float("inf")),
     "optimistic_gradient_descent: alpha"),
    (lambda: opt.optimistic_gradient_descent(0.1, beta=float("nan")),
     "optimistic_gradient_descent: beta"),
    (lambda: opt.optimistic_adam(-0.1), "optimistic_adam: learning_rate"),
    (lambda: opt.optimistic_adam(0.1, optimism=-1.0), "optimistic_adam: optimism"),
    (lambda: opt.optimistic_adam(0.1, b1=1.0), "optimistic_adam: b1"),
    (lambda: opt.optimistic_adam(0.1, b2=-1.0), "optimistic_adam: b2"),
    (lambda: opt.optimistic_adam(0.1, eps=-1.0), "optimistic_adam: eps"),
    (lambda: opt.optimistic_adam(0.1, eps_root=-1.0), "optimistic_adam: eps_root"),
    (lambda: opt.optimistic_adam_v2(-0.1), "optimistic_adam_v2: learning_rate"),
    (lambda: opt.optimistic_adam_v2(0.1, alpha=float("nan")), "optimistic_adam_v2: alpha"),
    (lambda: opt.optimistic_adam_v2(0.1, b1=1.0), "optimistic_adam_v2: b1"),
    (lambda: opt.optimistic_adam_v2(0.1, b2=1.0), "optimistic_adam_v2: b2"),
    (lambda: opt.adan(-0.1), "adan: learning_rate"),
    (lambda: opt.adan(0.1, b1=1.0), "adan: b1"),
    (lambda: opt.adan(0.1, b2=-1.0), "adan: b2"),
    (lambda: opt.adan(0.1, b3=1.5), "adan: b3"),
    (lambda: opt.adan(0.1, eps=-1.0), "adan: eps"),
    (lambda: opt.adan(0.1, eps_root=-1.0), "adan: eps_root"),
    (lambda: opt.adan(0.1, weight_decay=-1.0), "adan: weight_decay"),
    (lambda: opt.noisy_sgd(-0.1, key=0), "noisy_sgd: learning_rate"),
    (lambda: opt.noisy_sgd(0.1, eta=-1.0, key=0), "noisy_sgd: eta"),
    (lambda: opt.noisy_sgd(0.1, gamma=-1.0, key=0), "noisy_sgd: gamma"),
    (lambda: blocks.scale_by_sm3(b2=1.5), "scale_by_sm3: b2"),
    (lambda: blocks.scale_by_sm3(eps=-1.0), "scale_by_sm3: eps"),
    (lambda: blocks.scale_by_novograd(b2=1.0), "scale_by_novograd: b2"),
    (lambda: step_blocks.scale_by_polyak(max_learning_rate=-1.0),
     "scale_by_polyak: max_learning_rate"),
    (lambda: step_blocks.scale_by_distance_over_gradients(reps_rel=0.0),
     "scale_by_distance_over_gradients: reps_rel"),
    (lambda: step_blocks.scale_by_distance_over_gradients(eps=-1.0),
     "scale_by_distance_over_gradients: eps"),
    (lambda: step_blocks.scale_by_distance_over_gradients(global_scale=float("nan")),
     "scale_by_distance_over_gradients: global_scale"),
    (lambda: norm_blocks.normalize_by_update_norm(0.0), "normalize_by_update_norm: scale_f"),
    (lambda: norm_blocks.normalize_by_update_norm(eps=-1.0), "normalize_by_update_norm: eps"),
    (lambda: noise_blocks.add_noise(-1.0, 0.5, 0), "add_noise: eta"),
    (lambda: noise_blocks.add_noise(1.0, -0.5, 0), "add_noise: gamma"),
]


@pytest.mark.parametrize("make,match", BAD, ids=[m for _, m in BAD])
def test_bad_hyperparameters_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_refusals_of_the_wrong_kind_of_value():
    with pytest.raises(TypeError, match="adadelta: learning_rate is required"):
        opt.adadelta()
    with pytest.raises(TypeError, match="sm3: learning_rate"):
        opt.sm3(lr_schedule)
    with pytest.raises(TypeError, match="rprop: learning_rate"):
        opt.rprop(lr_schedule)
    with pytest.raises(TypeError, match="normalize_by_update_norm: eps"):
        norm_blocks.normalize_by_update_norm(eps=lr_schedule)
    with pytest.raises(TypeError, match="scale_by_adadelta: parameter at"):
        blocks.scale_by_adadelta().init({"w": jnp.arange(3)})
