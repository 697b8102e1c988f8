"""Classic per-coordinate and per-layer rules: Adadelta, Rprop, SM3 and NovoGrad.

Each state is optax's, field for field. Where optax keeps no step count (Adadelta,
Rprop, SM3), a scheduled hyperparameter adds one through
:func:`jtricks.hyperparams.with_count`, so every configuration optax can express
has optax's state exactly.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field

__all__ = [
    "ScaleByAdaDeltaState",
    "ScaleByAdaDelta",
    "scale_by_adadelta",
    "ScaleByRpropState",
    "ScaleByRprop",
    "scale_by_rprop",
    "ScaleBySM3State",
    "ScaleBySM3",
    "scale_by_sm3",
    "ScaleByNovogradState",
    "ScaleByNovograd",
    "scale_by_novograd",
]


def map_with_blocks(fn: Any, updates: Any, shaped: tuple, per_block: tuple, *,
                    names: tuple, where: str) -> Any:
    """``fn(g, *shaped_leaves, *per_block_leaves)`` leaf by leaf.

    The ``shaped`` trees must match ``updates`` leaf for leaf in shape; the
    ``per_block`` trees (one small array per leaf, e.g. a norm) only in structure.
    Both checks name the first offending path.
    """
    n = 1 + len(shaped)
    jtree.map_checked(lambda *_: None, updates, *shaped, names=names[:n], where=where)
    for name, tree in zip(names[n:], per_block):
        jtree.map_with_path(lambda *_: None, updates, tree, names=(names[0], name),
                            where=where)
    return jax.tree.map(fn, updates, *shaped, *per_block)


def _full_like(params: Any, value: Any) -> Any:
    """``value`` broadcast to each leaf of ``params``, in the leaf's dtype."""
    return jtree.full_like(params, value)


# --- Adadelta -----------------------------------------------------------------------


class ScaleByAdaDeltaState(NamedTuple):
    """``e_g``: running mean of squared updates in; ``e_x``: of squared updates out."""

    e_g: Any
    e_x: Any


class ScaleByAdaDelta(Transform):
    """Adadelta's unit-correcting scale; see :func:`scale_by_adadelta`."""

    rho: Any
    eps: Any

    def init(self, params):
        hp.check_float_params("scale_by_adadelta", params)
        state = ScaleByAdaDeltaState(e_g=jtree.zeros_like(params),
                                     e_x=jtree.zeros_like(params))
        return hp.with_count(self, state)  # a count only for a scheduled rho or eps

    def update(self, updates, state, params=None, **extra):
        del params, extra
        count, inner = hp.split_count(state)
        rho, eps = hp.value_at(self.rho, count), hp.value_at(self.eps, count)

        def leaf(g, e_g, e_x):
            new_e_g = (1 - rho) * jtree.abs_sq(g) + rho * e_g
            u = jnp.sqrt(e_x + eps) / jnp.sqrt(new_e_g + eps) * g
            new_e_x = (1 - rho) * jtree.abs_sq(u) + rho * e_x
            return u.astype(jnp.result_type(g)), new_e_g.astype(e_g.dtype), \
                new_e_x.astype(e_x.dtype)

        out = jtree.map_checked(leaf, updates, inner.e_g, inner.e_x,
                                names=("updates", "state.e_g", "state.e_x"),
                                where="scale_by_adadelta.update")
        u, e_g, e_x = jtree.unzip3(updates, out)
        return u, hp.next_count(state, ScaleByAdaDeltaState(e_g=e_g, e_x=e_x))


def scale_by_adadelta(rho: Any = 0.9, eps: Any = 1e-6) -> ScaleByAdaDelta:
    """Rescales updates by Adadelta's ratio of running root mean squares (Zeiler, 2012).

    With ``g`` the incoming update::

        e_g <- rho * e_g + (1 - rho) * g**2
        u   <- sqrt(e_x + eps) / sqrt(e_g + eps) * g
        e_x <- rho * e_x + (1 - rho) * u**2

    The direction ``u`` is not negated: follow it with a negative scale (or
    ``scale_by_learning_rate``), as :func:`~jtricks.adadelta` does.

    Args:
        rho: decay of both running means, in [0, 1); a float, an array or a schedule.
        eps: added inside both square roots, >= 0.

    Example:
        >>> tx = jt.chain(jt.scale_by_adadelta(0.9), jt.scale_by_learning_rate(1.0))
    """
    hp.check_decay("scale_by_adadelta", "rho", rho)
    hp.check_eps("scale_by_adadelta", "eps", eps)
    return ScaleByAdaDelta(rho=hp.as_hyper(rho), eps=hp.as_hyper(eps))


