"""The Adam variants against optax 0.2.8: signatures, states, numbers, JAX transforms.

Every row of ``cases_adam_variants.ROWS`` runs 100 steps in both libraries inside ONE
compiled program per dtype (as test_parity_optax.py does); the helpers below are
shared with test_catalogue_sign.py. Checked for every function: the signature is
optax's; the state has optax's ``to_state_dict`` keys, shapes and dtypes (at init and
after 100 steps), and optax's state restored into jtricks continues with optax's
numbers; fp32 parity at every step; bf16 stays bf16 and is no worse than optax's;
one compilation for two learning rates; ``vmap`` over a stacked rate; ``eval_shape``
of ``init``; a donated step; bad hyperparameters refused with the argument's name.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
import pytest
from cases_adam_variants import ROWS, kernels_only
from catalogue import (
    family_tests,
    signature_rows,
)

from jtricks.optimizers import adam_variants as opt
from jtricks.transforms import adam_variants as blocks

STEPS = 100


# --- this family ------------------------------------------------------------------------


IDS = [name for name, _, _ in ROWS]
# One row per building block (a named optimizer holds it), for the checks whose
# compilation costs more than another configuration adds (bf16 runs, donation).
SUBSET = {"amsgrad_named", "amsgrad_paper_fp32_mu", "adamaxw_named", "adabelief_nesterov",
          "yogi_named", "radam_named", "nadamw_mask_fp32_mu"}

PAIRS = [(getattr(opt, n), getattr(optax, n)) for n in opt.__all__] + [
    (getattr(blocks, n), getattr(optax, n)) for n in blocks.__all__ if n.startswith("scale_by")]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_signature_is_optax(ours, theirs):
    a, b = signature_rows(ours, theirs)
    assert a == b


# One named optimizer per building block (adamax and nadam are adamaxw and nadamw
# without the decay): the block's code is what is traced.
LR_FACTORIES = {
    "amsgrad": lambda lr: opt.amsgrad(lr, b1=0.8, b2=0.95),
    "adamaxw": lambda lr: opt.adamaxw(lr, weight_decay=0.1, mask=kernels_only),
    "adabelief": lambda lr: opt.adabelief(lr, b2=0.95, eps=1e-8, nesterov=True),
    "yogi": lambda lr: opt.yogi(lr, b2=0.95),
    "radam": lambda lr: opt.radam(lr, b2=0.95),
    "nadamw": lambda lr: opt.nadamw(lr, b2=0.95, weight_decay=0.1),
}

globals().update(family_tests(ROWS, SUBSET, LR_FACTORIES))


BAD = [
    (lambda: opt.amsgrad(-1e-3), "amsgrad: learning_rate"),
    (lambda: opt.amsgrad(1e-3, b1=1.0), "amsgrad: b1"),
    (lambda: opt.amsgrad(1e-3, b2=-0.1), "amsgrad: b2"),
    (lambda: opt.amsgrad(1e-3, eps=-1.0), "amsgrad: eps"),
    (lambda: opt.amsgrad(1e-3, eps_root=float("nan")), "amsgrad: eps_root"),
    (lambda: opt.adamax(-1e-3), "adamax: learning_rate"),
    (lambda: opt.adamax(1e-3, b1=1.5), "adamax: b1"),
    (lambda: opt.adamax(1e-3, b2=1.0), "adamax: b2"),
    (lambda: opt.adamax(1e-3, eps=0.0), "adamax: eps"),
    (lambda: opt.adamaxw(-1e-3), "adamaxw: learning_rate"),
    (lambda: opt.adamaxw(1e-3, b1=-0.5), "adamaxw: b1"),
    (lambda: opt.adamaxw(1e-3, weight_decay=-1e-4), "adamaxw: weight_decay"),
    (lambda: opt.adabelief(-1e-3), "adabelief: learning_rate"),
    (lambda: opt.adabelief(1e-3, b1=1.0), "adabelief: b1"),
    (lambda: opt.adabelief(1e-3, b2=2.0), "adabelief: b2"),
    (lambda: opt.adabelief(1e-3, eps=-1e-16), "adabelief: eps"),
    (lambda: opt.adabelief(1e-3, eps_root=-1e-16), "adabelief: eps_root"),
    (lambda: opt.yogi(-1e-3), "yogi: learning_rate"),
    (lambda: opt.yogi(1e-3, b1=1.0), "yogi: b1"),
    (lambda: opt.yogi(1e-3, b2=-1.0), "yogi: b2"),
    (lambda: opt.yogi(1e-3, eps=-1e-3), "yogi: eps"),
    (lambda: opt.radam(-1e-3), "radam: learning_rate"),
    (lambda: opt.radam(1e-3, b1=1.0), "radam: b1"),
    (lambda: opt.radam(1e-3, b2=1.0), "radam: b2"),
    (lambda: opt.radam(1e-3, eps=-1.0), "radam: eps"),
    (lambda: opt.radam(1e-3, eps_root=-1.0), "radam: eps_root"),
    (lambda: opt.radam(1e-3, threshold=3.0), "radam: threshold"),
    (lambda: opt.nadam(-1e-3), "nadam: learning_rate"),
    (lambda: opt.nadam(1e-3, b1=1.0), "nadam: b1"),
    (lambda: opt.nadam(1e-3, b2=-0.1), "nadam: b2"),
    (lambda: opt.nadam(1e-3, eps=-1.0), "nadam: eps"),
    (lambda: opt.nadam(1e-3, eps_root=-1.0), "nadam: eps_root"),
    (lambda: opt.nadamw(-1e-3), "nadamw: learning_rate"),
    (lambda: opt.nadamw(1e-3, b2=1.0), "nadamw: b2"),
    (lambda: opt.nadamw(1e-3, weight_decay=-0.1), "nadamw: weight_decay"),
    (lambda: blocks.scale_by_amsgrad(b1=1.0), "scale_by_amsgrad: b1"),
    (lambda: blocks.scale_by_adamax(eps=-1.0), "scale_by_adamax: eps"),
    (lambda: blocks.scale_by_belief(b2=1.0), "scale_by_belief: b2"),
    (lambda: blocks.scale_by_yogi(initial_accumulator_value=-1.0),
     "scale_by_yogi: initial_accumulator_value"),
    (lambda: blocks.scale_by_yogi(eps_root=-1.0), "scale_by_yogi: eps_root"),
    (lambda: blocks.scale_by_radam(threshold=float("nan")), "scale_by_radam: threshold"),
]


@pytest.mark.parametrize("make,match", BAD, ids=[m for _, m in BAD])
def test_bad_hyperparameters_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_schedule_and_integer_params_are_refused_where_they_cannot_work():
    with pytest.raises(TypeError, match="scale_by_yogi: initial_accumulator_value"):
        blocks.scale_by_yogi(initial_accumulator_value=lambda c: 1e-6)
    with pytest.raises(TypeError, match="scale_by_radam: parameter at"):
        opt.radam(1e-3).init({"w": jnp.arange(3)})
