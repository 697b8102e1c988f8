"""Adam's relatives: AMSGrad, Adamax, AdaBelief, Yogi and Rectified Adam.

Each keeps Adam's first moment ``m`` and changes what divides it: a running maximum
of the second moment (AMSGrad), an infinity norm (Adamax), the variance of the
gradient around ``m`` (AdaBelief), an additive second-moment update (Yogi), or Adam's
denominator only once its variance is tractable (RAdam). States are optax's, field
for field; Adamax, Yogi and RAdam reuse :class:`ScaleByAdamState` as optax does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field
from jtricks.transforms.adaptive import ScaleByAdamState

__all__ = [
    "ScaleByAmsgradState",
    "ScaleByAmsgrad",
    "scale_by_amsgrad",
    "ScaleByAdamax",
    "scale_by_adamax",
    "ScaleByBeliefState",
    "ScaleByBelief",
    "scale_by_belief",
    "ScaleByYogi",
    "scale_by_yogi",
    "ScaleByRadam",
    "scale_by_radam",
]


def _unzip(like: Any, tree_of_tuples: Any, n: int) -> tuple[Any, ...]:
    """Splits a tree whose leaves (at ``like``'s leaf positions) are ``n``-tuples."""
    treedef = jax.tree.structure(like)
    tuples = treedef.flatten_up_to(tree_of_tuples)
    return tuple(treedef.unflatten([t[i] for t in tuples]) for i in range(n))


def _first_moment_hat(b1: Any, count: jax.Array, nesterov: bool):
    """``(g, m) -> m_hat``: Adam's debiased first moment, or NAdam's look-ahead one."""
    c1 = jtree.bias_correction(b1, count)
    if not nesterov:
        return lambda g, m: m / c1.astype(m.dtype)
    c1_next = jtree.bias_correction(b1, jtree.increment(count))
    return lambda g, m: (b1 * (m / c1_next.astype(m.dtype))
                         + (1 - b1) * (g / c1.astype(g.dtype)))


def _adam_init(where: str, params: Any, mu_dtype: Any = None) -> ScaleByAdamState:
    hp.check_float_params(where, params)
    return ScaleByAdamState(count=jtree.scalar(0, jnp.int32, params),
                            mu=jtree.zeros_like(params, mu_dtype),
                            nu=jtree.zeros_like(params))


def _check_moments(where: str, b1: Any, b2: Any) -> None:
    hp.check_decay(where, "b1", b1)
    hp.check_decay(where, "b2", b2)


def _dtype(dtype: Any) -> Any:
    return None if dtype is None else jnp.dtype(dtype)


class ScaleByAmsgradState(NamedTuple):
    """``count`` int32 updates so far; ``mu``, ``nu`` Adam's moments; ``nu_max`` the
    running maximum of the (debiased) second moment."""

    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any


class ScaleByAmsgrad(Transform):
    """AMSGrad's scaling; see :func:`scale_by_amsgrad`."""

    b1: Any
    b2: Any
    eps: Any
    eps_root: Any
    mu_dtype: Any = static_field(default=None)
    bias_correction_mu: bool = static_field(default=True)
    bias_correction_nu: bool = static_field(default=True)

    def init(self, params):
        hp.check_float_params("scale_by_amsgrad", params)
        return ScaleByAmsgradState(
            count=jtree.scalar(0, jnp.int32, params), mu=jtree.zeros_like(params, self.mu_dtype),
            nu=jtree.zeros_like(params), nu_max=jtree.zeros_like(params))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        b1, b2, eps, eps_root = (hp.value_at(x, state.count)
                                 for x in (self.b1, self.b2, self.eps, self.eps_root))
        count = jtree.increment(state.count)
        c1 = jtree.bias_correction(b1, count) if self.bias_correction_mu else None
        c2 = jtree.bias_correction(b2, count) if self.bias_correction_nu else None

        def leaf(g, m_old, v_old, vmax_old):
            m = (1 - b1) * g + b1 * m_old
            v = (1 - b2) * jtree.abs_sq(g) + b2 * v_old
            m_hat = m if c1 is None else m / c1.astype(m.dtype)
            vmax = jnp.maximum(vmax_old, v if c2 is None else v / c2.astype(v.dtype))
            u = m_hat / (jnp.sqrt(vmax + eps_root) + eps)
            return (u, m.astype(m_old.dtype), v.astype(v_old.dtype),
                    vmax.astype(vmax_old.dtype))

        out = jtree.map_checked(leaf, updates, state.mu, state.nu, state.nu_max,
                                names=("updates", "state.mu", "state.nu", "state.nu_max"),
                                where="scale_by_amsgrad.update")
        u, mu, nu, nu_max = _unzip(updates, out, 4)
        return u, ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)


