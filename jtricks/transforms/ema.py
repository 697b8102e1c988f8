"""An exponential moving average of the updates (optax's ``ema``).

Not to be confused with :func:`jtricks.averaging.ema`, the average of the
*parameters* that training evaluates; this one smooths the updates a chain emits
(Signum's momentum, adafactor's).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field

__all__ = ["EmaState", "Ema", "ema"]


class EmaState(NamedTuple):
    """optax's ``EmaState``: ``count`` int32 updates so far; ``ema`` the average."""

    count: jax.Array
    ema: Any


class Ema(Transform):
    """An exponential moving average of updates; see :func:`ema`."""

    decay: Any
    debias: bool = static_field(default=True)
    accumulator_dtype: Any = static_field(default=None)

    def init(self, params):
        hp.check_float_params("ema", params)
        return EmaState(count=jtree.scalar(0, jnp.int32, params),
                        ema=jtree.zeros_like(params, self.accumulator_dtype))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        decay = hp.value_at(self.decay, state.count)
        count = jtree.increment(state.count)
        c = jtree.bias_correction(decay, count) if self.debias else None

        def leaf(g, e_old):
            e = (1 - decay) * g + decay * e_old
            return (e if c is None else e / c.astype(e.dtype)), e.astype(e_old.dtype)

        out = jtree.map_checked(leaf, updates, state.ema, names=("updates", "state.ema"),
                                where="ema.update")
        u, new = jtree.unzip2(updates, out)
        return u, EmaState(count=count, ema=new)


def ema(decay: Any, debias: bool = True, accumulator_dtype: Any = None) -> Ema:
    """Replaces each update by an exponential moving average of the updates so far.

    With ``g`` the incoming update and ``t`` the 1-based step::

        e <- decay * e + (1 - decay) * g          (e starts at 0)
        u <- e / (1 - decay**t)                   (debias=True)
        u <- e                                    (debias=False)

    Args:
        decay: the average's decay rate, in [0, 1); a float, an array or a schedule.
        debias: divide by ``1 - decay**t`` (static).
        accumulator_dtype: dtype of the stored average; ``None`` keeps the params'.

    Example:
        >>> tx = jt.chain(jt.ema(0.9), jt.scale_by_learning_rate(1e-2))
    """
    hp.check_decay("ema", "decay", decay)
    return Ema(decay=hp.as_hyper(decay), debias=bool(debias),
               accumulator_dtype=None if accumulator_dtype is None
               else jax.dtypes.canonicalize_dtype(accumulator_dtype))
