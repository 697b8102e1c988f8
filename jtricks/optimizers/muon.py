"""Muon: orthogonalised momentum for matrices, AdamW for every other parameter."""

from __future__ import annotations

from typing import Any

import jax

from jtricks import hyperparams as hp
from jtricks.base import Struct, chain, static_field
from jtricks.optimizers.adaptive import adamw
from jtricks.transforms.decay import add_decayed_weights
from jtricks.transforms.masking import Partition, partition
from jtricks.transforms.muon import (
    DEFAULT_NS_COEFFS,
    NS_COEFFS_PRESETS,
    is_dimension_numbers,
    scale_by_muon,
    scale_by_shape,
)
from jtricks.transforms.scaling import scale_by_learning_rate

__all__ = ["muon"]


def _labels_by_rank(params: Any) -> Any:
    """The default split: Muon for 2-D leaves, Adam for the rest."""
    return jax.tree.map(lambda x: "muon" if x.ndim == 2 else "adam", params)


class _LabelsFromDims(Struct):
    """``params -> labels``: ``"muon"`` where the dimension numbers name a spec,
    ``"adam"`` where they are ``None``. A struct (not a closure) so that two equal
    optimizers have equal, hashable labels and a jitted step does not recompile."""

    dims: Any = static_field()

    def __call__(self, params):
        dims = self.dims(params) if callable(self.dims) and not is_dimension_numbers(
            self.dims) else self.dims
        return jax.tree.map(
            lambda d, sub: jax.tree.map(lambda _: "adam" if d is None else "muon", sub),
            dims, params, is_leaf=lambda x: x is None or is_dimension_numbers(x))


def muon(learning_rate: Any, ns_coeffs: Any = DEFAULT_NS_COEFFS, ns_steps: Any = 5,
         beta: Any = 0.95, eps: Any = 1e-8, weight_decay: Any = 0.0,
         weight_decay_mask: Any = None, mu_dtype: Any = None, *, nesterov: bool = True,
         adaptive: bool = False, preconditioning: str = "frobenius", adam_b1: Any = 0.9,
         adam_b2: Any = 0.999, adam_eps_root: Any = 0.0, adam_weight_decay: Any = 0.0,
         adam_learning_rate: Any = None, muon_weight_dimension_numbers: Any = None,
         consistent_rms: Any = None) -> Partition:
    """Muon (Jordan et al., 2024): momentum orthogonalised by Newton-Schulz steps.

    ``optax.contrib.muon``'s composition, so the states nest alike: a ``partition``
    sending matrices to Muon and every other leaf to AdamW::

        muon leaves:  u <- scale_by_muon(g)             (see scale_by_muon)
                      u <- sqrt(max(1, fan_out / fan_in)) * u
                           (or sqrt(max(fan_in, fan_out)) * consistent_rms * u)
                      w <- w - lr(k) * (u + weight_decay * w)   (where the mask says)
        adam leaves:  w <- adamw(adam_learning_rate or learning_rate, adam_b1, adam_b2,
                                 eps, adam_eps_root, adam_weight_decay, nesterov)

    By default the 2-D leaves are Muon's; ``muon_weight_dimension_numbers`` chooses
    them otherwise (``None`` entries go to Adam) and says which axes of a tensor form
    the matrix.

    Args:
        learning_rate: step size, >= 0; a float, an array or a schedule.
        ns_coeffs: ``(a, b, c)``, rows of them (one per step), or a preset name
            (``"standard"``, ``"dion"``).
        ns_steps: Newton-Schulz steps (a Python int).
        beta: momentum decay in [0, 1).
        eps: the normalisation's (and Adam's) eps, >= 0.
        weight_decay: decoupled decay of the Muon leaves, >= 0 (times the rate).
        weight_decay_mask: ``None`` or a tree of bools / callable selecting them.
        mu_dtype: dtype of both momenta (``None``: the params').
        nesterov: Nesterov momentum, for Muon and Adam alike (static).
        adaptive: scale Muon's steps by the dual norm (static).
        preconditioning: ``"frobenius"``, ``"spectral"``, ``"aol"`` or ``"schatten"``.
        adam_b1: Adam's first-moment decay in [0, 1).
        adam_b2: Adam's second-moment decay in [0, 1).
        adam_eps_root: Adam's eps inside the root, >= 0.
        adam_weight_decay: Adam's decoupled weight decay, >= 0.
        adam_learning_rate: Adam's step size (``None``: ``learning_rate``).
        muon_weight_dimension_numbers: ``None``, or a tree of
            :class:`MuonDimensionNumbers` and ``None`` shaped like the params (a
            prefix will do), or a callable ``params -> such a tree``.
        consistent_rms: ``None`` for width scaling, or a target RMS > 0.

    Example:
        >>> tx = jt.muon(0.02)
    """
    with hp.reporting_as("muon"):
        if isinstance(ns_coeffs, str):
            if ns_coeffs not in NS_COEFFS_PRESETS:
                raise ValueError(f"muon: ns_coeffs preset {ns_coeffs!r} is unknown; the "
                                 f"presets are {sorted(NS_COEFFS_PRESETS)}.")
            ns_coeffs = NS_COEFFS_PRESETS[ns_coeffs]
        hp.check_learning_rate("muon", learning_rate)
        if adam_learning_rate is not None:
            hp.check_range("muon", "adam_learning_rate", adam_learning_rate, low=0.0,
                           fix="A learning rate must be non-negative, e.g. 1e-3.")
        hp.check_decay("muon", "adam_b1", adam_b1)
        hp.check_decay("muon", "adam_b2", adam_b2)
        hp.check_eps("muon", "adam_eps_root", adam_eps_root)
        hp.check_nonnegative("muon", "adam_weight_decay", adam_weight_decay)
        dims = muon_weight_dimension_numbers
        labels = _labels_by_rank if dims is None else _LabelsFromDims(dims=dims)
        muon_tx = chain(
            scale_by_muon(ns_coeffs, ns_steps, beta, eps, mu_dtype, nesterov=nesterov,
                          adaptive=adaptive, preconditioning=preconditioning,
                          weight_dimension_numbers=dims),
            scale_by_shape(dims, consistent_rms),
            add_decayed_weights(weight_decay, weight_decay_mask),
            scale_by_learning_rate(learning_rate),
        )
        adam_tx = adamw(learning_rate if adam_learning_rate is None else adam_learning_rate,
                        adam_b1, adam_b2, eps, adam_eps_root, mu_dtype,
                        weight_decay=adam_weight_decay, nesterov=nesterov)
        return partition({"muon": muon_tx, "adam": adam_tx}, labels)
