"""The learning-rate-free and loss-aware optimizers against optax.contrib 0.2.8:
signatures, states, numbers, JAX transforms.

The rows of ``cases_parameter_free.ROWS`` run through the shared driver
(tests/catalogue.py) in one compiled program per dtype: optax's signature and state
layout, fp32 parity at every step of 100, optax's state restored into jtricks
continuing with optax's numbers, bf16 kept, one compilation for two learning rates,
``vmap`` over stacked rates, ``eval_shape`` of ``init``, a donated step, and bad
hyperparameters refused with the argument's name. MoMo's rows get the loss through
``cases_parameter_free.FeedLoss`` (both libraries alike), so no second driver is
needed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax.contrib as contrib
import pytest
from cases_parameter_free import LAYOUTS, ROWS, FeedLoss, kernels_only
from catalogue import (
    check_bf16,
    check_fp32_parity,
    donated_two_steps,
    lr_programs,
    paths,
    run_rows,
    signature_rows,
    state_layout,
)
from conftest import make_params, noise_sequence

from jtricks import hyperparams as hp
from jtricks.optimizers import parameter_free as opt
from jtricks.optimizers.adaptive import adam
from jtricks.transforms import dog as dog_blocks
from jtricks.transforms import parameter_free as blocks
from jtricks.transforms.mechanic import mechanize

IDS = [name for name, _, _ in ROWS]
# Every update compiled costs about as much as every other, so the checks that need
# more updates take a subset: a state restored from optax's continues on the rows
# with the most deeply nested states, bf16 runs one row per family of state, and the
# donated step adds the transforms that keep a copy of the starting params.
RESTORED = {"prodigy", "cocob", "dog", "mechanize_adam", "momo_adam_adapt"}
SUBSET = {"prodigy_schedule", "cocob", "momo_adam_adapt"}
DONATED = {"prodigy_schedule", "dog", "mechanize_adam"}
# Mechanic recomputes its direction as (x0 - x) / sum(s) at every step (optax's
# memory-saving form), which multiplies the rounding of x by 1 / sum(s): two
# compilations of the very same code drift apart by ~1e-5 (relative) within 100
# steps, so its trajectory is held to a looser tolerance. A wrong formula is off by
# far more.
LOOSE = {"mechanize_adam": {"rtol": 1e-3, "atol": 1e-4}}


@functools.cache
def _run(group: str):
    if group == "bfloat16":
        return run_rows([r for r in ROWS if r[0] in SUBSET], "bfloat16")
    restored = group == "restored"
    return run_rows([r for r in ROWS if (r[0] in RESTORED) == restored], "float32",
                    restore=restored)


def fp32(name: str):
    """The fp32 results of one row (two programs: with and without a restored step)."""
    return _run("restored" if name in RESTORED else "plain")[2][name]


PAIRS = [(getattr(opt, n), getattr(contrib, n)) for n in opt.__all__] + [
    (blocks.scale_by_cocob, contrib.scale_by_cocob), (mechanize, contrib.mechanize),
    (dog_blocks.scale_by_dog, contrib._dog.scale_by_dog),
    (dog_blocks.scale_by_dowg, contrib._dog.scale_by_dowg)]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_signature_is_optax(ours, theirs):
    a, b = signature_rows(ours, theirs)
    assert a == b


def test_state_classes_are_optax():
    params = make_params(0)
    for ours, theirs in [(opt.prodigy(), contrib.prodigy()),
                         (opt.dadapt_adamw(), contrib.dadapt_adamw()),
                         (blocks.scale_by_cocob(), contrib.scale_by_cocob()),
                         (opt.momo(), contrib.momo()), (opt.momo_adam(), contrib.momo_adam()),
                         (mechanize(adam(0.1)), contrib.mechanize(adam(0.1)))]:
        a, b = jax.eval_shape(ours.init, params), jax.eval_shape(theirs.init, params)
        assert type(a).__name__ == type(b).__name__ and a._fields == b._fields
    for ours, theirs in [(opt.dog(), contrib.dog()), (opt.dowg(), contrib.dowg())]:
        a, b = jax.eval_shape(ours.init, params)[1], jax.eval_shape(theirs.init, params)[1]
        assert type(a).__name__ == type(b).__name__ and a._fields == b._fields


@pytest.mark.parametrize("row", LAYOUTS, ids=[r[0] for r in LAYOUTS])
def test_state_layout_is_optax_at_init(row):
    name, ours, theirs = row
    for dtype in (jnp.float32, jnp.bfloat16):
        params = make_params(0, dtype)
        assert (state_layout(jax.eval_shape(ours().init, params))
                == state_layout(jax.eval_shape(theirs().init, params))), (name, dtype)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_fp32_equals_optax_and_keeps_its_state(row):
    name = row[0]
    ours, theirs, state, theirs_state = fp32(name)[:4]
    if name in LOOSE:
        for path, a, b in zip(*paths(ours), jax.tree.leaves(theirs)):
            assert not np.allclose(a[-1], a[0]), f"{name}: {path} never moved"
            np.testing.assert_allclose(a, b, **LOOSE[name], err_msg=f"{name} at {path}")
    else:
        check_fp32_parity(name, ours, theirs)
    assert state_layout(state) == state_layout(theirs_state)


@pytest.mark.parametrize("row", [r for r in ROWS if r[0] in RESTORED], ids=sorted(RESTORED))
def test_optax_state_restores_and_continues(row):
    (ours, state), (theirs, theirs_state) = fp32(row[0])[4:]
    assert state_layout(state) == state_layout(theirs_state)
    for path, a, b in zip(*paths((ours, state)), jax.tree.leaves((theirs, theirs_state))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{row[0]} at {path}")


@pytest.mark.parametrize("row", [r for r in ROWS if r[0] in SUBSET],
                         ids=[r[0] for r in ROWS if r[0] in SUBSET])
def test_bf16_stays_bf16_and_close_to_optax(row):
    params, _, out = _run("bfloat16")
    initial = jax.eval_shape(row[1]().init, params)
    check_bf16(row[0], params, out[row[0]], fp32(row[0])[0], initial)


LR_FACTORIES = {
    "prodigy": lambda lr: opt.prodigy(lr * 25, betas=(0.8, 0.95), estim_lr0=1e-3),
    "momo": lambda lr: FeedLoss(inner=opt.momo(lr * 10, beta=0.8, lower_bound=-6.0)),
}


def test_one_compilation_for_two_rates_and_vmap_over_rates():
    params = make_params(3)
    noise = noise_sequence(params, 8)
    separate, swept = lr_programs(LR_FACTORIES, params, noise)
    for name in LR_FACTORIES:
        a, b = separate[0][name], separate[1][name]
        assert not all(np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
        for i, run in enumerate(separate):
            for x, y in zip(jax.tree.leaves(swept[name]), jax.tree.leaves(run[name])):
                np.testing.assert_allclose(x[i], y, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_eval_shape_of_init(row):
    params = make_params(0)
    tx = row[1]()
    shapes = jax.eval_shape(tx.init, params)
    real = tx.init(params)
    assert jax.tree.structure(shapes) == jax.tree.structure(real)
    for s, x in zip(jax.tree.leaves(shapes), jax.tree.leaves(real)):
        assert (s.shape, s.dtype) == (x.shape, x.dtype)


def test_donated_steps_give_the_trajectory():
    params, noise, _ = _run("plain")
    rows = [r for r in ROWS if r[0] in DONATED]
    ps = donated_two_steps(rows, params, noise)
    for name, _, _ in rows:
        for x, traj in zip(jax.tree.leaves(ps[name]), jax.tree.leaves(fp32(name)[0])):
            np.testing.assert_allclose(x, traj[1], rtol=1e-6, atol=1e-7, err_msg=name)


def test_zero_gradients_keep_the_distance_estimate():
    # optax divides 0 by 0 here and keeps NaN as D for the rest of the run.
    params = {"w": jnp.ones(3)}
    zeros = {"w": jnp.zeros(3)}
    txs = (opt.prodigy(), opt.dadapt_adamw())
    states = jax.jit(lambda: [tx.update(zeros, tx.init(params), params)[1] for tx in txs])()
    for state in states:
        np.testing.assert_array_equal(state.estim_lr, np.float32(1e-6))


def test_loss_aware_updates_need_the_loss_and_the_params():
    params = {"w": jnp.ones(3)}
    for name, tx in (("momo", opt.momo()), ("momo_adam", opt.momo_adam())):
        with pytest.raises(ValueError, match=f"{name}.update: value"):
            tx.update(params, tx.init(params), params)
        with pytest.raises(ValueError, match=f"{name}.update: params is None"):
            tx.update(params, tx.init(params), value=1.0)
    for tx, where in ((opt.prodigy(), "prodigy"), (blocks.scale_by_cocob(), "scale_by_cocob"),
                      (opt.dowg(), "scale_by_dowg"), (mechanize(adam(0.1)), "mechanize")):
        with pytest.raises(ValueError, match=f"{where}.update: params is None"):
            tx.update(params, tx.init(params))


def test_mechanize_reports_its_base_and_scale():
    params = {"w": jnp.ones(3)}
    tx = mechanize(adam(0.1), s_init=1e-3, num_betas=2)
    state = tx.init(params)
    assert hp.current(tx, state)["base_optimizer/1/learning_rate"] == 0.1
    assert hp.current(tx, state)["s_init"] == 1e-3
    _, new = jax.jit(tx.update)(params, state, params)
    np.testing.assert_allclose(hp.learning_rates(tx, params, state, new)["learning_rate"],
                               0.1 * float(jnp.sum(new.s)), rtol=1e-6)


BAD = [
    (lambda: opt.prodigy(-1.0), "prodigy: learning_rate"),
    (lambda: opt.prodigy(betas=(1.0, 0.999)), r"prodigy: betas\[0\]"),
    (lambda: opt.prodigy(betas=(0.9, -0.1)), r"prodigy: betas\[1\]"),
    (lambda: opt.prodigy(beta3=1.5), "prodigy: beta3"),
    (lambda: opt.prodigy(eps=-1e-8), "prodigy: eps"),
    (lambda: opt.prodigy(estim_lr0=0.0), "prodigy: estim_lr0"),
    (lambda: opt.prodigy(estim_lr_coef=-1.0), "prodigy: estim_lr_coef"),
    (lambda: opt.prodigy(weight_decay=-0.1), "prodigy: weight_decay"),
    (lambda: opt.dadapt_adamw(-1.0), "dadapt_adamw: learning_rate"),
    (lambda: opt.dadapt_adamw(betas=(0.9, 1.0)), r"dadapt_adamw: betas\[1\]"),
    (lambda: opt.dadapt_adamw(eps=-1.0), "dadapt_adamw: eps"),
    (lambda: opt.dadapt_adamw(estim_lr0=-1e-6), "dadapt_adamw: estim_lr0"),
    (lambda: opt.dadapt_adamw(weight_decay=-1.0), "dadapt_adamw: weight_decay"),
    (lambda: opt.cocob(-1.0), "cocob: learning_rate"),
    (lambda: opt.cocob(alpha=0.0), "cocob: alpha"),
    (lambda: opt.cocob(eps=0.0), "cocob: eps"),
    (lambda: opt.cocob(weight_decay=-1.0), "cocob: weight_decay"),
    (lambda: blocks.scale_by_cocob(alpha=-1.0), "scale_by_cocob: alpha"),
    (lambda: opt.dog(-1.0), "dog: learning_rate"),
    (lambda: opt.dog(init_step=("heuristic", 0.0)), "dog: init_step"),
    (lambda: opt.dog(init_step=("guess", 1e-6)), "dog: init_step's kind"),
    (lambda: opt.dog(eps=-1.0), "dog: eps"),
    (lambda: opt.dog(weight_decay=-1.0), "dog: weight_decay"),
    (lambda: dog_blocks.scale_by_dog(("distance", -1.0)), "scale_by_dog: init_step"),
    (lambda: opt.dowg(-1.0), "dowg: learning_rate"),
    (lambda: opt.dowg(init_estim_sq_dist=0.0), "dowg: init_estim_sq_dist"),
    (lambda: opt.dowg(eps=0.0), "dowg: eps"),
    (lambda: opt.dowg(init_estim_sq_dist=1.0, eps=-1.0), "dowg: eps"),
    (lambda: opt.dowg(weight_decay=-1.0, mask=kernels_only), "dowg: weight_decay"),
    (lambda: mechanize(adam(0.1), weight_decay=-1.0), "mechanize: weight_decay"),
    (lambda: mechanize(adam(0.1), eps=-1.0), "mechanize: eps"),
    (lambda: mechanize(adam(0.1), s_init=0.0), "mechanize: s_init"),
    (lambda: mechanize(adam(0.1), num_betas=0), "mechanize: num_betas"),
    (lambda: mechanize(adam(0.1), num_betas=2.0), "mechanize: num_betas"),
    (lambda: opt.momo(-1.0), "momo: learning_rate"),
    (lambda: opt.momo(beta=1.0), "momo: beta"),
    (lambda: opt.momo(lower_bound=float("nan")), "momo: lower_bound"),
    (lambda: opt.momo(weight_decay=-1.0), "momo: weight_decay"),
    (lambda: opt.momo_adam(-1.0), "momo_adam: learning_rate"),
    (lambda: opt.momo_adam(b1=1.0), "momo_adam: b1"),
    (lambda: opt.momo_adam(b2=-0.5), "momo_adam: b2"),
    (lambda: opt.momo_adam(eps=-1.0), "momo_adam: eps"),
    (lambda: opt.momo_adam(lower_bound=float("inf")), "momo_adam: lower_bound"),
    (lambda: opt.momo_adam(weight_decay=-1.0), "momo_adam: weight_decay"),
]


@pytest.mark.parametrize("make,match", BAD, ids=[m for _, m in BAD])
def test_bad_hyperparameters_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


BAD_TYPES = [
    (lambda: opt.prodigy(betas=0.9), "prodigy: betas must be a pair"),
    (lambda: opt.prodigy(eps=lambda c: 1e-8), "prodigy: eps must be a number"),
    (lambda: opt.dog(init_step=1e-6), "dog: init_step must be a pair"),
    (lambda: opt.momo(beta=lambda c: 0.9), "momo: beta must be a number"),
]


@pytest.mark.parametrize("make,match", BAD_TYPES, ids=[m for _, m in BAD_TYPES])
def test_wrong_kinds_of_hyperparameters_are_refused(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_integer_params_are_refused():
    ints = {"w": jnp.arange(3)}
    for tx, where in ((opt.prodigy(), "prodigy"), (opt.dadapt_adamw(), "dadapt_adamw"),
                      (opt.cocob(), "scale_by_learning_rate"), (opt.dog(), "scale_by_dog"),
                      (opt.dowg(), "scale_by_dowg"), (mechanize(adam(0.1)), "mechanize"),
                      (opt.momo(), "momo"), (opt.momo_adam(), "momo_adam")):
        with pytest.raises(TypeError, match=f"{where}: parameter at"):
            tx.init(ints)
