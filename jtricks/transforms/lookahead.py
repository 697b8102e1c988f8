"""Lookahead (Zhang et al., 2019): slow weights that follow a fast optimizer's
weights every ``sync_period`` steps; optax's ``lookahead``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, as_transform, static_field

__all__ = ["LookaheadState", "LookaheadParams", "Lookahead", "lookahead"]


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`: ``fast_state``, the fast optimizer's state, and
    ``steps_since_sync`` (int32, 0 .. sync_period - 1)."""

    fast_state: Any
    steps_since_sync: jax.Array


class LookaheadParams(NamedTuple):
    """The parameters lookahead works on: the ``fast`` and the ``slow`` copy."""

    fast: Any
    slow: Any

    @classmethod
    def init_synced(cls, params: Any) -> LookaheadParams:
        """Both copies start at ``params``."""
        return cls(fast=params, slow=params)


class Lookahead(Transform):
    """Lookahead around a fast optimizer; see :func:`lookahead`."""

    fast_optimizer: Transform
    sync_period: Any
    slow_step_size: Any
    reset_state: bool = static_field(default=False)

    def init(self, params):
        fast = getattr(params, "fast", params)
        return LookaheadState(fast_state=self.fast_optimizer.init(fast),
                              steps_since_sync=jtree.scalar(0, jnp.int32, params))

    def update(self, updates, state, params=None, **extra):
        if not (hasattr(params, "fast") and hasattr(params, "slow")):
            raise ValueError(
                "lookahead.update: params must be a LookaheadParams(fast, slow), got "
                f"{type(params).__name__}. Start with LookaheadParams.init_synced(params)."
            )
        updates, fast_state = self.fast_optimizer.update(updates, state.fast_state,
                                                         params.fast, **extra)
        sync = state.steps_since_sync == self.sync_period - 1
        alpha = self.slow_step_size

        def leaf(f, u, s):
            diff = f + u - s
            return u - sync * (1 - alpha) * diff, alpha * sync * diff

        out = jax.tree.map(leaf, params.fast, updates, params.slow)
        fast_u = jax.tree.map(lambda _, o: o[0], updates, out)
        slow_u = jax.tree.map(lambda _, o: o[1], updates, out)
        if self.reset_state:
            fresh = self.fast_optimizer.init(params.fast)
            fast_state = jax.tree.map(
                lambda cur, new: jnp.where(sync, new, cur).astype(jnp.result_type(cur)),
                fast_state, fresh)
        # The updates come in the params' own container (this one or optax's).
        return type(params)(fast=fast_u, slow=slow_u), LookaheadState(
            fast_state=fast_state,
            steps_since_sync=((state.steps_since_sync + 1) % self.sync_period).astype(jnp.int32))

    def hyperparams_at(self, state):
        return {"fast_optimizer": self.fast_optimizer.hyperparams_at(state.fast_state),
                "sync_period": self.sync_period, "slow_step_size": self.slow_step_size}

    def learning_rate_factors(self, params, state, new_state):
        fast = getattr(params, "fast", params)
        return self.fast_optimizer.learning_rate_factors(fast, state.fast_state,
                                                         new_state.fast_state)


def lookahead(fast_optimizer: Any, sync_period: ArrayLike, slow_step_size: ArrayLike,
              reset_state: bool = False) -> Lookahead:
    """Lookahead: the fast optimizer steps the fast weights; every ``sync_period``
    steps the slow weights move a fraction ``alpha = slow_step_size`` towards them
    and the fast weights restart from the slow ones. With ``f, s`` the fast and slow
    weights and ``u`` the fast optimizer's update::

        f' = f + u
        if this is step k * sync_period:     (k = 1, 2, ...)
            s <- s + alpha * (f' - s)
            f <- s
        else:
            f <- f'

    The params are a :class:`LookaheadParams` (``fast``, ``slow``; optax's class is
    accepted too) and the updates come back in the same container; evaluate the
    model at ``params.slow``. ``init`` also accepts the plain (fast) params.

    Paper: M. Zhang, J. Lucas, G. Hinton, J. Ba, "Lookahead Optimizer: k steps
    forward, 1 step back", NeurIPS 2019.

    Args:
        fast_optimizer: the inner transform (jtricks or optax).
        sync_period: fast steps per synchronisation, an integer >= 1.
        slow_step_size: ``alpha`` in [0, 1].
        reset_state: restart the fast optimizer's state at each synchronisation.

    Example:
        >>> tx = lookahead(jt.adam(1e-3), sync_period=5, slow_step_size=0.5)
        >>> params = LookaheadParams.init_synced(params)
    """
    with hp.reporting_as("lookahead"):
        hp.no_schedule("lookahead", "sync_period", sync_period)
        hp.no_schedule("lookahead", "slow_step_size", slow_step_size)
        hp.check_integer("lookahead", "sync_period", sync_period, low=1,
                         fix="It is the number of fast steps between synchronisations.")
        hp.check_range("lookahead", "slow_step_size", slow_step_size, low=0.0, high=1.0,
                       fix="It is the fraction of the way the slow weights move, e.g. 0.5.")
    return Lookahead(fast_optimizer=as_transform(fast_optimizer, where="lookahead"),
                     sync_period=sync_period, slow_step_size=slow_step_size,
                     reset_state=bool(reset_state))
