"""Layer-wise scaling: each parameter array's update scaled by a norm of that array.

A *block* is one leaf of the params tree (a kernel, a bias). These transforms are
stateless (their state is :class:`jtricks.EmptyState`, as optax's), so their
hyperparameters are numbers or arrays, not schedules; ``update`` needs ``params``.
Norms are accumulated in at least fp32 and the scale is cast to the update's dtype,
so bf16 updates stay bf16.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Stateless

__all__ = [
    "ScaleByTrustRatio",
    "scale_by_trust_ratio",
    "ScaleByParamBlockNorm",
    "scale_by_param_block_norm",
    "ScaleByParamBlockRms",
    "scale_by_param_block_rms",
]


def _floored(value: Any, floor: Any) -> Any:
    """``value`` raised to ``floor`` where it is not above it (optax's safe norms)."""
    return jnp.where(value <= floor, floor, value)


def _block_norm(x: Any) -> Any:
    """The L2 norm of one whole array, in at least fp32 (a 0-d array)."""
    return jnp.reshape(jtree.unit_norms(jnp.asarray(x), None), ())


def _block_rms(x: Any) -> Any:
    """The root mean square of one whole array, in at least fp32."""
    x = jnp.asarray(x)
    return jnp.sqrt(jnp.mean(jtree.abs_sq(x.astype(jtree.acc_dtype(x)))))


def _scale_leaves(where: str, fn: Any, updates: Any, params: Any) -> Any:
    """``u * fn(u, p)`` leaf by leaf, the scale cast to the update's dtype."""
    hp.require_params(f"{where}.update", params,
                      "the update is scaled by a norm of each parameter array")

    def leaf(u, p):
        return u * fn(u, p).astype(jnp.result_type(u))

    return jtree.map_checked(leaf, updates, params, names=("updates", "params"),
                             where=f"{where}.update")


class ScaleByTrustRatio(Stateless):
    """LARS/LAMB's layer-wise trust ratio; see :func:`scale_by_trust_ratio`."""

    min_norm: Any
    trust_coefficient: Any
    eps: Any

    def update(self, updates, state, params=None, **extra):
        del extra
        min_norm, coeff, eps = self.min_norm, self.trust_coefficient, self.eps

        def ratio(u, p):
            p_norm = _floored(_block_norm(p), min_norm)
            u_norm = _floored(_block_norm(u), min_norm)
            trust = coeff * p_norm / (u_norm + eps)
            # A block whose params or update are all zero is left unscaled.
            return jnp.where((p_norm == 0) | (u_norm == 0), 1.0, trust)

        return _scale_leaves("scale_by_trust_ratio", ratio, updates, params), state


def scale_by_trust_ratio(min_norm: ArrayLike = 0.0, trust_coefficient: ArrayLike = 1.0,
                         eps: ArrayLike = 0.0) -> ScaleByTrustRatio:
    """Scales each block's update by its trust ratio (You et al., 2017, LARS).

    With ``p`` one parameter array, ``u`` its update and ``||.||`` the L2 norm over
    the whole array::

        ratio = trust_coefficient * max(||p||, min_norm) / (max(||u||, min_norm) + eps)
        u    <- ratio * u            (u unchanged where ||p|| or ||u|| is 0)

    Used by :func:`~jtricks.lars`, :func:`~jtricks.lamb` and
    :func:`~jtricks.fromage`. Same numbers as optax's ``scale_by_trust_ratio``.

    Args:
        min_norm: floor for both norms, >= 0 (0: no floor).
        trust_coefficient: multiplier of the ratio, >= 0.
        eps: added to the update's norm, >= 0.

    Example:
        >>> tx = jt.chain(jt.scale_by_adam(), jt.scale_by_trust_ratio(),
        ...               jt.scale_by_learning_rate(1e-3))
    """
    where = "scale_by_trust_ratio"
    for name, value in (("min_norm", min_norm), ("trust_coefficient", trust_coefficient),
                        ("eps", eps)):
        hp.no_schedule(where, name, value)
    hp.check_nonnegative(where, "min_norm", min_norm,
                         fix="min_norm floors the norms; 0 disables the floor.")
    hp.check_nonnegative(where, "trust_coefficient", trust_coefficient,
                         fix="LARS uses 0.001, LAMB 1.0.")
    hp.check_eps(where, "eps", eps)
    return ScaleByTrustRatio(min_norm=min_norm, trust_coefficient=trust_coefficient, eps=eps)


class ScaleByParamBlockNorm(Stateless):
    """``u -> u * max(||p||, min_scale)`` per block; see :func:`scale_by_param_block_norm`."""

    min_scale: Any

    def update(self, updates, state, params=None, **extra):
        del extra
        floor = self.min_scale
        return _scale_leaves("scale_by_param_block_norm",
                             lambda u, p: _floored(_block_norm(p), floor),
                             updates, params), state


def scale_by_param_block_norm(min_scale: ArrayLike = 1e-3) -> ScaleByParamBlockNorm:
    """Scales each block's update by the L2 norm of that block's parameters.

    ::

        u <- u * max(||p||, min_scale)

    so a step is relative to the size of the weights it changes (as in Adafactor's
    ``multiply_by_parameter_scale``). Same numbers as optax's
    ``scale_by_param_block_norm``.

    Args:
        min_scale: the smallest scale, >= 0 (keeps zero-initialised blocks moving).

    Example:
        >>> tx = jt.chain(jt.scale_by_param_block_norm(), jt.scale(-1e-2))
    """
    hp.no_schedule("scale_by_param_block_norm", "min_scale", min_scale)
    hp.check_nonnegative("scale_by_param_block_norm", "min_scale", min_scale,
                         fix="min_scale floors the scale of a block; the default is 1e-3.")
    return ScaleByParamBlockNorm(min_scale=min_scale)


class ScaleByParamBlockRms(Stateless):
    """``u -> u * max(rms(p), min_scale)`` per block; see :func:`scale_by_param_block_rms`."""

    min_scale: Any

    def update(self, updates, state, params=None, **extra):
        del extra
        floor = self.min_scale
        return _scale_leaves("scale_by_param_block_rms",
                             lambda u, p: _floored(_block_rms(p), floor),
                             updates, params), state


def scale_by_param_block_rms(min_scale: ArrayLike = 1e-3) -> ScaleByParamBlockRms:
    """Scales each block's update by the root mean square of its parameters.

    ::

        u <- u * max(sqrt(mean(p**2)), min_scale)

    Same numbers as optax's ``scale_by_param_block_rms`` (Adafactor's parameter
    scale, Shazeer & Stern, 2018).

    Args:
        min_scale: the smallest scale, >= 0.

    Example:
        >>> tx = jt.chain(jt.scale_by_param_block_rms(), jt.scale(-1e-2))
    """
    hp.no_schedule("scale_by_param_block_rms", "min_scale", min_scale)
    hp.check_nonnegative("scale_by_param_block_rms", "min_scale", min_scale,
                         fix="min_scale floors the scale of a block; the default is 1e-3.")
    return ScaleByParamBlockRms(min_scale=min_scale)
