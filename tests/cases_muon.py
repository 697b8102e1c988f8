"""Table rows for the Newton-Schulz family (muon, scale_by_muon).

Every row of ``ROWS`` meets the table's fp32 tolerance (rtol 1e-5, atol 1e-6) over
100 steps and runs in bf16. ``EXTRA_ROWS`` are kept out of the table and tested in
test_catalogue_muon.py: AOL rescaling with the multi-row Dion schedule (optax scans
the rows, jtricks unrolls them, and the reassociation grows to ~3e-6, so it has a
stated looser tolerance), and spectral preconditioning (fp32 only: CPU LAPACK has no
bf16 SVD, so optax cannot run it in bf16).
"""

from __future__ import annotations

import jax
import optax

import jtricks as jt
from jtricks.optimizers.muon import muon
from jtricks.transforms.muon import MuonDimensionNumbers, scale_by_muon

_OPTAX_DIMS = optax.contrib.MuonDimensionNumbers


def _specs(make):
    """Dimension numbers for every leaf of rank >= 2 (None, i.e. Adam, for the rest):
    a 3-D tensor is a batch of matrices, a 4-D kernel flattens its receptive field."""
    table = {2: make(0, 1), 3: make(1, 2), 4: make((0, 1, 2), 3)}
    return lambda params: jax.tree.map(lambda x: table.get(x.ndim), params)


JT_SPECS = _specs(MuonDimensionNumbers)
OPTAX_SPECS = _specs(_OPTAX_DIMS)


def _matrices(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _lr(count):
    return 0.02 * 0.99 ** count


def _both(**kwargs):
    return lambda: muon(**kwargs), lambda: optax.contrib.muon(**kwargs)


def _both_dims(**kwargs):
    return (lambda: muon(**kwargs, muon_weight_dimension_numbers=JT_SPECS),
            lambda: optax.contrib.muon(**kwargs, muon_weight_dimension_numbers=OPTAX_SPECS))


ROWS = [
    ("muon", lambda: muon(0.02), lambda: optax.contrib.muon(0.02)),
    ("muon_plain_decay",
     *_both(learning_rate=0.02, beta=0.9, nesterov=False, weight_decay=0.1, adam_b1=0.8,
            adam_b2=0.95, eps=1e-6, ns_steps=4)),
    ("muon_schatten_rms_mask",
     *_both(learning_rate=0.02, preconditioning="schatten", consistent_rms=0.2,
            weight_decay=0.05, weight_decay_mask=_matrices)),
    ("muon_tensors_schedule", *_both_dims(learning_rate=_lr)),
    ("scale_by_muon",
     lambda: jt.chain(jt.masked(scale_by_muon(ns_steps=4, beta=0.9,
                                              weight_dimension_numbers=JT_SPECS),
                                _matrices), jt.scale(-0.02)),
     lambda: optax.chain(optax.masked(optax.contrib.scale_by_muon(
         ns_steps=4, beta=0.9, weight_dimension_numbers=OPTAX_SPECS), _matrices),
         optax.scale(-0.02))),
]

EXTRA_ROWS = [
    ("muon_spectral", *_both(learning_rate=0.02, preconditioning="spectral",
                             adam_learning_rate=0.01)),
    ("muon_dion_aol_adaptive", *_both(learning_rate=0.02, ns_coeffs="dion",
                                      preconditioning="aol", adaptive=True)),
]