def scale_by_amsgrad(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8, eps_root: Any = 0.0,
                     mu_dtype: Any = None, bias_correction_mu: bool = True,
                     bias_correction_nu: bool = True) -> ScaleByAmsgrad:
    """Rescales updates as AMSGrad does (Reddi et al., 2018, "On the Convergence of
    Adam and Beyond"): Adam divided by the largest second moment seen so far.

    With ``g`` the incoming update and ``t`` the 1-based step::

        m     <- b1 * m + (1 - b1) * g
        v     <- b2 * v + (1 - b2) * g**2
        v_max <- max(v_max, v / (1 - b2**t))          (v itself without bias_correction_nu)
        u     <- (m / (1 - b1**t)) / (sqrt(v_max + eps_root) + eps)

    Args:
        b1: decay of the first moment, in [0, 1); a float, an array or a schedule.
        b2: decay of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of ``mu`` in the state; ``None`` keeps the params'. Static.
        bias_correction_mu: debias ``m`` (``False``, with ``bias_correction_nu=False``,
            is the paper's algorithm). Static.
        bias_correction_nu: debias ``v`` before taking the maximum. Static.

    Example:
        >>> tx = jt.chain(jt.scale_by_amsgrad(), jt.scale_by_learning_rate(1e-3))
    """
    _check_moments("scale_by_amsgrad", b1, b2)
    hp.check_eps("scale_by_amsgrad", "eps", eps)
    hp.check_eps("scale_by_amsgrad", "eps_root", eps_root)
    return ScaleByAmsgrad(b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), eps=hp.as_hyper(eps),
                          eps_root=hp.as_hyper(eps_root), mu_dtype=_dtype(mu_dtype),
                          bias_correction_mu=bool(bias_correction_mu),
                          bias_correction_nu=bool(bias_correction_nu))


class ScaleByAdamax(Transform):
    """Adamax's scaling; see :func:`scale_by_adamax`."""

    b1: Any
    b2: Any
    eps: Any

    def init(self, params):
        return _adam_init("scale_by_adamax", params)

    def update(self, updates, state, params=None, **extra):
        del params, extra
        b1, b2, eps = (hp.value_at(x, state.count) for x in (self.b1, self.b2, self.eps))
        count = jtree.increment(state.count)
        c1 = jtree.bias_correction(b1, count)

        def leaf(g, m_old, v_old):
            m = (1 - b1) * g + b1 * m_old
            v = jnp.maximum(jnp.abs(g) + eps, b2 * v_old)
            return (m / c1.astype(m.dtype)) / v, m.astype(m_old.dtype), v.astype(v_old.dtype)

        out = jtree.map_checked(leaf, updates, state.mu, state.nu,
                                names=("updates", "state.mu", "state.nu"),
                                where="scale_by_adamax.update")
        u, mu, nu = _unzip(updates, out, 3)
        return u, ScaleByAdamState(count=count, mu=mu, nu=nu)


def scale_by_adamax(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8) -> ScaleByAdamax:
    """Rescales updates as Adamax does (Kingma & Ba, 2015, section 7): Adam with the
    second moment replaced by a decaying infinity norm, which needs no debiasing.

    ::

        m <- b1 * m + (1 - b1) * g
        v <- max(|g| + eps, b2 * v)
        u <- (m / (1 - b1**t)) / v

    Args:
        b1: decay of the first moment, in [0, 1); a float, an array or a schedule.
        b2: decay of the infinity norm, in [0, 1).
        eps: added to ``|g|``, > 0: it is the only guard of the division (a zero
            gradient at the first step would give 0 / 0).

    Example:
        >>> tx = jt.chain(jt.scale_by_adamax(), jt.scale_by_learning_rate(2e-3))
    """
    _check_moments("scale_by_adamax", b1, b2)
    hp.check_positive("scale_by_adamax", "eps", eps,
                      fix="eps keeps v above 0 so u = m / v is finite; use e.g. 1e-8.")
    return ScaleByAdamax(b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), eps=hp.as_hyper(eps))


class ScaleByBeliefState(NamedTuple):
    """``count`` int32 updates so far; ``mu`` the first moment; ``nu`` the running
    mean of the squared prediction error ``(g - mu)**2`` (plus ``eps_root``)."""

    count: jax.Array
    mu: Any
    nu: Any


