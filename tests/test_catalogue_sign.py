"""The sign-based optimizers against optax 0.2.8: signatures, states, numbers, JAX
transforms.

The rows of ``cases_sign.ROWS`` go through the checks of
test_catalogue_adam_variants.py (whose driver this file reuses): optax's signature
and state layout, fp32 parity at every step of 100, optax's state restored into
jtricks continuing with optax's numbers, bf16 kept, one compilation for two learning
rates, ``vmap`` over stacked rates, ``eval_shape`` of ``init``, a donated step, and
bad hyperparameters refused with the argument's name.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cases_adam_variants import kernels_only
from cases_sign import ROWS
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

from jtricks.base import chain
from jtricks.optimizers import sign as opt
from jtricks.transforms import sign as blocks
from jtricks.transforms.scaling import scale_by_learning_rate

IDS = [name for name, _, _ in ROWS]
# The bf16 runs and the donated step take one row per building block.
SUBSET = {"lion_mask_fp32_mu", "sign_sgd_schedule", "signum_named", "signum_fp32_acc",
          "scale_by_lion_smooth"}


@functools.cache
def results(dtype_name: str):
    rows = ROWS if dtype_name == "float32" else [r for r in ROWS if r[0] in SUBSET]
    return run_rows(rows, dtype_name, restore=dtype_name == "float32")


PAIRS = [(getattr(opt, n), getattr(optax, n)) for n in opt.__all__] + [
    (blocks.scale_by_lion, optax.scale_by_lion), (blocks.scale_by_sign, optax.scale_by_sign)]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_signature_is_optax(ours, theirs):
    a, b = signature_rows(ours, theirs)
    assert a == b


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_state_layout_is_optax_at_init(row):
    name, ours, theirs = row
    for dtype in (jnp.float32, jnp.bfloat16):
        params = make_params(0, dtype)
        assert (state_layout(jax.eval_shape(ours().init, params))
                == state_layout(jax.eval_shape(theirs().init, params))), (name, dtype)


def test_signum_state_is_optax_ema_state():
    params = make_params(0)
    ours, theirs = opt.signum(0.1).init(params)[0], optax.signum(0.1).init(params)[0]
    assert type(ours).__name__ == type(theirs).__name__ == "EmaState"
    assert ours._fields == theirs._fields


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_fp32_equals_optax_and_keeps_its_state(row):
    ours, theirs, state, theirs_state = results("float32")[2][row[0]][:4]
    check_fp32_parity(row[0], ours, theirs)
    assert state_layout(state) == state_layout(theirs_state)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_optax_state_restores_and_continues(row):
    (ours, state), (theirs, theirs_state) = results("float32")[2][row[0]][4:]
    assert state_layout(state) == state_layout(theirs_state)
    for path, a, b in zip(*paths((ours, state)), jax.tree.leaves((theirs, theirs_state))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{row[0]} at {path}")


@pytest.mark.parametrize("row", [r for r in ROWS if r[0] in SUBSET],
                         ids=[r[0] for r in ROWS if r[0] in SUBSET])
def test_bf16_stays_bf16_and_close_to_optax(row):
    params, _, out = results("bfloat16")
    initial = jax.eval_shape(row[1]().init, params)
    check_bf16(row[0], params, out[row[0]], results("float32")[2][row[0]][0], initial)


LR_FACTORIES = {
    "lion": lambda lr: opt.lion(lr, b1=0.8, weight_decay=0.1, mask=kernels_only),
    "signum": lambda lr: opt.signum(lr, beta=0.8),
    "scale_by_lion_smooth": lambda lr: chain(
        blocks.scale_by_lion(0.8, mode="smooth", smooth_beta=3.0), scale_by_learning_rate(lr)),
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
    params, noise, out = results("float32")
    rows = [r for r in ROWS if r[0] in SUBSET]
    ps = donated_two_steps(rows, params, noise)
    for name, _, _ in rows:
        for x, traj in zip(jax.tree.leaves(ps[name]), jax.tree.leaves(out[name][0])):
            np.testing.assert_allclose(x, traj[1], rtol=1e-6, atol=1e-7, err_msg=name)


def test_sign_of_zero_is_zero_and_lion_modes_differ():
    g = {"w": jnp.asarray([-2.0, 0.0, 0.5])}
    u, _ = blocks.scale_by_sign().update(g, blocks.scale_by_sign().init(g))
    np.testing.assert_array_equal(u["w"], [-1.0, 0.0, 1.0])
    outs = {}
    for mode in ("hard", "smooth", "refined"):
        tx = blocks.scale_by_lion(0.0, mode=mode)
        outs[mode], _ = tx.update(g, tx.init(g))
    np.testing.assert_array_equal(outs["hard"]["w"], [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(outs["smooth"]["w"], np.tanh([-2.0, 0.0, 0.5]), rtol=1e-6)
    np.testing.assert_array_equal(outs["refined"]["w"], [-1.0, 0.0, 0.5])


BAD = [
    (lambda: opt.lion(-1e-4), "lion: learning_rate"),
    (lambda: opt.lion(1e-4, b1=1.0), "lion: b1"),
    (lambda: opt.lion(1e-4, b2=-0.1), "lion: b2"),
    (lambda: opt.lion(1e-4, weight_decay=-1e-3), "lion: weight_decay"),
    (lambda: opt.sign_sgd(-1e-3), "sign_sgd: learning_rate"),
    (lambda: opt.signum(-1e-3), "signum: learning_rate"),
    (lambda: opt.signum(1e-3, beta=1.0), "signum: beta"),
    (lambda: opt.signum(1e-3, beta=float("nan")), "signum: beta"),
    (lambda: blocks.scale_by_lion(b1=2.0), "scale_by_lion: b1"),
    (lambda: blocks.scale_by_lion(b2=1.0), "scale_by_lion: b2"),
    (lambda: blocks.scale_by_lion(mode="soft"), "scale_by_lion: mode"),
    (lambda: blocks.scale_by_lion(mode="smooth", smooth_beta=0.0), "scale_by_lion: smooth_beta"),
    (lambda: blocks.scale_by_lion(smooth_beta=-1.0), "scale_by_lion: smooth_beta"),
]


@pytest.mark.parametrize("make,match", BAD, ids=[m for _, m in BAD])
def test_bad_hyperparameters_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_integer_params_are_refused():
    with pytest.raises(TypeError, match="scale_by_lion: parameter at"):
        opt.lion(1e-4).init({"w": jnp.arange(3)})
    with pytest.raises(TypeError, match="ema: parameter at"):
        opt.signum(1e-3).init({"w": jnp.arange(3)})
