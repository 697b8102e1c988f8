"""Adaptive per-coordinate scaling: Adam (Adagrad and RMSProp live here too)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field

__all__ = [
    "ScaleByAdamState",
    "ScaleByAdam",
    "scale_by_adam",
    "check_decay",
    "check_eps",
]


def check_decay(where: str, name: str, value: Any) -> None:
    """A moment decay rate (b1, b2, rho, momentum) must lie in [0, 1)."""
    hp.check_range(where, name, value, low=0.0, high=1.0, high_open=True,
                   fix=f"{name} is an exponential decay rate; typical values are 0.9-0.999.")


def check_eps(where: str, name: str, value: Any) -> None:
    """A numerical-stability constant must be >= 0."""
    hp.check_range(where, name, value, low=0.0,
                   fix=f"{name} guards a division; use a small positive value such as 1e-8.")


class ScaleByAdamState(NamedTuple):
    """``count`` int32 updates so far; ``mu`` first moment; ``nu`` second moment."""

    count: jax.Array
    mu: Any
    nu: Any


class ScaleByAdam(Transform):
    """Adam's moment estimates; see :func:`scale_by_adam`."""

    b1: Any
    b2: Any
    eps: Any
    eps_root: Any
    mu_dtype: Any = static_field(default=None)
    nu_dtype: Any = static_field(default=None)

    def init(self, params):
        hp.check_float_params("scale_by_adam", params)
        return ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=jtree.zeros_like(params, self.mu_dtype),
            nu=jtree.zeros_like(params, self.nu_dtype),
        )

    def update(self, updates, state, params=None, **extra):
        del params, extra
        b1 = hp.value_at(self.b1, state.count)
        b2 = hp.value_at(self.b2, state.count)
        eps = hp.value_at(self.eps, state.count)
        eps_root = hp.value_at(self.eps_root, state.count)
        count = jtree.increment(state.count)
        c1 = jtree.bias_correction(b1, count)
        c2 = jtree.bias_correction(b2, count)
        mu_dtype, nu_dtype = self.mu_dtype, self.nu_dtype

        def leaf(g, m, v):
            # One fused elementwise pass: read g, m, v once; write u, m, v once.
            m = (1 - b1) * g + b1 * m
            v = (1 - b2) * (g * g) + b2 * v
            u = (m / c1.astype(m.dtype)) / (jnp.sqrt(v / c2.astype(v.dtype) + eps_root) + eps)
            m = m if mu_dtype is None else m.astype(mu_dtype)
            v = v if nu_dtype is None else v.astype(nu_dtype)
            return u, m, v

        out = jtree.map_checked(leaf, updates, state.mu, state.nu,
                                names=("updates", "state.mu", "state.nu"),
                                where="scale_by_adam.update")
        u, mu, nu = jtree.unzip3(updates, out)
        return u, ScaleByAdamState(count=count, mu=mu, nu=nu)


def scale_by_adam(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8, eps_root: Any = 0.0,
                  mu_dtype: Any = None, nu_dtype: Any = None) -> ScaleByAdam:
    """Rescales updates by Adam's bias-corrected moment estimates.

    With ``g`` the incoming update and ``t`` the 1-based step::

        m <- b1 * m + (1 - b1) * g
        v <- b2 * v + (1 - b2) * g**2
        u <- (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t) + eps_root) + eps)

    Args:
        b1: decay of the first moment, in [0, 1); a float, array or schedule.
        b2: decay of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of ``mu`` in the state (e.g. ``jnp.float32`` for bf16
            params); ``None`` keeps the params' dtype.
        nu_dtype: dtype of ``nu`` likewise.

    Example:
        >>> tx = jt.chain(jt.scale_by_adam(b1=0.9), jt.scale_by_learning_rate(1e-3))
    """
    check_decay("scale_by_adam", "b1", b1)
    check_decay("scale_by_adam", "b2", b2)
    check_eps("scale_by_adam", "eps", eps)
    check_eps("scale_by_adam", "eps_root", eps_root)
    return ScaleByAdam(
        b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), eps=hp.as_hyper(eps),
        eps_root=hp.as_hyper(eps_root),
        mu_dtype=None if mu_dtype is None else jnp.dtype(mu_dtype),
        nu_dtype=None if nu_dtype is None else jnp.dtype(nu_dtype),
    )
