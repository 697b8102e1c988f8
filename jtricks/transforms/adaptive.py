"""Adaptive per-coordinate scaling: Adagrad, RMSProp and Adam."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field

__all__ = [
    "ScaleByRssState",
    "ScaleByRss",
    "scale_by_rss",
    "scale_by_adagrad",
    "ScaleByRmsState",
    "ScaleByRmsWithCountState",
    "ScaleByRStdDevState",
    "ScaleByRStdDevWithCountState",
    "ScaleByRms",
    "scale_by_rms",
    "scale_by_stddev",
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
            count=jtree.scalar(0, jnp.int32, params),
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
                  mu_dtype: Any = None, *, nesterov: bool = False,
                  nu_dtype: Any = None) -> ScaleByAdam:
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
        nesterov: use Nesterov momentum (NAdam); static.
        nu_dtype: dtype of ``nu`` likewise (a jtricks keyword).

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
    return jtree.full_like(params, value)


class ScaleByRssState(NamedTuple):
    """``sum_of_squares`` of all updates to date (optax's ``ScaleByRssState``)."""

    sum_of_squares: Any


class ScaleByRss(Transform):
    """Adagrad's per-coordinate scaling; see :func:`scale_by_rss`."""

    initial_accumulator_value: Any
    eps: Any

    def init(self, params):
        hp.check_float_params("scale_by_rss", params)
        sums = _full_like(params, self.initial_accumulator_value)
        return hp.with_count(self, ScaleByRssState(sum_of_squares=sums))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        count, inner = hp.split_count(state)
        eps = hp.value_at(self.eps, count)

        def leaf(g, s):
            # One fused pass; s keeps its dtype so the state is scan-stable.
            s = (jtree.abs_sq(g) + s).astype(s.dtype)
            return jnp.where(s > 0, jax.lax.rsqrt(s + eps), 0) * g, s

        out = jtree.map_checked(leaf, updates, inner.sum_of_squares,
                                names=("updates", "state.sum_of_squares"),
                                where="scale_by_rss.update")
        u, sum_of_squares = jtree.unzip2(updates, out)
        return u, hp.next_count(state, ScaleByRssState(sum_of_squares=sum_of_squares))


def scale_by_rss(initial_accumulator_value: Any = 0.1, eps: Any = 1e-7) -> ScaleByRss:
    """Divides each coordinate by the root of its sum of squared updates (Adagrad).

    With ``g`` the incoming update::

        s <- s + |g|**2                     (s starts at initial_accumulator_value)
        u <- g / sqrt(s + eps)              (0 where s == 0)

    Args:
        initial_accumulator_value: the starting value of ``s``, >= 0; a number or an
            array (it is read once, by ``init``).
        eps: added inside the square root, >= 0; a float, an array or a schedule.

    Example:
        >>> tx = jt.chain(jt.scale_by_rss(), jt.scale_by_learning_rate(0.1))
    """
    hp.check_initial("scale_by_rss", "initial_accumulator_value", initial_accumulator_value)
    hp.check_eps("scale_by_rss", "eps", eps)
    return ScaleByRss(initial_accumulator_value=initial_accumulator_value,
                      eps=hp.as_hyper(eps))


def scale_by_adagrad(initial_accumulator_value: Any = 0.1, eps: Any = 1e-7) -> ScaleByRss:
    """Adagrad's scaling under the lesson's name: exactly :func:`scale_by_rss`."""
    with hp.reporting_as("scale_by_adagrad"):
        return scale_by_rss(initial_accumulator_value, eps)


class ScaleByRmsState(NamedTuple):
    """``nu``: the running mean of squared updates."""

    nu: Any


class ScaleByRmsWithCountState(NamedTuple):
    """``count`` int32 updates so far (for the bias correction); ``nu`` as above."""

    count: jax.Array
    nu: Any


class ScaleByRStdDevState(NamedTuple):
    """``mu``: the running mean of updates; ``nu``: of their squares."""

    mu: Any
    nu: Any


class ScaleByRStdDevWithCountState(NamedTuple):
    """``count`` int32 updates so far (for the bias correction); ``mu``, ``nu`` as above."""

    count: jax.Array
    mu: Any
    nu: Any


class ScaleByRms(Transform):
    """RMSProp's scaling, plain or centered; see :func:`scale_by_rms`."""

    decay: Any
    eps: Any
    initial_scale: Any
    eps_in_sqrt: bool = static_field(default=True)
    bias_correction: bool = static_field(default=False)
    centered: bool = static_field(default=False)

    def _state(self, count: Any, mu: Any, nu: Any) -> Any:
        """optax's state for this configuration (four kinds: centered x debiased)."""
        if self.centered:
            if self.bias_correction:
                return ScaleByRStdDevWithCountState(count=count, mu=mu, nu=nu)
            return ScaleByRStdDevState(mu=mu, nu=nu)
        if self.bias_correction:
            return ScaleByRmsWithCountState(count=count, nu=nu)
        return ScaleByRmsState(nu=nu)

    def init(self, params):
        hp.check_float_params(self._name(), params)
        mu = jtree.zeros_like(params) if self.centered else None
        state = self._state(jtree.scalar(0, jnp.int32, params), mu,
                            _full_like(params, self.initial_scale))
        # A debiased state counts already; any other counts only for a schedule.
        return state if self.bias_correction else hp.with_count(self, state)

    def _name(self) -> str:
        return "scale_by_stddev" if self.centered else "scale_by_rms"

    def update(self, updates, state, params=None, **extra):
        del params, extra
        count, inner = (state.count, state) if self.bias_correction else hp.split_count(state)
        decay = hp.value_at(self.decay, count)
        eps = hp.value_at(self.eps, count)
        new_count = None if count is None else jtree.increment(count)
        c = jtree.bias_correction(decay, new_count) if self.bias_correction else None
        eps_in_sqrt, centered = self.eps_in_sqrt, self.centered

        def debias(x):
            return x if c is None else x / c.astype(x.dtype)

        def scaling(var):
            return jax.lax.rsqrt(var + eps) if eps_in_sqrt else 1 / (jnp.sqrt(var) + eps)

        def plain(g, v):
            v = ((1 - decay) * jtree.abs_sq(g) + decay * v).astype(v.dtype)
            return scaling(debias(v)) * g, v

        def centered_leaf(g, v, m):
            v = ((1 - decay) * jtree.abs_sq(g) + decay * v).astype(v.dtype)
            m = ((1 - decay) * g + decay * m).astype(m.dtype)
            # The variance estimate can round below zero; clamp it so sqrt stays real.
            var = jnp.maximum(jnp.real(debias(v)) - jtree.abs_sq(debias(m)), 0)
            return scaling(var) * g, v, m

        where = f"{self._name()}.update"
        if centered:
            out = jtree.map_checked(centered_leaf, updates, inner.nu, inner.mu,
                                    names=("updates", "state.nu", "state.mu"), where=where)
            u, nu, mu = jtree.unzip3(updates, out)
        else:
            out = jtree.map_checked(plain, updates, inner.nu, names=("updates", "state.nu"),
                                    where=where)
            (u, nu), mu = jtree.unzip2(updates, out), None
        new = self._state(new_count, mu, nu)
        return u, new if self.bias_correction else hp.next_count(state, new)


def _rms(where: str, decay: Any, eps: Any, initial_scale: Any, eps_in_sqrt: bool,
         bias_correction: bool, centered: bool) -> ScaleByRms:
    hp.check_decay(where, "decay", decay)
    hp.check_eps(where, "eps", eps)
    hp.check_initial(where, "initial_scale", initial_scale)
    return ScaleByRms(decay=hp.as_hyper(decay), eps=hp.as_hyper(eps),
                      initial_scale=initial_scale, eps_in_sqrt=bool(eps_in_sqrt),
                      bias_correction=bool(bias_correction), centered=bool(centered))


def scale_by_rms(decay: Any = 0.9, eps: Any = 1e-8, initial_scale: Any = 0.0,
                 eps_in_sqrt: bool = True, bias_correction: bool = False, *,
                 centered: bool = False) -> ScaleByRms:
    """Divides each coordinate by the root of a running mean of its squares (RMSProp).

    optax's ``scale_by_rms``; ``eps`` sits *inside* the square root by default. With
    ``g`` the incoming update and ``t`` the 1-based step::

        nu <- decay * nu + (1 - decay) * |g|**2
        u  <- g / sqrt(nu + eps)

    ``eps_in_sqrt=False`` divides by ``sqrt(nu) + eps`` instead (PyTorch's placement);
    ``bias_correction=True`` divides ``nu`` by ``1 - decay**t`` first, as Adam does.
    ``centered=True`` (a jtricks keyword) is :func:`scale_by_stddev`.

    Args:
        decay: the running mean's decay rate, in [0, 1); a float, an array or a
            schedule (update ``k`` uses ``decay(k)``).
        eps: added inside the square root, >= 0; a float, an array or a schedule.
        initial_scale: the starting value of ``nu`` (0 as in optax and PyTorch; TF1
            used 1); a number or an array, read once by ``init``.
        eps_in_sqrt: add ``eps`` inside the square root (static).
        bias_correction: debias the running mean by ``1 - decay**t`` (static).
        centered: divide by the running standard deviation instead (static).

    Example:
        >>> tx = jt.chain(jt.scale_by_rms(decay=0.9), jt.scale_by_learning_rate(1e-3))
    """
    where = "scale_by_stddev" if centered else "scale_by_rms"
    return _rms(where, decay, eps, initial_scale, eps_in_sqrt, bias_correction, centered)


def scale_by_stddev(decay: Any = 0.9, eps: Any = 1e-8, initial_scale: Any = 0.0,
                    eps_in_sqrt: bool = True, bias_correction: bool = False) -> ScaleByRms:
    """Divides each coordinate by the running standard deviation of its updates
    (centered RMSProp, Graves 2013); optax's ``scale_by_stddev``.

    With ``mu <- decay * mu + (1 - decay) * g`` beside ``nu`` (see
    :func:`scale_by_rms`)::

        u <- g / sqrt(max(nu - |mu|**2, 0) + eps)

    (both debiased first with ``bias_correction=True``). The variance is clamped at
    0, so rounding can never make it negative (optax does not clamp).

    Args:
        decay: the running means' decay rate, in [0, 1); a float, array or schedule.
        eps: added inside the square root, >= 0.
        initial_scale: the starting value of ``nu``; read once by ``init``.
        eps_in_sqrt: add ``eps`` inside the square root (static).
        bias_correction: debias both running means by ``1 - decay**t`` (static).

    Example:
        >>> tx = jt.chain(jt.scale_by_stddev(0.9), jt.scale_by_learning_rate(1e-3))
    """
    return _rms("scale_by_stddev", decay, eps, initial_scale, eps_in_sqrt, bias_correction,
                True)