class ScaleByBelief(Transform):
    """AdaBelief's scaling; see :func:`scale_by_belief`."""

    b1: Any
    b2: Any
    eps: Any
    eps_root: Any
    nesterov: bool = static_field(default=False)

    def init(self, params):
        hp.check_float_params("scale_by_belief", params)
        return ScaleByBeliefState(count=jtree.scalar(0, jnp.int32, params),
                                  mu=jtree.zeros_like(params), nu=jtree.zeros_like(params))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        b1, b2, eps, eps_root = (hp.value_at(x, state.count)
                                 for x in (self.b1, self.b2, self.eps, self.eps_root))
        count = jtree.increment(state.count)
        m_hat = _first_moment_hat(b1, count, self.nesterov)
        c2 = jtree.bias_correction(b2, count)

        def leaf(g, m_old, s_old):
            m = (1 - b1) * g + b1 * m_old
            s = (1 - b2) * jtree.abs_sq(g - m) + b2 * s_old + eps_root
            u = m_hat(g, m) / (jnp.sqrt(s / c2.astype(s.dtype)) + eps)
            return u, m.astype(m_old.dtype), s.astype(s_old.dtype)

        out = jtree.map_checked(leaf, updates, state.mu, state.nu,
                                names=("updates", "state.mu", "state.nu"),
                                where="scale_by_belief.update")
        u, mu, nu = _unzip(updates, out, 3)
        return u, ScaleByBeliefState(count=count, mu=mu, nu=nu)


def scale_by_belief(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-16, eps_root: Any = 1e-16,
                    *, nesterov: bool = False) -> ScaleByBelief:
    """Rescales updates as AdaBelief does (Zhuang et al., 2020, "AdaBelief Optimizer:
    Adapting Stepsizes by the Belief in Observed Gradients"): Adam whose denominator
    is the spread of ``g`` around its prediction ``m``, not the size of ``g``.

    ::

        m <- b1 * m + (1 - b1) * g
        s <- b2 * s + (1 - b2) * (g - m)**2 + eps_root
        u <- (m / (1 - b1**t)) / (sqrt(s / (1 - b2**t)) + eps)

    ``nesterov=True`` uses NAdam's look-ahead first moment (see ``scale_by_adam``).

    Args:
        b1: decay of the first moment, in [0, 1); a float, an array or a schedule.
        b2: decay of the squared prediction error, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added to ``s`` at every step (it is kept in the state), >= 0.
        nesterov: use Nesterov momentum. Static.

    Example:
        >>> tx = jt.chain(jt.scale_by_belief(), jt.scale_by_learning_rate(1e-3))
    """
    _check_moments("scale_by_belief", b1, b2)
    hp.check_eps("scale_by_belief", "eps", eps)
    hp.check_eps("scale_by_belief", "eps_root", eps_root)
    return ScaleByBelief(b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), eps=hp.as_hyper(eps),
                         eps_root=hp.as_hyper(eps_root), nesterov=bool(nesterov))


class ScaleByYogi(Transform):
    """Yogi's scaling; see :func:`scale_by_yogi`."""

    b1: Any
    b2: Any
    eps: Any
    eps_root: Any
    initial_accumulator_value: Any

    def init(self, params):
        hp.check_float_params("scale_by_yogi", params)
        value = self.initial_accumulator_value

        return ScaleByAdamState(count=jtree.scalar(0, jnp.int32, params),
                                mu=jtree.full_like(params, value),
                                nu=jtree.full_like(params, value))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        b1, b2, eps, eps_root = (hp.value_at(x, state.count)
                                 for x in (self.b1, self.b2, self.eps, self.eps_root))
        count = jtree.increment(state.count)
        c1 = jtree.bias_correction(b1, count)
        c2 = jtree.bias_correction(b2, count)

        def leaf(g, m_old, v_old):
            m = (1 - b1) * g + b1 * m_old
            g2 = jtree.abs_sq(g)
            v = v_old - (1 - b2) * jnp.sign(v_old - g2) * g2
            u = (m / c1.astype(m.dtype)) / (jnp.sqrt(v / c2.astype(v.dtype) + eps_root) + eps)
            return u, m.astype(m_old.dtype), v.astype(v_old.dtype)

        out = jtree.map_checked(leaf, updates, state.mu, state.nu,
                                names=("updates", "state.mu", "state.nu"),
                                where="scale_by_yogi.update")
        u, mu, nu = _unzip(updates, out, 3)
        return u, ScaleByAdamState(count=count, mu=mu, nu=nu)


def scale_by_yogi(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-3, eps_root: Any = 0.0,
                  initial_accumulator_value: Any = 1e-6) -> ScaleByYogi:
    """Rescales updates as Yogi does (Zaheer et al., 2018, "Adaptive Methods for
    Nonconvex Optimization"): the second moment moves towards ``g**2`` by a step of
    fixed size, so a burst of large gradients cannot make it forget quickly.

    ::

        m <- b1 * m + (1 - b1) * g
        v <- v - (1 - b2) * sign(v - g**2) * g**2
        u <- (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t) + eps_root) + eps)

    Args:
        b1: decay of the first moment, in [0, 1); a float, an array or a schedule.
        b2: rate of the second moment's steps, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        initial_accumulator_value: the starting value of both ``m`` and ``v``, >= 0;
            a number or an array (read once, by ``init``).

    Example:
        >>> tx = jt.chain(jt.scale_by_yogi(), jt.scale_by_learning_rate(1e-2))
    """
    _check_moments("scale_by_yogi", b1, b2)
    hp.check_eps("scale_by_yogi", "eps", eps)
    hp.check_eps("scale_by_yogi", "eps_root", eps_root)
    hp.check_initial("scale_by_yogi", "initial_accumulator_value", initial_accumulator_value)
    return ScaleByYogi(b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), eps=hp.as_hyper(eps),
                       eps_root=hp.as_hyper(eps_root),
                       initial_accumulator_value=initial_accumulator_value)


