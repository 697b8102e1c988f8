"""Recording measurements of the updates in the optimizer state: optax's ``snapshot``,
``monitor`` and ``measure_with_ema``.

A measurement is any function of the updates (a norm, a fraction clipped, a whole
tree); it is stored in the state under a name and the updates pass through
unchanged, so a measure can sit anywhere in a chain and be read back with
``optax.tree.get(state, name)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import sharding as jsharding
from jtricks import tree as jtree
from jtricks.base import Chain, Stateless, Transform, as_transform, static_field
from jtricks.transforms.ema import Ema, EmaState

__all__ = [
    "SnapshotState",
    "Snapshot",
    "snapshot",
    "MonitorState",
    "Monitor",
    "monitor",
    "MeasureEma",
    "measure_with_ema",
]


def _as_arrays(tree: Any) -> Any:
    """Each leaf as an array (a measure may return Python numbers or bools)."""
    return jax.tree.map(jnp.asarray, tree)


class _Measure(Stateless):
    """Replaces the updates by ``measure(updates)`` (the first link of a measure)."""

    measure: Callable = static_field()

    def update(self, updates, state, params=None, **extra):
        del params, extra
        return _as_arrays(self.measure(updates)), state


# --- snapshot -----------------------------------------------------------------------


class SnapshotState(NamedTuple):
    """State of :func:`snapshot`: ``measurement``, ``{measure_name: value}``."""

    measurement: dict[str, Any]


class Snapshot(Transform):
    """Stores ``measure(updates)`` in the state; see :func:`snapshot`."""

    measure_name: str = static_field()
    measure: Callable = static_field()

    def init(self, params):
        # The measure may trace (a jitted norm): meshes with explicit axes need set_mesh.
        with jsharding.use_mesh(jsharding.mesh_of(params)):
            return SnapshotState({self.measure_name: _as_arrays(self.measure(params))})

    def update(self, updates, state, params=None, **extra):
        del state, params, extra
        return updates, SnapshotState({self.measure_name: _as_arrays(self.measure(updates))})


def snapshot(measure_name: str, measure: Callable[[Any], Any]) -> Snapshot:
    """Records ``measure(updates)`` in the state under ``measure_name``; the updates
    pass through unchanged::

        state.measurement[measure_name] = measure(u)
        u -> u

    ``init`` stores ``measure(params)``, so the state has its final shape from the
    start (a ``lax.scan`` carry).

    Args:
        measure_name: the key of the measurement (``optax.tree.get(state, name)``).
        measure: a function of the updates (the updates arriving at this link of
            a chain) returning an array or a tree of arrays.

    Example:
        >>> tx = jt.chain(jt.sgd(0.1), snapshot("norm", jt.tree.global_norm),
        ...               jt.clip_by_global_norm(1.0))
    """
    if not isinstance(measure_name, str):
        raise TypeError(f"snapshot: measure_name must be a string, got {measure_name!r}.")
    if not callable(measure):
        raise TypeError(f"snapshot: measure must be a function of the updates, got "
                        f"{type(measure).__name__}: {measure!r}.")
    return Snapshot(measure_name=measure_name, measure=measure)


# --- monitor ------------------------------------------------------------------------


class MonitorState(NamedTuple):
    """State of :func:`monitor`.

    Attributes:
        measurements: ``{name: value}``, the last value of every measure.
        measure_states: the measures' own states, in the order they were given.
    """

    measurements: dict[str, Any]
    measure_states: tuple


class Monitor(Transform):
    """Records several (possibly stateful) measures; see :func:`monitor`."""

    measures: tuple[Transform, ...]
    names: tuple[str, ...] = static_field()

    def init(self, params):
        states = tuple(m.init(params) for m in self.measures)
        measurements = {}
        for name, m, s in zip(self.names, self.measures, states):
            if isinstance(m, _Measure):
                measurements[name] = _as_arrays(m.measure(params))
            else:
                with jsharding.use_mesh(jsharding.mesh_of(params)):
                    shapes = jax.eval_shape(lambda m=m, s=s: m.update(params, s, params)[0])
                measurements[name] = jtree.replicated_like(params, jax.tree.map(
                    lambda x: jnp.zeros(x.shape, x.dtype), shapes))
        return MonitorState(measurements, states)

    def update(self, updates, state, params=None, **extra):
        measurements, states = {}, []
        for name, m, s in zip(self.names, self.measures, state.measure_states):
            value, s = m.update(updates, s, params, **extra)
            measurements[name] = value
            states.append(s)
        return updates, MonitorState(measurements, tuple(states))

    def hyperparams_at(self, state):
        return {name: m.hyperparams_at(s)
                for name, m, s in zip(self.names, self.measures, state.measure_states)}

    def learning_rate_factors(self, params, state, new_state):
        return []


def monitor(measures: dict[str, Any]) -> Monitor:
    """Records named measurements of the updates in the state; the updates pass
    through unchanged. A measure is a function of the updates or a transform (e.g.
    :func:`measure_with_ema`) whose *output* is the measurement::

        for name, m in measures:
            state.measurements[name], state.measure_states[i] = m(u, state_i)
        u -> u

    Deviation from ``optax.monitor``: optax starts ``measurements`` as an empty dict
    that fills on the first update, so its state changes structure and cannot be
    a ``lax.scan`` carry. Here ``init`` fills it: a function measure is evaluated
    on the params, a transform measure gives zeros shaped like its output (by
    ``jax.eval_shape``). After one update the states are alike, and optax's state
    from then on restores into this one.

    Args:
        measures: ``{name: measure}``, each a function ``updates -> array tree`` or
            a gradient transformation (jtricks or optax) whose update returns the
            measurement.

    Example:
        >>> tx = jt.chain(jt.sgd(0.1),
        ...               monitor({"norm": jt.tree.global_norm,
        ...                        "clipped": measure_with_ema(
        ...                            lambda u: jt.tree.global_norm(u) > 1.0, 0.9)}),
        ...               jt.clip_by_global_norm(1.0))
    """
    if not isinstance(measures, dict):
        raise TypeError(f"monitor: measures must be a dict {{name: measure}}, got "
                        f"{type(measures).__name__}: {measures!r}.")
    txs = []
    for name, m in measures.items():
        if isinstance(m, Transform) or (hasattr(m, "init") and hasattr(m, "update")):
            txs.append(as_transform(m, where="monitor"))
        elif callable(m):
            txs.append(_Measure(measure=m))
        else:
            raise TypeError(f"monitor: measure {name!r} must be a function of the updates "
                            f"or a gradient transformation, got {type(m).__name__}: {m!r}.")
    return Monitor(measures=tuple(txs), names=tuple(measures))


# --- measure_with_ema ---------------------------------------------------------------


class MeasureEma(Ema):
    """The moving average of a measurement (the second link of
    :func:`measure_with_ema`): :class:`~jtricks.transforms.ema.Ema`'s update, with a
    state shaped like the measurement instead of the params."""

    measure: Callable = static_field(default=None)

    def _dtype(self, x):
        if self.accumulator_dtype is not None:
            return self.accumulator_dtype
        dtype = jnp.result_type(x)
        return dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.dtype(jnp.float32)

    def init(self, params):
        with jsharding.use_mesh(jsharding.mesh_of(params)):
            shapes = jax.eval_shape(self.measure, params)
        return EmaState(count=jtree.scalar(0, jnp.int32, params),
                        ema=jtree.replicated_like(params, jax.tree.map(
                            lambda x: jnp.zeros(x.shape, self._dtype(x)), shapes)))


def measure_with_ema(measure: Callable[[Any], Any], decay: Any, debias: bool = True,
                     accumulator_dtype: Any | None = None) -> Chain:
    """A measure for :func:`monitor` that records the moving average of
    ``measure(updates)``. With ``m_t = measure(u_t)`` and ``t`` the 1-based step::

        e_t = decay * e_{t-1} + (1 - decay) * m_t      (e_0 = 0)
        out = e_t / (1 - decay**t)                     (debias=True)
        out = e_t                                      (debias=False)

    It is ``chain(measure, ema)`` as in optax, so its state is
    ``(EmptyState(), EmaState(count, ema))``. The average is kept in
    ``accumulator_dtype``, or in the measurement's dtype if that is a float and
    fp32 otherwise (a bool measure such as ``norm > threshold`` averages to a
    fraction). optax starts such an average as a bool and turns it into a float
    on the first update; here it is a float from ``init`` (a stable scan carry).

    Args:
        measure: a function of the updates returning an array tree.
        decay: the average's decay rate, in [0, 1) (a float or an array).
        debias: divide by ``1 - decay**t`` (static).
        accumulator_dtype: dtype of the stored average (static).

    Example:
        >>> clipped = measure_with_ema(lambda u: jt.tree.global_norm(u) > 1.0, 0.99)
        >>> tx = jt.chain(monitor({"clipped": clipped}), jt.clip_by_global_norm(1.0))
    """
    if not callable(measure):
        raise TypeError(f"measure_with_ema: measure must be a function of the updates, "
                        f"got {type(measure).__name__}: {measure!r}.")
    hp.no_schedule("measure_with_ema", "decay", decay)
    hp.check_decay("measure_with_ema", "decay", decay)
    dtype = None if accumulator_dtype is None else jax.dtypes.canonicalize_dtype(
        accumulator_dtype)
    return Chain(transforms=(_Measure(measure=measure),
                             MeasureEma(decay=hp.as_hyper(decay), measure=measure,
                                        debias=bool(debias), accumulator_dtype=dtype)))

