"""Sophia's building blocks: a Hutchinson estimate of the Hessian's diagonal, and the
clipped, curvature-scaled momentum it feeds (optax's ``contrib`` Sophia)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, as_transform, static_field

__all__ = [
    "HutchinsonState",
    "HutchinsonEstimator",
    "hutchinson_estimator_diag_hessian",
    "SophiaState",
    "ScaleBySophia",
    "scale_by_sophia",
]


class HutchinsonState(NamedTuple):
    """``key``: the random key the next estimate splits (optax's ``HutchinsonState``)."""

    key: jax.Array


def _lowest_dtype(tree: Any) -> Any:
    """The narrowest dtype among the leaves (the one every other promotes from)."""
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(tree)]

    def lower(a, b):
        return b if jnp.promote_types(a, b) == a else a

    return functools.reduce(lower, dtypes) if dtypes else jnp.dtype(jnp.float32)


class HutchinsonEstimator(Transform):
    """Hutchinson's estimate of the Hessian's diagonal; see
    :func:`hutchinson_estimator_diag_hessian`."""

    random_seed: Any = None

    def init(self, params):
        del params
        if self.random_seed is None:
            return HutchinsonState(key=jax.random.PRNGKey(0))
        # A copy: a donated state must not take the transform's own key buffer with it.
        return HutchinsonState(key=jnp.copy(self.random_seed))

    def update(self, updates, state, params=None, obj_fn=None, **extra):
        del updates, extra
        hp.require_params("hutchinson_estimator_diag_hessian.update", params,
                          "the estimate differentiates obj_fn at the params")
        if obj_fn is None:
            raise ValueError(
                "hutchinson_estimator_diag_hessian.update: obj_fn is None, but the "
                "estimate needs the objective. Pass obj_fn=lambda params: loss(params, "
                "batch) (a scalar function of the params alone) to update."
            )
        key, sub = jax.random.split(state.key)
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(sub, len(leaves))
        dtype = _lowest_dtype(params)
        signs = treedef.unflatten([
            jax.random.rademacher(k, jnp.shape(p), jnp.float32).astype(dtype)
            for k, p in zip(keys, leaves)])
        # H z by forward-over-reverse differentiation; z * (H z) estimates diag(H).
        hz = jax.jvp(jax.grad(obj_fn), (params,), (signs,))[1]
        estimate = jtree.map_checked(lambda h, z: h * z, hz, signs,
                                     names=("hessian-vector product", "probe"),
                                     where="hutchinson_estimator_diag_hessian.update")
        return estimate, HutchinsonState(key=key)


def hutchinson_estimator_diag_hessian(random_seed: jax.Array | None = None
                                      ) -> HutchinsonEstimator:
    """Estimates the Hessian's diagonal of the objective by Hutchinson's method.

    Each update splits the state's key, draws a Rademacher probe ``z`` (entries
    +-1, one key per leaf) and returns::

        d = z * (H z)            (H the Hessian of obj_fn at the params)

    an unbiased, high-variance estimate of ``diag(H)`` (Hutchinson, 1989, "A
    stochastic estimator of the trace of the influence matrix"). The incoming
    updates are ignored; ``update`` needs ``params`` and the keyword ``obj_fn``, a
    scalar function of the params alone. Same keys and numbers as optax's.

    Args:
        random_seed: the first key (``jax.random.PRNGKey`` or ``jax.random.key``); an
            int is turned into ``jax.random.PRNGKey(seed)``. ``None`` uses
            ``jax.random.PRNGKey(0)``, as optax does.

    Example:
        >>> est = jt.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(1))
        >>> state = est.init(params)
        >>> diag, state = est.update(grads, state, params, obj_fn=loss)
    """
    if random_seed is not None and not isinstance(random_seed, jax.core.Tracer):
        if isinstance(random_seed, int) and not isinstance(random_seed, bool):
            random_seed = jax.random.PRNGKey(random_seed)
        shape = getattr(random_seed, "shape", None)
        typed = shape is not None and jax.dtypes.issubdtype(random_seed.dtype,
                                                            jax.dtypes.prng_key)
        if not (typed or (shape is not None and shape[-1:] == (2,)
                          and jnp.result_type(random_seed) == jnp.uint32)):
            raise TypeError(
                f"{hp.reporter('hutchinson_estimator_diag_hessian')}: random_seed must be "
                f"None, an int or a random key, got {type(random_seed).__name__}: "
                f"{random_seed!r}. Pass e.g. jax.random.PRNGKey(0)."
            )
    return HutchinsonEstimator(random_seed=random_seed)


