"""Sharpness-Aware Minimization (Foret et al., 2021): adversarial steps up the loss,
then an outer step from the saved weights; optax's ``contrib.sam`` and its helper
``contrib.normalize``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import EmptyState, Transform, apply_updates, as_transform, static_field
from jtricks.transforms.clipping import NormalizeByGlobalNorm

__all__ = ["NormalizeState", "normalize", "SAMState", "Sam", "sam"]

NormalizeState = EmptyState


def normalize() -> NormalizeByGlobalNorm:
    """Divides the update by its global L2 norm (optax's ``contrib.normalize``)::

        u <- g / ||g||

    No ``eps``: a zero update gives NaN, as in optax (``normalize_by_global_norm(eps)``
    is the guarded form). SAM's adversarial step is ``chain(normalize(), sgd(rho))``.

    Example:
        >>> adv = jt.chain(jt.normalize(), jt.sgd(0.05))
    """
    return NormalizeByGlobalNorm(eps=0.0)


class SAMState(NamedTuple):
    """State of :func:`sam` (optax's fields).

    Attributes:
        steps_since_sync: int32, adversarial steps since the last outer step.
        opt_state: the outer optimizer's state.
        adv_state: the adversarial optimizer's state.
        cache: the weights of the last outer step, shaped like params; ``None`` in
            opaque mode.
    """

    steps_since_sync: jax.Array
    opt_state: Any
    adv_state: Any
    cache: Any


def _pick(cond: jax.Array, if_true: Any, if_false: Any) -> Any:
    """``if_true`` where ``cond`` else ``if_false``, leaf by leaf, in ``if_false``'s
    dtypes (typed PRNG keys included)."""
    def leaf(a, b):
        if jnp.issubdtype(jnp.result_type(b), jax.dtypes.prng_key):
            data = jnp.where(cond, jax.random.key_data(a), jax.random.key_data(b))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(b))
        return jnp.where(cond, a, b).astype(jnp.result_type(b))

    return jax.tree.map(leaf, if_true, if_false)


class Sam(Transform):
    """SAM around an outer and an adversarial optimizer; see :func:`sam`."""

    optimizer: Transform
    adv_optimizer: Transform
    sync_period: int = static_field(default=2)
    reset_state: bool = static_field(default=True)
    opaque_mode: bool = static_field(default=False)
    batch_axis_name: Any = static_field(default=None)

    def init(self, params):
        # The cache is a copy: params and state may both be donated.
        cache = None if self.opaque_mode else jax.tree.map(jnp.copy, params)
        return SAMState(steps_since_sync=jnp.zeros([], jnp.int32),
                        opt_state=self.optimizer.init(params),
                        adv_state=self.adv_optimizer.init(params), cache=cache)

    def update(self, updates, state, params=None, **extra):
        hp.require_params("sam.update", params, "SAM steps from and back to the params")
        grad_fn = extra.pop("grad_fn", None)
        if self.opaque_mode:
            return self._opaque(updates, state, params, grad_fn, extra)
        return self._transparent(updates, state, params, extra)

    def _transparent(self, updates, state, params, extra):
        # Every call runs both optimizers; the step's place in the period picks which
        # update (and which new states) are kept.
        first = state.steps_since_sync == 0
        last = state.steps_since_sync == self.sync_period - 1
        adv_u, adv_state = self.adv_optimizer.update(updates, state.adv_state, params,
                                                     **extra)
        opt_u, opt_state = self.optimizer.update(updates, state.opt_state, state.cache,
                                                 **extra)

        def leaf(c, p, o, a):
            # The outer update lands on cache + o (from the adversarial point p); an
            # adversarial update climbs: -a.
            return jnp.where(last, c - p + o, -a), jnp.where(first, p, c).astype(c.dtype)

        out = jtree.map_checked(leaf, state.cache, params, opt_u, adv_u,
                                names=("state.cache", "params", "outer updates",
                                       "adversarial updates"), where="sam.update")
        new_updates, cache = jtree.unzip2(params, out)
        kept_adv = self.adv_optimizer.init(params) if self.reset_state else state.adv_state
        return new_updates, SAMState(
            steps_since_sync=((state.steps_since_sync + 1) % self.sync_period).astype(
                jnp.int32),
            opt_state=_pick(last, opt_state, state.opt_state),
            adv_state=_pick(last, kept_adv, adv_state), cache=cache)

    def _opaque(self, updates, state, params, grad_fn, extra):
        if grad_fn is None:
            raise ValueError(
                "sam.update: opaque_mode=True needs grad_fn, a function (params, i) -> "
                "gradients run at each adversarial step i. Call tx.update(grads, state, "
                "params, grad_fn=jax.grad(lambda p, i: loss(p, batch))).")
        adv_params, grads, adv_state = params, updates, state.adv_state
        for i in range(self.sync_period - 1):
            adv_u, adv_state = self.adv_optimizer.update(grads, adv_state, adv_params,
                                                         **extra)
            adv_params = apply_updates(adv_params, jax.tree.map(lambda a: -a, adv_u))
            grads = grad_fn(adv_params, i)
            if self.batch_axis_name is not None:
                grads = jax.lax.pmean(grads, axis_name=self.batch_axis_name)
        if self.reset_state:
            adv_state = self.adv_optimizer.init(params)
        new_updates, opt_state = self.optimizer.update(grads, state.opt_state, params,
                                                       **extra)
        return new_updates, SAMState(steps_since_sync=jnp.zeros([], jnp.int32),
                                     opt_state=opt_state, adv_state=adv_state, cache=None)

    def hyperparams_at(self, state):
        return {"optimizer": self.optimizer.hyperparams_at(state.opt_state),
                "adv_optimizer": self.adv_optimizer.hyperparams_at(state.adv_state)}

    def learning_rate_factors(self, params, state, new_state):
        return self.optimizer.learning_rate_factors(params, state.opt_state,
                                                    new_state.opt_state)


def sam(optimizer: Any, adv_optimizer: Any, sync_period: int = 2, reset_state: bool = True,
        opaque_mode: bool = False, batch_axis_name: str | None = None) -> Sam:
    """Sharpness-Aware Minimization: ``sync_period - 1`` adversarial steps climb the
    loss from the weights ``w``, then the outer optimizer steps ``w`` with the
    gradient found at the adversarial point. With ``adv`` and ``opt`` the two
    optimizers' updates (``adv = chain(normalize(), sgd(rho))`` is the paper's
    ``rho * g / ||g||``)::

        w_0 = w;   w_{i+1} = w_i - adv(g(w_i))          (i < sync_period - 1)
        w  <- w + opt(g(w_{sync_period - 1}))

    Transparent mode (the default) spreads this over ``sync_period`` calls to
    ``update``: each returns one adversarial update, the last the outer one (moving
    the params back to the cached ``w`` plus ``opt``'s update), so the loop outside
    sees every intermediate point. ``opaque_mode=True`` runs the adversarial steps
    inside one ``update``, calling ``grad_fn(params, i)`` (passed to ``update``) at
    each; ``batch_axis_name`` then averages those gradients over a mapped axis. Same
    numbers and state as optax's ``contrib.sam``.

    Paper: P. Foret, A. Kleiner, H. Mobahi, B. Neyshabur, "Sharpness-Aware
    Minimization for Efficiently Improving Generalization", ICLR 2021
    (arXiv:2010.01412).

    Args:
        optimizer: the outer optimizer (jtricks or optax).
        adv_optimizer: the adversarial optimizer; its update is subtracted.
        sync_period: calls per outer step, an integer >= 1 (static).
        reset_state: restart the adversarial optimizer's state at each outer step.
        opaque_mode: run the adversarial steps inside ``update`` (needs ``grad_fn``).
        batch_axis_name: the mapped axis to ``pmean`` the adversarial gradients over
            (opaque mode only).

    Example:
        >>> tx = jt.sam(jt.sgd(0.1), jt.chain(jt.normalize(), jt.sgd(0.05)))
    """
    hp.no_schedule("sam", "sync_period", sync_period)
    hp.check_integer("sam", "sync_period", sync_period, low=1,
                     fix="It is the number of update calls per outer step (2: one "
                     "adversarial step, then the outer one).")
    if isinstance(sync_period, jax.core.Tracer):
        raise TypeError("sam: sync_period must be a Python integer (it shapes the "
                        f"program), got a traced value {sync_period!r}.")
    return Sam(optimizer=as_transform(optimizer, where="sam"),
               adv_optimizer=as_transform(adv_optimizer, where="sam"),
               sync_period=int(sync_period), reset_state=bool(reset_state),
               opaque_mode=bool(opaque_mode), batch_axis_name=batch_axis_name)
