"""The moment-based optimizers of optax.contrib against optax 0.2.8: signatures,
states, numbers, JAX transforms.

The rows of ``cases_moments.ROWS`` go through the shared driver (tests/catalogue.py):
optax's signature and state layout, fp32 parity at every step of 100, optax's state
restored into jtricks continuing with optax's numbers, bf16 kept, one compilation for
two learning rates, ``vmap`` over stacked rates, ``eval_shape`` of ``init``, a donated
step, and bad hyperparameters refused with the argument's name.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cases_adam_variants import kernels_only
from cases_moments import ROWS, alpha_warmup, b3_warmup
from catalogue import (
    family_tests,
    signature_rows,
)
from conftest import FAST_COMPILE, make_params

from jtricks.hyperparams import learning_rates
from jtricks.optimizers import moments as opt
from jtricks.transforms import acprop, ademamix, adopt, madgrad

IDS = [name for name, _, _ in ROWS]
# The bf16 runs and the donated step take one row per building block.
SUBSET = {"ademamix_schedules_mask_fp32_mu", "simplified_ademamix_named",
          "adopt_nesterov_fp32_mu", "acprop_named", "madgrad_named"}


BLOCKS = [getattr(m, n) for m in (ademamix, adopt, acprop, madgrad) for n in m.__all__
          if n.startswith("scale_by")]
PAIRS = [(getattr(opt, n), getattr(optax.contrib, n)) for n in opt.__all__] + [
    (b, getattr(optax.contrib, b.__name__)) for b in BLOCKS]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_signature_is_optax(ours, theirs):
    a, b = signature_rows(ours, theirs)
    if ours.__name__ in ("adopt", "scale_by_adopt"):
        # optax's default clip_value_fn is a lambda, equal to no other function: ours
        # is a module-level function with the same values.
        (i,) = [k for k, row in enumerate(b) if row[0] == "clip_value_fn"]
        counts = jnp.arange(50, dtype=jnp.int32)
        np.testing.assert_array_equal(a[i][2](counts), b[i][2](counts))
        a[i], b[i] = a[i][:2], b[i][:2]
    assert a == b


@pytest.mark.parametrize("ours,theirs", [p for p in PAIRS if p[0] in BLOCKS],
                         ids=[p[0].__name__ for p in PAIRS if p[0] in BLOCKS])
def test_state_class_is_optax(ours, theirs):
    args = (0.01,) if ours.__name__ == "scale_by_madgrad" else ()
    params = make_params(0)
    a, b = ours(*args).init(params), theirs(*args).init(params)
    assert type(a).__name__ == type(b).__name__
    assert a._fields == b._fields


LR_FACTORIES = {
    "ademamix": lambda lr: opt.ademamix(lr, b3=b3_warmup, alpha=alpha_warmup,
                                        weight_decay=0.1, mask=kernels_only),
    "simplified_ademamix": lambda lr: opt.simplified_ademamix(0.1 * lr, b1=0.9, alpha=1.0),
    "adopt": lambda lr: opt.adopt(lr, b2=0.99, nesterov=True),
    "acprop": lambda lr: opt.acprop(lr, weight_decay=0.1),
    "madgrad": lambda lr: opt.madgrad(lr, weight_decay=0.1),
}

globals().update(family_tests(ROWS, SUBSET, LR_FACTORIES))


def test_built_from_python_numbers_they_compare_and_hash_by_value():
    # flax's TrainState keeps `tx` as a static field: it must hash, and two equal
    # optimizers must not retrace (ADOPT's default clip_value_fn is one function).
    for name in opt.__all__:
        a, b = getattr(opt, name)(1e-3), getattr(opt, name)(1e-3)
        assert a == b and hash(a) == hash(b), name
        assert jax.tree.structure(a) == jax.tree.structure(b), name


SMALL = {"w": jnp.asarray([[0.5, -1.0], [2.0, 0.0]]), "b": jnp.asarray([-2.0, 0.0])}


def test_madgrad_keeps_its_own_copy_of_the_initial_params():
    x0 = madgrad.scale_by_madgrad(0.01).init(SMALL).x0
    for p, x in zip(jax.tree.leaves(SMALL), jax.tree.leaves(x0)):
        assert p.unsafe_buffer_pointer() != x.unsafe_buffer_pointer()
        np.testing.assert_array_equal(p, x)
    with pytest.raises(ValueError, match=r"scale_by_madgrad\.update: params is None"):
        tx = madgrad.scale_by_madgrad(0.01)
        tx.update(SMALL, tx.init(SMALL))


@functools.partial(jax.jit, compiler_options=FAST_COMPILE)
def _reports(params):
    """Values the transforms report about themselves after a few updates, and ADOPT's
    first update: one compiled program for the small checks below."""
    out = {}
    tx = opt.madgrad(lambda k: 0.1 / (1.0 + k))
    old = tx.init(params)
    _, new = tx.update(params, old, params)
    _, newer = tx.update(params, new, params)
    out["madgrad_rate"] = learning_rates(tx, params, new, newer)["learning_rate"]
    tx = ademamix.scale_by_ademamix(b3=b3_warmup, alpha=alpha_warmup)
    state = tx.init(params)
    for _ in range(5):
        _, state = tx.update(params, state)
    out["ademamix_alpha"] = tx.hyperparams_at(state)["alpha"]
    tx = ademamix.scale_by_simplified_ademamix(alpha=alpha_warmup)
    _, state = tx.update(params, tx.init(params))
    out["simplified_alpha"] = tx.hyperparams_at(state)["alpha"]
    for use_clipping in (True, False):
        tx = adopt.scale_by_adopt(use_clipping=use_clipping)
        out[f"adopt_{use_clipping}"] = tx.update(params, tx.init(params))
    return out


def test_madgrad_reports_its_learning_rate():
    # The second update (index 1) used the schedule's value at 1.
    assert float(_reports(SMALL)["madgrad_rate"]) == pytest.approx(0.05)


def test_schedules_are_read_at_their_counts():
    out = _reports(SMALL)
    assert float(out["ademamix_alpha"]) == pytest.approx(float(alpha_warmup(5)))
    assert float(out["simplified_alpha"]) == pytest.approx(float(alpha_warmup(1)))


@pytest.mark.parametrize("use_clipping", [True, False])
def test_adopt_first_update_is_zero_and_records_the_second_moment(use_clipping):
    u, state = _reports(SMALL)[f"adopt_{use_clipping}"]
    for x in jax.tree.leaves(u):
        np.testing.assert_array_equal(x, 0.0)
    for v, g in zip(jax.tree.leaves(state.nu), jax.tree.leaves(SMALL)):
        np.testing.assert_allclose(v, np.square(g))


BAD = [
    (lambda: opt.ademamix(-1e-3), "ademamix: learning_rate"),
    (lambda: opt.ademamix(1e-3, b1=1.0), "ademamix: b1"),
    (lambda: opt.ademamix(1e-3, b2=-0.1), "ademamix: b2"),
    (lambda: opt.ademamix(1e-3, b3=1.5), "ademamix: b3"),
    (lambda: opt.ademamix(1e-3, alpha=-1.0), "ademamix: alpha"),
    (lambda: opt.ademamix(1e-3, alpha=float("inf")), "ademamix: alpha"),
    (lambda: opt.ademamix(1e-3, eps=-1e-8), "ademamix: eps"),
    (lambda: opt.ademamix(1e-3, eps_root=-1.0), "ademamix: eps_root"),
    (lambda: opt.ademamix(1e-3, weight_decay=-0.1), "ademamix: weight_decay"),
    (lambda: opt.simplified_ademamix(-1e-3), "simplified_ademamix: learning_rate"),
    (lambda: opt.simplified_ademamix(1e-3, b1=1.0), "simplified_ademamix: b1"),
    (lambda: opt.simplified_ademamix(1e-3, b2=float("nan")), "simplified_ademamix: b2"),
    (lambda: opt.simplified_ademamix(1e-3, alpha=-0.5), "simplified_ademamix: alpha"),
    (lambda: opt.simplified_ademamix(1e-3, eps=-1.0), "simplified_ademamix: eps"),
    (lambda: opt.simplified_ademamix(1e-3, eps_root=-1.0), "simplified_ademamix: eps_root"),
    (lambda: opt.simplified_ademamix(1e-3, weight_decay=-1.0),
     "simplified_ademamix: weight_decay"),
    (lambda: opt.adopt(-1e-3), "adopt: learning_rate"),
    (lambda: opt.adopt(1e-3, b1=-0.1), "adopt: b1"),
    (lambda: opt.adopt(1e-3, b2=1.0), "adopt: b2"),
    (lambda: opt.adopt(1e-3, eps=0.0), "adopt: eps"),
    (lambda: opt.acprop(-1e-3), "acprop: learning_rate"),
    (lambda: opt.acprop(1e-3, b1=1.0), "acprop: b1"),
    (lambda: opt.acprop(1e-3, b2=2.0), "acprop: b2"),
    (lambda: opt.acprop(1e-3, eps=-1.0), "acprop: eps"),
    (lambda: opt.acprop(1e-3, eps_root=-1.0), "acprop: eps_root"),
    (lambda: opt.acprop(1e-3, weight_decay=-1.0), "acprop: weight_decay"),
    (lambda: opt.madgrad(-1e-3), "madgrad: learning_rate"),
    (lambda: opt.madgrad(1e-3, momentum=1.0), "madgrad: momentum"),
    (lambda: opt.madgrad(1e-3, weight_decay=-1.0), "madgrad: weight_decay"),
    (lambda: opt.madgrad(1e-3, eps=-1.0), "madgrad: eps"),
    (lambda: ademamix.scale_by_ademamix(b3=-0.5), "scale_by_ademamix: b3"),
    (lambda: ademamix.scale_by_simplified_ademamix(alpha=-1.0),
     "scale_by_simplified_ademamix: alpha"),
    (lambda: adopt.scale_by_adopt(eps=-1.0), "scale_by_adopt: eps"),
    (lambda: acprop.scale_by_acprop(b1=1.0), "scale_by_acprop: b1"),
    (lambda: madgrad.scale_by_madgrad(-0.1), "scale_by_madgrad: learning_rate"),
]


@pytest.mark.parametrize("make,match", BAD, ids=[m for _, m in BAD])
def test_bad_hyperparameters_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_clip_function_and_integer_params_are_refused():
    with pytest.raises(TypeError, match="adopt: clip_value_fn"):
        opt.adopt(1e-3, clip_value_fn=1.0)
    ints = {"w": jnp.arange(3)}
    for tx, where in [(opt.ademamix(1e-3), "scale_by_ademamix"),
                      (opt.simplified_ademamix(1e-3), "scale_by_simplified_ademamix"),
                      (opt.adopt(1e-3), "scale_by_adopt"), (opt.acprop(1e-3), "scale_by_acprop"),
                      (madgrad.scale_by_madgrad(1e-3), "scale_by_madgrad")]:
        with pytest.raises(TypeError, match=f"{where}: parameter at"):
            tx.init(ints)
