"""Adafactor: Adam-like steps from factored second moments, in sublinear memory."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks.base import Chain, chain
from jtricks.transforms.constraints import clip_by_block_rms
from jtricks.transforms.decay import add_decayed_weights
from jtricks.transforms.ema import ema
from jtricks.transforms.factored import scale_by_factored_rms
from jtricks.transforms.scaling import scale, scale_by_learning_rate
from jtricks.transforms.trust_ratio import scale_by_param_block_rms

__all__ = ["adafactor"]


def adafactor(learning_rate: Any = None, min_dim_size_to_factor: int = 128,
              decay_rate: Any = 0.8, decay_offset: Any = 0,
              multiply_by_parameter_scale: bool = True, clipping_threshold: Any = 1.0,
              momentum: Any = None, dtype_momentum: Any = jnp.float32,
              weight_decay_rate: Any = None, eps: Any = 1e-30, factored: bool = True,
              weight_decay_mask: Any = None) -> Chain:
    """Adafactor (Shazeer & Stern, 2018): factored second moments, relative steps.

    The chain of ``optax.adafactor``, block for block (so the states nest alike),
    with the optional blocks present exactly when optax includes them::

        u <- g / sqrt(v_hat)                  (scale_by_factored_rms; v_hat factored
                                               for matrices, see that function)
        u <- u / max(1, rms(u) / clipping_threshold)      (clipping_threshold given)
        u <- lr(k) * u                                    (learning_rate given)
        u <- u * max(rms(w), 1e-3)                        (multiply_by_parameter_scale)
        m <- momentum * m + (1 - momentum) * u;  u <- m   (momentum given)
        u <- u + weight_decay_rate(k) * w                 (weight_decay_rate given)
        w <- w - u

    ``rms`` is taken over each leaf (a weight matrix, a bias vector) separately.

    Args:
        learning_rate: step size, >= 0 (a float, an array or a schedule), or ``None``
            for none (the relative step of ``multiply_by_parameter_scale`` alone).
        min_dim_size_to_factor: factor a leaf's moment only when its second largest
            axis has at least this many entries (a Python int).
        decay_rate: exponent of the second-moment decay ``1 - t**-decay_rate``, >= 0.
        decay_offset: subtracted from the step count (restarts the decay when
            fine-tuning); a whole number.
        multiply_by_parameter_scale: scale each step by its parameter's RMS (static).
        clipping_threshold: clip each leaf's update to this RMS, > 0; ``None`` for no
            clipping.
        momentum: EMA decay of the updates in [0, 1), or ``None`` for none (momentum
            costs a full params-sized buffer).
        dtype_momentum: dtype of the momentum buffer.
        weight_decay_rate: decoupled weight decay, >= 0 (a number, an array or a
            schedule), or ``None``.
        eps: added to every squared gradient, >= 0.
        factored: factor the moments at all (static).
        weight_decay_mask: ``None`` or a tree of bools / a callable ``params -> tree``
            choosing which leaves decay.

    Example:
        >>> tx = jt.adafactor(1e-2)
    """
    with hp.reporting_as("adafactor"):
        if learning_rate is not None:
            hp.check_learning_rate("adafactor", learning_rate)
        if weight_decay_rate is not None:
            hp.check_nonnegative("adafactor", "weight_decay_rate", weight_decay_rate)
        txs: list[Any] = [scale_by_factored_rms(factored, decay_rate, decay_offset,
                                                min_dim_size_to_factor, eps)]
        if clipping_threshold is not None:
            hp.check_threshold("adafactor", "clipping_threshold", clipping_threshold)
            txs.append(clip_by_block_rms(clipping_threshold))
        if learning_rate is not None:
            txs.append(scale_by_learning_rate(learning_rate, flip_sign=False))
        if multiply_by_parameter_scale:
            txs.append(scale_by_param_block_rms())
        if momentum is not None:
            hp.check_decay("adafactor", "momentum", momentum)
            txs.append(ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
        if weight_decay_rate is not None:
            txs.append(add_decayed_weights(weight_decay_rate, weight_decay_mask))
        txs.append(scale(-1))
        return chain(*txs)