# --- Rprop --------------------------------------------------------------------------


class ScaleByRpropState(NamedTuple):
    """``step_sizes``: each coordinate's step; ``prev_updates``: the last step taken."""

    step_sizes: Any
    prev_updates: Any


class ScaleByRprop(Transform):
    """Rprop's sign-based steps; see :func:`scale_by_rprop`."""

    learning_rate: Any
    eta_minus: Any
    eta_plus: Any
    min_step_size: Any
    max_step_size: Any

    def init(self, params):
        hp.check_float_params("scale_by_rprop", params)
        state = ScaleByRpropState(step_sizes=_full_like(params, self.learning_rate),
                                  prev_updates=jtree.zeros_like(params))
        return hp.with_count(self, state)

    def update(self, updates, state, params=None, **extra):
        del params, extra
        count, inner = hp.split_count(state)
        down, up = hp.value_at(self.eta_minus, count), hp.value_at(self.eta_plus, count)
        low, high = (hp.value_at(self.min_step_size, count),
                     hp.value_at(self.max_step_size, count))

        def leaf(g, step, prev):
            agree = g * prev  # > 0: same sign as the last step, < 0: it overshot
            grown = jnp.minimum(jnp.maximum(step * jnp.where(agree > 0, up, down), low), high)
            step = jnp.where(agree == 0, step, grown).astype(step.dtype)
            new_prev = jnp.where(agree < 0, 0, step * jnp.sign(g)).astype(prev.dtype)
            # optax emits the step stored by the previous update (0 after a sign flip).
            u = jnp.where(agree < 0, 0, prev)
            return u.astype(jnp.result_type(g)), step, new_prev

        out = jtree.map_checked(leaf, updates, inner.step_sizes, inner.prev_updates,
                                names=("updates", "state.step_sizes", "state.prev_updates"),
                                where="scale_by_rprop.update")
        u, steps, prev = jtree.unzip3(updates, out)
        return u, hp.next_count(state, ScaleByRpropState(step_sizes=steps,
                                                         prev_updates=prev))


def scale_by_rprop(learning_rate: Any, eta_minus: Any = 0.5, eta_plus: Any = 1.2,
                   min_step_size: Any = 1e-6, max_step_size: Any = 50.0) -> ScaleByRprop:
    """Resilient backpropagation (Riedmiller & Braun, 1993): steps from signs alone.

    Each coordinate keeps its own step ``s`` (starting at ``learning_rate``) and the
    step it last took ``d``; with ``g`` the incoming update::

        c = g * d
        s <- clip(s * (eta_plus if c > 0 else eta_minus), min_step_size, max_step_size)
                                                         (s unchanged where c == 0)
        u <- 0 if c < 0 else d                           (the step stored last time)
        d <- 0 if c < 0 else s * sign(g)                 (after overshooting: pause)

    So each step taken is the one decided at the update before (as in optax, whose
    numbers these are); the first update is 0.

    ``u`` points up the gradient: :func:`~jtricks.rprop` negates it.

    Args:
        learning_rate: the initial step size, >= 0; a number or an array (read once,
            by ``init``).
        eta_minus: factor applied after a sign change, in [0, 1].
        eta_plus: factor applied while the sign holds, >= 1.
        min_step_size: smallest step, >= 0.
        max_step_size: largest step, >= ``min_step_size``.

    Example:
        >>> tx = jt.chain(jt.scale_by_rprop(1e-3), jt.scale(-1.0))
    """
    where = "scale_by_rprop"
    hp.check_initial(where, "learning_rate", learning_rate)
    hp.check_range(where, "eta_minus", eta_minus, low=0.0, high=1.0,
                   fix="eta_minus shrinks a step after a sign change; the paper uses 0.5.")
    hp.check_range(where, "eta_plus", eta_plus, low=1.0,
                   fix="eta_plus grows a step while the sign holds; the paper uses 1.2.")
    hp.check_nonnegative(where, "min_step_size", min_step_size)
    hp.check_nonnegative(where, "max_step_size", max_step_size)
    low = hp.concrete(min_step_size)
    if low is not None:
        hp.check(where, "max_step_size", max_step_size, lambda high: high >= low,
                 f">= min_step_size ({min_step_size!r})")
    return ScaleByRprop(learning_rate=learning_rate, eta_minus=hp.as_hyper(eta_minus),
                        eta_plus=hp.as_hyper(eta_plus),
                        min_step_size=hp.as_hyper(min_step_size),
                        max_step_size=hp.as_hyper(max_step_size))


