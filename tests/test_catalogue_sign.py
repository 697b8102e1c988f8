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

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cases_adam_variants import kernels_only
from cases_sign import ROWS
from catalogue import (
    family_tests,
    signature_rows,
)
from conftest import make_params

from jtricks.base import chain
from jtricks.optimizers import sign as opt
from jtricks.transforms import sign as blocks
from jtricks.transforms.scaling import scale_by_learning_rate

IDS = [name for name, _, _ in ROWS]
# The bf16 runs and the donated step take one row per building block.
SUBSET = {"lion_mask_fp32_mu", "sign_sgd_schedule", "signum_named", "signum_fp32_acc",
          "scale_by_lion_smooth"}


PAIRS = [(getattr(opt, n), getattr(optax, n)) for n in opt.__all__] + [
    (blocks.scale_by_lion, optax.scale_by_lion), (blocks.scale_by_sign, optax.scale_by_sign)]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_signature_is_optax(ours, theirs):
    a, b = signature_rows(ours, theirs)
    assert a == b


def test_signum_state_is_optax_ema_state():
    params = make_params(0)
    ours, theirs = opt.signum(0.1).init(params)[0], optax.signum(0.1).init(params)[0]
    assert type(ours).__name__ == type(theirs).__name__ == "EmaState"
    assert ours._fields == theirs._fields


LR_FACTORIES = {
    "lion": lambda lr: opt.lion(lr, b1=0.8, weight_decay=0.1, mask=kernels_only),
    "signum": lambda lr: opt.signum(lr, beta=0.8),
    "scale_by_lion_smooth": lambda lr: chain(
        blocks.scale_by_lion(0.8, mode="smooth", smooth_beta=3.0), scale_by_learning_rate(lr)),
}

globals().update(family_tests(ROWS, SUBSET, LR_FACTORIES))


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