# The estimator optax's signatures default to (a module-level value: defaults are
# evaluated once, and a frozen transform is safe to share).
DEFAULT_HESSIAN_DIAGONAL_FN = hutchinson_estimator_diag_hessian()


class SophiaState(NamedTuple):
    """optax's ``SophiaState``.

    Attributes:
        count: int32, the number of updates so far.
        mu: the momentum, shaped like the params (in ``mu_dtype``).
        nu: the moving average of the Hessian-diagonal estimates.
        hessian_fn_state: the state of the Hessian-diagonal estimator.
    """

    count: jax.Array
    mu: Any
    nu: Any
    hessian_fn_state: Any


class ScaleBySophia(Transform):
    """Sophia's clipped, curvature-scaled momentum; see :func:`scale_by_sophia`."""

    b1: Any
    b2: Any
    eps: Any
    gamma: Any
    clip_threshold: Any
    update_interval: Any
    hessian_diagonal_fn: Transform
    print_win_rate_every_n_steps: Any = 0
    mu_dtype: Any = static_field(default=None)
    verbose: bool = static_field(default=False)

    def init(self, params):
        hp.check_float_params("scale_by_sophia", params)
        return SophiaState(count=jnp.zeros([], jnp.int32),
                           mu=jtree.zeros_like(params, self.mu_dtype),
                           nu=jtree.zeros_like(params),
                           hessian_fn_state=self.hessian_diagonal_fn.init(params))

    def update(self, updates, state, params=None, **extra):
        hp.require_params("scale_by_sophia.update", params,
                          "the Hessian-diagonal estimate is taken at the params")
        at = functools.partial(hp.value_at, count=state.count)
        b1, gamma, eps, clip = at(self.b1), at(self.gamma), at(self.eps), at(self.clip_threshold)
        count = jtree.increment(state.count)
        c1 = jtree.bias_correction(b1, count)
        mu_dtype = self.mu_dtype

        def leaf(g, m_old, h):
            # One fused pass; the step divides by the curvature estimated so far.
            m = (1 - b1) * g + b1 * m_old
            u = (m / c1.astype(m.dtype)) / jnp.maximum(gamma * h, eps)
            kept = None
            if clip is not None:
                kept = jnp.sum(jnp.abs(u) < clip) if self.verbose else None
                u = jnp.clip(u, -clip, clip)
            return u, m.astype(m_old.dtype if mu_dtype is None else mu_dtype), kept

        out = jtree.map_checked(leaf, updates, state.mu, state.nu,
                                names=("updates", "state.mu", "state.nu"),
                                where="scale_by_sophia.update")
        u, mu, kept = jtree.unzip3(updates, out)
        if self.verbose and clip is not None:
            self._report_win_rate(kept, u, count)
        hessian_fn_state, nu = self._refresh_curvature(updates, state, params, extra)
        return u, SophiaState(count=count, mu=mu, nu=nu, hessian_fn_state=hessian_fn_state)

    def _refresh_curvature(self, grads, state, params, extra):
        """Every ``update_interval`` updates (counting from the first), a new estimate
        of the Hessian's diagonal enters its moving average ``nu``."""
        b2 = hp.value_at(self.b2, state.count)

        def refresh(hess_state, nu):
            diag, hess_state = self.hessian_diagonal_fn.update(grads, hess_state, params,
                                                               **extra)
            nu = jtree.map_checked(lambda d, v: ((1 - b2) * d + b2 * v).astype(v.dtype),
                                   diag, nu, names=("hessian diagonal", "state.nu"),
                                   where="scale_by_sophia.update")
            return hess_state, nu

        return jax.lax.cond(state.count % self.update_interval == 0, refresh,
                            lambda h, n: (h, n), state.hessian_fn_state, state.nu)

    def _report_win_rate(self, kept, updates, count):
        """Prints the share of coordinates the clip left alone (the "win rate")."""
        size = sum(jnp.size(x) for x in jax.tree.leaves(updates))
        rate = sum(jax.tree.leaves(kept)) / size
        jax.lax.cond(count % self.print_win_rate_every_n_steps == 0,
                     lambda: jax.debug.print("Sophia optimizer win rate: {}", rate),
                     lambda: None)

    def hyperparams_at(self, state):
        out = {n: hp.value_at(getattr(self, n), state.count)
               for n in ("b1", "b2", "eps", "gamma", "clip_threshold", "update_interval")}
        out["hessian_diagonal_fn"] = self.hessian_diagonal_fn.hyperparams_at(
            state.hessian_fn_state)
        return out


