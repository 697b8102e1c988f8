"""Adaptive per-coordinate scaling: Adagrad, RMSProp and Adam."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field

__all__ = [
    "ScaleByAdagradState",
    "ScaleByAdagrad",
    "scale_by_adagrad",
    "ScaleByRmsState",
    "ScaleByRms",
    "scale_by_rms",
    "ScaleByAdamState",
    "ScaleByAdam",
    "scale_by_adam",
]


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
    nesterov: bool = static_field(default=False)

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
        # Nesterov (NAdam) looks one step ahead: the next step's debiased momentum.
        c1_next = jtree.bias_correction(b1, jtree.increment(count)) if self.nesterov else None

        def leaf(g, m_old, v_old):
            # One fused elementwise pass: read g, m, v once; write u, m, v once.
            m = (1 - b1) * g + b1 * m_old
            v = (1 - b2) * jtree.abs_sq(g) + b2 * v_old
            if c1_next is None:
                m_hat = m / c1.astype(m.dtype)
            else:
                m_hat = (b1 * (m / c1_next.astype(m.dtype))
                         + (1 - b1) * (g / c1.astype(g.dtype)))
            u = m_hat / (jnp.sqrt(v / c2.astype(v.dtype) + eps_root) + eps)
            # The state keeps the dtype init gave it (mu_dtype/nu_dtype or the params'):
            # an fp32 array b1 must not promote a bf16 moment (a scan carry would
            # change type).
            m = m.astype(m_old.dtype)
            v = v.astype(v_old.dtype)
            return u, m, v

        out = jtree.map_checked(leaf, updates, state.mu, state.nu,
                                names=("updates", "state.mu", "state.nu"),
                                where="scale_by_adam.update")
        u, mu, nu = jtree.unzip3(updates, out)
        return u, ScaleByAdamState(count=count, mu=mu, nu=nu)


def scale_by_adam(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8, eps_root: Any = 0.0,
                  mu_dtype: Any = None, nu_dtype: Any = None, *,
                  nesterov: bool = False) -> ScaleByAdam:
    """Rescales updates by Adam's bias-corrected moment estimates.

    With ``g`` the incoming update and ``t`` the 1-based step::

        m <- b1 * m + (1 - b1) * g
        v <- b2 * v + (1 - b2) * g**2
        u <- (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t) + eps_root) + eps)

    With ``nesterov=True`` (NAdam, Dozat 2016, as in optax) the first factor looks
    one step ahead::

        u <- (b1 * m / (1 - b1**(t+1)) + (1 - b1) * g / (1 - b1**t))
             / (sqrt(v / (1 - b2**t) + eps_root) + eps)

    Args:
        b1: decay of the first moment, in [0, 1); a float, array or schedule.
        b2: decay of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of ``mu`` in the state (e.g. ``jnp.float32`` for bf16
            params); ``None`` keeps the params' dtype.
        nu_dtype: dtype of ``nu`` likewise.
        nesterov: use Nesterov momentum (NAdam); static.

    Example:
        >>> tx = jt.chain(jt.scale_by_adam(b1=0.9), jt.scale_by_learning_rate(1e-3))
    """
    hp.check_decay("scale_by_adam", "b1", b1)
    hp.check_decay("scale_by_adam", "b2", b2)
    hp.check_eps("scale_by_adam", "eps", eps)
    hp.check_eps("scale_by_adam", "eps_root", eps_root)
    return ScaleByAdam(
        b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), eps=hp.as_hyper(eps),
        eps_root=hp.as_hyper(eps_root),
        mu_dtype=None if mu_dtype is None else jnp.dtype(mu_dtype),
        nu_dtype=None if nu_dtype is None else jnp.dtype(nu_dtype),
        nesterov=bool(nesterov),
    )


def _full_like(params: Any, value: Any) -> Any:
    """``value`` broadcast to each leaf of ``params``, in the leaf's dtype."""
    return jax.tree.map(lambda p: jnp.full(jnp.shape(p), value, jnp.result_type(p)), params)


class ScaleByAdagradState(NamedTuple):
    """``count`` int32 updates so far; ``sum_of_squares`` of all updates to date."""

    count: jax.Array
    sum_of_squares: Any


class ScaleByAdagrad(Transform):
    """Adagrad's per-coordinate scaling; see :func:`scale_by_adagrad`."""

    initial_accumulator_value: Any
    eps: Any

    def init(self, params):
        hp.check_float_params("scale_by_adagrad", params)
        return ScaleByAdagradState(
            count=jnp.zeros([], jnp.int32),
            sum_of_squares=_full_like(params, self.initial_accumulator_value),
        )

    def update(self, updates, state, params=None, **extra):
        del params, extra
        eps = hp.value_at(self.eps, state.count)

        def leaf(g, s):
            # One fused pass; s keeps its dtype so the state is scan-stable.
            s = (jtree.abs_sq(g) + s).astype(s.dtype)
            return jnp.where(s > 0, jax.lax.rsqrt(s + eps), 0) * g, s

        out = jtree.map_checked(leaf, updates, state.sum_of_squares,
                                names=("updates", "state.sum_of_squares"),
                                where="scale_by_adagrad.update")
        u, sum_of_squares = jtree.unzip2(updates, out)
        return u, ScaleByAdagradState(count=jtree.increment(state.count),
                                      sum_of_squares=sum_of_squares)