# --- SM3 ----------------------------------------------------------------------------


class ScaleBySM3State(NamedTuple):
    """``mu``: per leaf, a list of one accumulator vector per axis (the cover sets);
    ``nu``: the momentum of the scaled updates, shaped like params."""

    mu: Any
    nu: Any


def _axis_max(x: jax.Array, axis: int) -> jax.Array:
    """The maximum of ``x`` over every axis but ``axis`` (a vector of its length)."""
    return jnp.max(x, axis=tuple(i for i in range(x.ndim) if i != axis))


def _sm3_leaf(g, mus, nu, b1, b2, eps):
    """One leaf of SM3: the accumulator is the smallest of its axes' covers."""
    shape = jnp.shape(g)
    covers = [jnp.reshape(m, [1] * i + [shape[i]] + [1] * (len(shape) - i - 1))
              for i, m in enumerate(mus)]
    # b2 == 1 keeps a plain sum of squares (no (1 - b2) factor), as optax does.
    fresh = jnp.where(b2 == 1.0, 1.0, 1.0 - b2)
    accum = fresh * jtree.abs_sq(g) + b2 * functools.reduce(jnp.minimum, covers)
    scaled = g * jnp.where(accum > 0, jax.lax.rsqrt(accum + eps), 0.0)
    new_nu = ((1 - b1) * scaled + b1 * nu).astype(nu.dtype)
    if len(shape) < 2:
        new_mus = [accum.astype(mus[0].dtype)]
    else:
        new_mus = [_axis_max(accum, i).astype(m.dtype) for i, m in enumerate(mus)]
    return new_nu, new_mus


class ScaleBySM3(Transform):
    """SM3's memory-efficient accumulators; see :func:`scale_by_sm3`."""

    b1: Any
    b2: Any
    eps: Any

    def init(self, params):
        hp.check_float_params("scale_by_sm3", params)
        for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
            if jnp.ndim(p) == 0 or jnp.iscomplexobj(p):
                raise ValueError(
                    f"scale_by_sm3: parameter at {jtree.keystr(path)} is "
                    f"{'complex' if jnp.ndim(p) else '0-d'} ({jnp.result_type(p)}, shape "
                    f"{jnp.shape(p)}); SM3 keeps one real accumulator per axis, so every "
                    "parameter needs at least one axis and a real dtype. Reshape scalars "
                    "to (1,), or give them another optimizer with jt.partition."
                )
        # One small accumulator per axis: replicated over the params' mesh.
        mu = jtree.replicated_like(params, jax.tree.map(
            lambda p: [jnp.zeros((n,), jnp.result_type(p)) for n in p.shape], params))
        return hp.with_count(self, ScaleBySM3State(mu=mu, nu=jtree.zeros_like(params)))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        count, inner = hp.split_count(state)
        b1, b2, eps = (hp.value_at(v, count) for v in (self.b1, self.b2, self.eps))
        # mu holds a list per leaf: mapping over updates hands each list over whole.
        out = jtree.map_checked(lambda g, nu, mus: _sm3_leaf(g, mus, nu, b1, b2, eps),
                                updates, inner.nu, inner.mu,
                                names=("updates", "state.nu", "state.mu"),
                                where="scale_by_sm3.update")
        nu, mu = jtree.unzip2(updates, out)
        return nu, hp.next_count(state, ScaleBySM3State(mu=mu, nu=nu))


def scale_by_sm3(b1: Any = 0.9, b2: Any = 1.0, eps: Any = 1e-8) -> ScaleBySM3:
    """Scales updates by SM3's cover-set accumulators (Anil et al., 2019).

    For a parameter with axes ``1..r``, one vector ``mu_i`` per axis replaces the
    full sum of squares; with ``g`` the incoming update (and ``c = 1 - b2``, or 1
    when ``b2 == 1``: a plain sum)::

        a   <- c * g**2 + b2 * min_i mu_i        (broadcast over the other axes)
        mu_i <- max of a over every axis but i    (a itself for a vector)
        nu  <- b1 * nu + (1 - b1) * g / sqrt(a + eps)     (0 where a == 0)
        u   <- nu

    Memory is ``sum_i n_i`` per parameter instead of ``prod_i n_i``. Same numbers as
    optax's ``scale_by_sm3``; every parameter needs at least one axis.

    Args:
        b1: momentum of the scaled updates, in [0, 1).
        b2: decay of the accumulators, in [0, 1] (1, the default, sums).
        eps: added inside the square root, >= 0.

    Example:
        >>> tx = jt.chain(jt.scale_by_sm3(0.9), jt.scale(-0.1))
    """
    hp.check_decay("scale_by_sm3", "b1", b1)
    hp.check_range("scale_by_sm3", "b2", b2, low=0.0, high=1.0,
                   fix="b2 decays the accumulators; 1 (the default) keeps a sum.")
    hp.check_eps("scale_by_sm3", "eps", eps)
    return ScaleBySM3(b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), eps=hp.as_hyper(eps))