def check_sophia(where: str, b1: Any, b2: Any, eps: Any, gamma: Any, clip_threshold: Any,
                 update_interval: Any, verbose: bool, print_every: Any) -> None:
    """Sophia's hyperparameters, checked where concrete (shared with :func:`sophia`)."""
    hp.check_decay(where, "b1", b1)
    hp.check_decay(where, "b2", b2)
    hp.check_eps(where, "eps", eps)
    hp.check_nonnegative(where, "gamma", gamma,
                         fix="gamma scales the Hessian estimate; the paper uses 0.01-0.05.")
    if clip_threshold is not None:
        hp.check_positive(where, "clip_threshold", clip_threshold,
                          fix="It bounds every coordinate of the step; use None for no "
                          "clipping, else e.g. 1.0.")
    hp.no_schedule(where, "update_interval", update_interval)
    hp.check_integer(where, "update_interval", update_interval, low=1,
                     fix="It is the number of updates between Hessian estimates, e.g. 10.")
    hp.no_schedule(where, "print_win_rate_every_n_steps", print_every)
    hp.check_integer(where, "print_win_rate_every_n_steps", print_every,
                     low=1 if verbose else 0,
                     fix="With verbose=True the win rate is printed every this many "
                     "updates, so it must be >= 1.")


def scale_by_sophia(b1: ArrayLike = 0.965, b2: ArrayLike = 0.99, eps: ArrayLike = 1e-8,
                    gamma: ArrayLike = 0.01, clip_threshold: ArrayLike | None = 1.0,
                    update_interval: ArrayLike = 10,
                    hessian_diagonal_fn: Any = DEFAULT_HESSIAN_DIAGONAL_FN,
                    mu_dtype: Any = None, verbose: bool = False,
                    print_win_rate_every_n_steps: ArrayLike = 0) -> ScaleBySophia:
    """Divides the debiased momentum by a moving average of the Hessian's diagonal and
    clips it (Sophia, Liu et al., 2023; optax's ``contrib`` building block).

    With ``g`` the incoming update, ``t`` the 1-based step and ``k = t - 1``::

        m <- b1 * m + (1 - b1) * g
        u <- clip((m / (1 - b1**t)) / max(gamma * h, eps), -clip_threshold, clip_threshold)
        if k % update_interval == 0:           (after u, so u uses the older h)
            h <- b2 * h + (1 - b2) * d,       d = hessian_diagonal_fn's estimate

    Args:
        b1: momentum decay, in [0, 1); a float, an array or a schedule.
        b2: decay of the Hessian-diagonal average, in [0, 1) (the effective decay per
            update is ``1 - (1 - b2) / update_interval``).
        eps: the floor of the denominator, >= 0.
        gamma: the Hessian's scale, >= 0.
        clip_threshold: the bound on each coordinate, > 0, or ``None`` for none.
        update_interval: updates between Hessian estimates, an integer >= 1.
        hessian_diagonal_fn: the estimator (jtricks or optax), called as
            ``update(grads, state, params, **extra)`` with the extra keyword
            arguments of this transform's ``update`` (``obj_fn`` for the default).
        mu_dtype: dtype of the momentum (``None``: the params').
        verbose: print the share of unclipped coordinates (static).
        print_win_rate_every_n_steps: how often ``verbose`` prints, >= 1 then.

    Example:
        >>> tx = jt.chain(scale_by_sophia(), jt.scale_by_learning_rate(1e-3))
        >>> updates, state = tx.update(grads, state, params, obj_fn=loss)
    """
    where = "scale_by_sophia"
    check_sophia(where, b1, b2, eps, gamma, clip_threshold, update_interval, verbose,
                 print_win_rate_every_n_steps)
    return ScaleBySophia(
        b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), eps=hp.as_hyper(eps),
        gamma=hp.as_hyper(gamma), clip_threshold=hp.as_hyper(clip_threshold),
        update_interval=update_interval,
        hessian_diagonal_fn=as_transform(hessian_diagonal_fn, where=hp.reporter(where)),
        print_win_rate_every_n_steps=print_win_rate_every_n_steps,
        mu_dtype=None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype),
        verbose=bool(verbose))