def scale_by_adagrad(initial_accumulator_value: Any = 0.1, eps: Any = 1e-7) -> ScaleByAdagrad:
    """Divides each coordinate by the root of its sum of squared updates (Adagrad).

    Same numbers as optax's ``scale_by_rss``. With ``g`` the incoming update::

        s <- s + g**2                       (s starts at initial_accumulator_value)
        u <- g / sqrt(s + eps)              (0 where s == 0)

    Args:
        initial_accumulator_value: the starting value of ``s``, >= 0; a number or an
            array (it is read once, by ``init``).
        eps: added inside the square root, >= 0; a float, an array or a schedule.

    Example:
        >>> tx = jt.chain(jt.scale_by_adagrad(), jt.scale_by_learning_rate(0.1))
    """
    hp.check_initial("scale_by_adagrad", "initial_accumulator_value", initial_accumulator_value)
    hp.check_eps("scale_by_adagrad", "eps", eps)
    return ScaleByAdagrad(initial_accumulator_value=initial_accumulator_value,
                          eps=hp.as_hyper(eps))


class ScaleByRmsState(NamedTuple):
    """``count`` int32 updates so far; ``nu`` the running mean of squared updates;
    ``mu`` the running mean of updates when centered, else ``None``.

    One state type whatever ``centered`` is: only the ``mu`` subtree differs.
    """

    count: jax.Array
    nu: Any
    mu: Any


class ScaleByRms(Transform):
    """RMSProp's scaling; see :func:`scale_by_rms`."""

    decay: Any
    eps: Any
    initial_scale: Any
    centered: bool = static_field(default=False)
    eps_in_sqrt: bool = static_field(default=True)
    bias_correction: bool = static_field(default=False)

    def init(self, params):
        hp.check_float_params("scale_by_rms", params)
        return ScaleByRmsState(
            count=jnp.zeros([], jnp.int32),
            nu=_full_like(params, self.initial_scale),
            mu=jtree.zeros_like(params) if self.centered else None,
        )

    def update(self, updates, state, params=None, **extra):
        del params, extra
        decay = hp.value_at(self.decay, state.count)
        eps = hp.value_at(self.eps, state.count)
        count = jtree.increment(state.count)
        c = jtree.bias_correction(decay, count) if self.bias_correction else None
        eps_in_sqrt = self.eps_in_sqrt

        def debias(x):
            return x if c is None else x / c.astype(x.dtype)

        def scaling(var):
            return jax.lax.rsqrt(var + eps) if eps_in_sqrt else 1 / (jnp.sqrt(var) + eps)

        if not self.centered:
            def leaf(g, v):
                v = ((1 - decay) * jtree.abs_sq(g) + decay * v).astype(v.dtype)
                return scaling(debias(v)) * g, v

            out = jtree.map_checked(leaf, updates, state.nu, names=("updates", "state.nu"),
                                    where="scale_by_rms.update")
            u, nu = jtree.unzip2(updates, out)
            return u, ScaleByRmsState(count=count, nu=nu, mu=None)

        def centered_leaf(g, v, m):
            m = ((1 - decay) * g + decay * m).astype(m.dtype)
            v = ((1 - decay) * jtree.abs_sq(g) + decay * v).astype(v.dtype)
            # The variance estimate can round below zero; clamp it so sqrt stays real.
            var = jnp.real(debias(v)) - jtree.abs_sq(debias(m))
            return scaling(jnp.maximum(var, 0)) * g, v, m

        out = jtree.map_checked(centered_leaf, updates, state.nu, state.mu,
                                names=("updates", "state.nu", "state.mu"),
                                where="scale_by_rms.update")
        u, nu, mu = jtree.unzip3(updates, out)
        return u, ScaleByRmsState(count=count, nu=nu, mu=mu)


def scale_by_rms(decay: Any = 0.9, eps: Any = 1e-8, centered: bool = False, *,
                 initial_scale: Any = 0.0, eps_in_sqrt: bool = True,
                 bias_correction: bool = False) -> ScaleByRms:
    """Divides each coordinate by the root of a running mean of its squares (RMSProp).

    Same numbers as optax's ``scale_by_rms`` (``centered=False``) and
    ``scale_by_stddev`` (``centered=True``) with their defaults; ``eps`` sits
    *inside* the square root. With ``g`` the incoming update::

        nu <- decay * nu + (1 - decay) * g**2
        u  <- g / sqrt(nu + eps)

    and when centered, with ``mu <- decay * mu + (1 - decay) * g``::

        u  <- g / sqrt(max(nu - mu**2, 0) + eps)

    ``eps_in_sqrt=False`` divides by ``sqrt(.) + eps`` instead (PyTorch's placement);
    ``bias_correction=True`` divides ``nu`` and ``mu`` by ``1 - decay**t`` first (``t``
    the 1-based step), as Adam does. Both as in optax.

    The state is always a :class:`ScaleByRmsState` (``mu`` is ``None`` when not
    centered), so neither ``centered`` nor ``bias_correction`` changes its type.

    Args:
        decay: the running mean's decay rate, in [0, 1); a float, an array or a
            schedule (update ``k`` uses ``decay(k)``).
        eps: added inside the square root, >= 0; a float, an array or a schedule.
        centered: divide by the running standard deviation instead of the root mean
            square (static).
        initial_scale: the starting value of ``nu`` (0 as in optax and PyTorch; TF1
            used 1); a number or an array, read once by ``init``.
        eps_in_sqrt: add ``eps`` inside the square root (static).
        bias_correction: debias the running means by ``1 - decay**t`` (static).

    Example:
        >>> tx = jt.chain(jt.scale_by_rms(decay=0.9), jt.scale_by_learning_rate(1e-3))
    """
    hp.check_decay("scale_by_rms", "decay", decay)
    hp.check_eps("scale_by_rms", "eps", eps)
    hp.check_initial("scale_by_rms", "initial_scale", initial_scale)
    return ScaleByRms(decay=hp.as_hyper(decay), eps=hp.as_hyper(eps),
                      initial_scale=initial_scale, centered=bool(centered),
                      eps_in_sqrt=bool(eps_in_sqrt), bias_correction=bool(bias_correction))