# --- NovoGrad -----------------------------------------------------------------------


class ScaleByNovogradState(NamedTuple):
    """``count`` int32 updates so far; ``mu`` the momentum, shaped like params;
    ``nu`` one running mean of squared gradient norms per leaf (a 0-d array)."""

    count: jax.Array
    mu: Any
    nu: Any


class ScaleByNovograd(Transform):
    """NovoGrad's layer-wise normalised momentum; see :func:`scale_by_novograd`."""

    b1: Any
    b2: Any
    eps: Any
    eps_root: Any
    weight_decay: Any
    mu_dtype: Any = static_field(default=None)

    def init(self, params):
        hp.check_float_params("scale_by_novograd", params)
        return ScaleByNovogradState(
            count=jtree.scalar(0, jnp.int32, params),
            mu=jtree.zeros_like(params, self.mu_dtype),
            nu=jax.tree.map(lambda p: jtree.scalar(0, jnp.result_type(p), params), params),
        )

    def update(self, updates, state, params=None, **extra):
        del extra
        hp.require_params("scale_by_novograd.update", params,
                          "NovoGrad adds weight_decay * params to each normalised gradient")
        b1, b2, eps, eps_root, wd = (hp.value_at(v, state.count) for v in (
            self.b1, self.b2, self.eps, self.eps_root, self.weight_decay))
        count = jtree.increment(state.count)
        first = count == 1  # the first step starts both averages at their inputs

        def leaf(g, p, m, v):
            sq = jnp.sum(jtree.abs_sq(g.astype(jtree.acc_dtype(g))))
            v = jnp.where(first, sq, (1 - b2) * sq + b2 * v).astype(v.dtype)
            step = g / (jnp.sqrt(v + eps_root) + eps) + wd * p
            m = jnp.where(first, step, b1 * m + step).astype(m.dtype)
            return m, m, v

        out = map_with_blocks(leaf, updates, (params, state.mu), (state.nu,),
                              names=("updates", "params", "state.mu", "state.nu"),
                              where="scale_by_novograd.update")
        u, mu, nu = jtree.unzip3(updates, out)
        return u, ScaleByNovogradState(count=count, mu=mu, nu=nu)


def scale_by_novograd(b1: Any = 0.9, b2: Any = 0.25, eps: Any = 1e-8, eps_root: Any = 0.0,
                      weight_decay: Any = 0.0, mu_dtype: Any = None) -> ScaleByNovograd:
    """NovoGrad's direction (Ginsburg et al., 2019): momentum of layer-normalised
    gradients.

    For each parameter array ``p`` with gradient ``g`` (``||g||`` its L2 norm over
    the whole array), starting both averages at their first inputs::

        v <- b2 * v + (1 - b2) * ||g||**2                 (v <- ||g||**2 at step 1)
        m <- b1 * m + g / (sqrt(v + eps_root) + eps) + weight_decay * p
        u <- m

    Note ``m`` sums its inputs (no ``1 - b1`` factor), as in the paper and optax.
    ``update`` needs ``params``.

    Args:
        b1: momentum, in [0, 1).
        b2: decay of the squared-norm average, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        weight_decay: decay rate, >= 0.
        mu_dtype: dtype of ``mu`` (e.g. ``jnp.float32`` for bf16 params); ``None``
            keeps the params' dtype. Static.

    Example:
        >>> tx = jt.chain(jt.scale_by_novograd(), jt.scale_by_learning_rate(1e-2))
    """
    where = "scale_by_novograd"
    hp.check_decay(where, "b1", b1)
    hp.check_decay(where, "b2", b2)
    hp.check_eps(where, "eps", eps)
    hp.check_eps(where, "eps_root", eps_root)
    hp.check_nonnegative(where, "weight_decay", weight_decay,
                         fix="weight_decay shrinks weights towards 0; typical values are "
                         "1e-5 to 1e-2.")
    return ScaleByNovograd(b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), eps=hp.as_hyper(eps),
                           eps_root=hp.as_hyper(eps_root),
                           weight_decay=hp.as_hyper(weight_decay),
                           mu_dtype=None if mu_dtype is None else jnp.dtype(mu_dtype))