class ScaleByRadam(Transform):
    """Rectified Adam's scaling; see :func:`scale_by_radam`."""

    b1: Any
    b2: Any
    eps: Any
    eps_root: Any
    threshold: Any
    nesterov: bool = static_field(default=False)

    def init(self, params):
        return _adam_init("scale_by_radam", params)

    def update(self, updates, state, params=None, **extra):
        del params, extra
        b1, b2, eps, eps_root, threshold = (
            hp.value_at(x, state.count)
            for x in (self.b1, self.b2, self.eps, self.eps_root, self.threshold))
        count = jtree.increment(state.count)
        m_hat = _first_moment_hat(b1, count, self.nesterov)
        c2 = jtree.bias_correction(b2, count)
        # The length of the simple moving average the EMA approximates, and its limit.
        # Written as optax writes it (rho_inf in the hyperparameter's own precision):
        # rho is a difference of large numbers, and its comparison with the threshold
        # decides the branch.
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        b2t = b2 ** count
        rho = rho_inf - 2 * count * b2t / (1 - b2t)
        r = jnp.sqrt((rho - 4.0) * (rho - 2.0) * rho_inf
                     / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho))
        rectified = rho >= threshold

        def leaf(g, m_old, v_old):
            m = (1 - b1) * g + b1 * m_old
            v = (1 - b2) * jtree.abs_sq(g) + b2 * v_old
            mh = m_hat(g, m)
            adaptive = r.astype(mh.dtype) * mh / (
                jnp.sqrt(v / c2.astype(v.dtype) + eps_root) + eps)
            return jnp.where(rectified, adaptive, mh), m.astype(m_old.dtype), v.astype(v_old.dtype)

        out = jtree.map_checked(leaf, updates, state.mu, state.nu,
                                names=("updates", "state.mu", "state.nu"),
                                where="scale_by_radam.update")
        u, mu, nu = _unzip(updates, out, 3)
        return u, ScaleByAdamState(count=count, mu=mu, nu=nu)


def scale_by_radam(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8, eps_root: Any = 0.0,
                   threshold: Any = 5.0, *, nesterov: bool = False) -> ScaleByRadam:
    """Rescales updates as Rectified Adam does (Liu et al., 2020, "On the Variance of
    the Adaptive Learning Rate and Beyond"): momentum SGD while the second moment is
    estimated from too few steps, then Adam scaled by a variance rectification.

    With ``t`` the 1-based step::

        m       <- b1 * m + (1 - b1) * g
        v       <- b2 * v + (1 - b2) * g**2
        rho_inf =  2 / (1 - b2) - 1
        rho     =  rho_inf - 2 * t * b2**t / (1 - b2**t)
        r       =  sqrt((rho - 4) (rho - 2) rho_inf / ((rho_inf - 4) (rho_inf - 2) rho))
        u       <- r * m_hat / (sqrt(v / (1 - b2**t) + eps_root) + eps)   if rho >= threshold
        u       <- m_hat                                                   otherwise

    with ``m_hat = m / (1 - b1**t)`` (NAdam's look-ahead with ``nesterov=True``).

    Args:
        b1: decay of the first moment, in [0, 1); a float, an array or a schedule.
        b2: decay of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        threshold: the ``rho`` from which the rectified step is taken, >= 4 (below 4
            the rectification is the root of a negative number).
        nesterov: use Nesterov momentum. Static.

    Example:
        >>> tx = jt.chain(jt.scale_by_radam(), jt.scale_by_learning_rate(1e-3))
    """
    _check_moments("scale_by_radam", b1, b2)
    hp.check_eps("scale_by_radam", "eps", eps)
    hp.check_eps("scale_by_radam", "eps_root", eps_root)
    hp.check_range("scale_by_radam", "threshold", threshold, low=4.0,
                   fix="rho >= 4 is where the variance rectification is real; the paper "
                   "uses 4, optax and PyTorch 5.")
    return ScaleByRadam(b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), eps=hp.as_hyper(eps),
                        eps_root=hp.as_hyper(eps_root), threshold=hp.as_hyper(threshold),
                        nesterov=bool(nesterov))
