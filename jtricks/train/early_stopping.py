"""Early stopping: stop when a monitored value has not improved for a while."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import patience as pt
from jtricks import tree as jtree
from jtricks.struct import Struct, static_field

__all__ = ["EarlyStoppingState", "EarlyStopper", "EarlyStopping"]

PyTree = Any


class EarlyStoppingState(NamedTuple):
    """``epoch``: updates seen; ``best``: best value; ``best_epoch``: its 0-based epoch
    (-1 before any); ``wait``: epochs since; ``stop``: bool; ``best_snapshot``."""

    epoch: jax.Array
    best: jax.Array
    best_epoch: jax.Array
    wait: jax.Array
    stop: jax.Array
    best_snapshot: PyTree


class EarlyStopper(Struct):
    """The early-stopping rule as data; build it with :func:`EarlyStopping`."""

    patience: Any
    min_delta: Any = 0.0
    mode: str = static_field(default="min")
    restore_best: bool = static_field(default=True)

    def init(self, snapshot: PyTree = None) -> EarlyStoppingState:
        """A fresh state; ``snapshot`` (copied) is the fallback "best" before any update."""
        inf = jnp.asarray(jnp.inf if self.mode == "min" else -jnp.inf, jnp.float32)
        keep = snapshot if self.restore_best else None
        return EarlyStoppingState(
            epoch=jnp.zeros([], jnp.int32),
            best=inf,
            best_epoch=jnp.asarray(-1, jnp.int32),
            wait=jnp.zeros([], jnp.int32),
            stop=jnp.asarray(False),
            best_snapshot=jax.tree.map(lambda x: jnp.array(x, copy=True), keep),
        )

    def update(self, state: EarlyStoppingState, value: ArrayLike,
               snapshot: PyTree = None) -> EarlyStoppingState:
        """Records this epoch's ``value`` (and ``snapshot`` if it is the best so far)."""
        value = jnp.asarray(value, jnp.float32)
        if jnp.shape(value) != ():
            raise ValueError(
                f"EarlyStopping.update: value must be a scalar, got shape {jnp.shape(value)}."
            )
        improved = pt.improves(value, state.best, self.mode,
                               atol=jnp.asarray(self.min_delta, jnp.float32)) & ~state.stop
        wait, exhausted = pt.wait(improved, state.wait, self.patience)
        frozen = state.stop
        return EarlyStoppingState(
            epoch=jnp.where(frozen, state.epoch, state.epoch + 1),
            best=jnp.where(improved, value, state.best),
            best_epoch=jnp.where(improved, state.epoch, state.best_epoch),
            wait=jnp.where(frozen, state.wait, wait),
            stop=state.stop | exhausted,
            best_snapshot=self._keep_best(state, improved, snapshot),
        )

    def _keep_best(self, state: EarlyStoppingState, improved: jax.Array,
                   snapshot: PyTree) -> PyTree:
        if not self.restore_best:
            return state.best_snapshot
        if snapshot is None:
            raise ValueError(
                "EarlyStopping.update: restore_best=True needs the snapshot to keep "
                "(e.g. the params); pass it, or build EarlyStopping(restore_best=False)."
            )
        return jtree.map_checked(
            lambda new, old: jnp.where(improved, new, old), snapshot, state.best_snapshot,
            names=("snapshot", "state.best_snapshot"), where="EarlyStopping.update")


def EarlyStopping(patience: ArrayLike, min_delta: ArrayLike = 0.0, mode: str = "min",
                  restore_best: bool = True) -> EarlyStopper:
    """Stops when a monitored value has not improved for ``patience`` epochs.

    A value ``v`` improves on the best so far ``b`` when ``v < b - min_delta``
    (``mode="min"``, e.g. a loss) or ``v > b + min_delta`` (``mode="max"``, e.g. an
    accuracy); NaN never improves. After each update::

        wait = 0 if improved else wait + 1
        stop = stop or wait >= patience

    Once stopped, further updates change nothing. Pure and jittable: the returned
    :class:`EarlyStopper` is a pytree and its ``update`` has no Python control flow
    on values, so it runs inside :func:`jtricks.train.fit`'s compiled epoch (or your
    own ``jit``/``scan``). The rule is :mod:`jtricks.patience`'s, shared with
    :func:`jtricks.reduce_on_plateau`.

    With ``restore_best=True`` the state keeps a copy of the snapshot passed at the
    best epoch (``fit`` passes the params, model state and averages), to be put back
    when training ends.

    Args:
        patience: epochs without improvement before stopping, an integer >= 0.
        min_delta: the smallest change that counts as an improvement, >= 0.
        mode: ``"min"`` or ``"max"`` (static).
        restore_best: keep the best snapshot (static).

    Example:
        >>> es = jt.train.EarlyStopping(patience=5, mode="max")
        >>> s = es.init()
        >>> for acc in accuracies:
        ...     s = es.update(s, acc)
        ...     if s.stop: break
    """
    where = "EarlyStopping"
    pt.check_mode(where, mode)
    hp.check_integer(where, "patience", patience,
                     fix="patience counts epochs without improvement, e.g. 5.")
    hp.check_nonnegative(where, "min_delta", min_delta,
                         fix="min_delta is the smallest improvement that counts, e.g. 1e-4.")
    return EarlyStopper(patience=patience, min_delta=min_delta, mode=mode,
                        restore_best=bool(restore_best))
