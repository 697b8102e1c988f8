"""Model averaging: parameter EMA, stochastic weight averaging, ensembles via ``vmap``.

The lesson's "model averaging" comes in two flavours, both here:

* averaging the *weights* of one run along its trajectory (:func:`ema`, :func:`swa`),
  which smooths the noise of the last SGD steps and usually generalises better;
* averaging the *outputs* of several models trained from different random keys
  (:func:`ensemble_step`, :func:`ensemble_predict`): N models train in one vmapped
  step, so an ensemble of small models costs about one dispatch per step.

An averager is a pytree (its decay or schedule constants are leaves) with three
pure methods, mirroring a transform's protocol::

    avg_state = averager.init(params)
    avg_state = averager.update(params, avg_state)   # after each optimizer step
    averaged = averager.value(avg_state)              # params to evaluate with

These average *parameters* (what was evaluated), not updates. Averages are kept in
at least fp32, so a bf16 model's running mean does not stall on rounding.
:func:`jtricks.train.make_step` takes one as ``averaging=`` and keeps its state in
``TrainState.averages``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Struct, static_field

PyTree = Any

__all__ = [
    "EmaState",
    "Ema",
    "ema",
    "SwaState",
    "Swa",
    "swa",
    "ensemble_step",
    "ensemble_predict",
]


def _cast_like(tree: PyTree, like: PyTree) -> PyTree:
    return jax.tree.map(lambda a, p: a.astype(jnp.result_type(p)), tree, like)


class EmaState(NamedTuple):
    """``count``: int32 number of updates averaged; ``mean``: the (debiased) average."""

    count: jax.Array
    mean: PyTree


class Ema(Struct):
    """Exponential moving average of the parameters; see :func:`ema`."""

    decay: Any
    debias: bool = static_field(default=True)

    def init(self, params: PyTree) -> EmaState:
        # The mean starts at the params, so value() is meaningful before any update.
        # A copy, not the params' own buffer: a step that donates both must not alias.
        mean = jax.tree.map(lambda p: jnp.array(p, jtree.acc_dtype(p), copy=True), params)
        return EmaState(count=jnp.zeros([], jnp.int32), mean=mean)

    def update(self, params: PyTree, state: EmaState) -> EmaState:
        count = jtree.increment(state.count)
        decay = jnp.asarray(hp.value_at(self.decay, state.count), jnp.float32)
        if self.debias:
            # Debiased EMA written as a running update of the debiased mean:
            # with e_t = d e_{t-1} + (1 - d) p_t, e_0 = 0, the estimate e_t / (1 - d^t)
            # equals m_t = m_{t-1} + w_t (p_t - m_{t-1}) with w_t = (1 - d) / (1 - d^t).
            # w_1 = 1, so m_1 = p_1 whatever m_0 is.
            # 1 - d^t as -expm1(t * log1p(d - 1)): exact d - 1, no cancellation, so
            # the weights stay accurate for decays like 0.9999 in fp32.
            t = count.astype(jnp.float32)
            weight = (1 - decay) / -jnp.expm1(t * jnp.log1p(decay - 1))
        else:
            weight = 1 - decay

        def leaf(m, p):
            return m + weight.astype(m.dtype) * (jnp.asarray(p, m.dtype) - m)

        mean = jtree.map_checked(leaf, state.mean, params, names=("state.mean", "params"),
                                 where="ema.update")
        return EmaState(count=count, mean=mean)

    def value(self, state: EmaState, like: PyTree | None = None) -> PyTree:
        """The averaged params (cast to ``like``'s dtypes when given)."""
        return state.mean if like is None else _cast_like(state.mean, like)


def ema(decay: ArrayLike, debias: bool = True) -> Ema:
    """Exponential moving average of the parameters ("Polyak averaging").

    With ``p_t`` the params after optimizer step ``t`` (1-based) and ``d`` the decay::

        e_t = d * e_{t-1} + (1 - d) * p_t,     e_0 = 0
        value_t = e_t / (1 - d**t)             (debias=True)

    Debiasing removes the pull towards the zero start, exactly as Adam's bias
    correction does for its moments; ``value_t`` is then the normalised weighted
    average ``sum_s d**(t-s) p_s / sum_s d**(t-s)``. With ``debias=False`` the average
    starts from the initial params instead: ``m_t = d * m_{t-1} + (1 - d) * p_t``,
    ``m_0 = p_0`` (the convention of most training scripts).

    Args:
        decay: in [0, 1); a float, an array or a schedule of the update count
            (e.g. a warmup of the decay). Typical: 0.99-0.9999.
        debias: divide by ``1 - d**t`` (static).

    Example:
        >>> avg = jt.averaging.ema(0.999)
        >>> s = avg.init(params)
        >>> s = avg.update(new_params, s)
        >>> eval_params = avg.value(s)
    """
    hp.check_range("ema", "decay", decay, low=0.0, high=1.0, high_open=True,
                   fix="decay weights the old average; typical values are 0.99-0.9999.")
    return Ema(decay=hp.as_hyper(decay), debias=bool(debias))


class SwaState(NamedTuple):
    """``count``: int32 updates seen; ``n``: int32 snapshots averaged; ``mean``."""

    count: jax.Array
    n: jax.Array
    mean: PyTree


class Swa(Struct):
    """Stochastic weight averaging; see :func:`swa`."""

    start: Any
    every: Any

    def init(self, params: PyTree) -> SwaState:
        mean = jax.tree.map(lambda p: jnp.array(p, jtree.acc_dtype(p), copy=True), params)
        return SwaState(count=jnp.zeros([], jnp.int32), n=jnp.zeros([], jnp.int32), mean=mean)

    def update(self, params: PyTree, state: SwaState) -> SwaState:
        count = jtree.increment(state.count)  # the 1-based step that produced `params`
        start = jnp.asarray(self.start, jnp.int32)
        every = jnp.asarray(self.every, jnp.int32)
        take = (count >= start) & ((count - start) % every == 0)
        n = state.n + take.astype(jnp.int32)
        # Before the first snapshot the "average" follows the current params, so
        # value() always returns usable weights; the first snapshot then replaces it.
        weight = jnp.where(take, 1.0 / jnp.maximum(n, 1).astype(jnp.float32),
                           jnp.where(state.n == 0, 1.0, 0.0))

        def leaf(m, p):
            return m + weight.astype(m.dtype) * (jnp.asarray(p, m.dtype) - m)

        mean = jtree.map_checked(leaf, state.mean, params, names=("state.mean", "params"),
                                 where="swa.update")
        return SwaState(count=count, n=n, mean=mean)

    def value(self, state: SwaState, like: PyTree | None = None) -> PyTree:
        """The averaged params (cast to ``like``'s dtypes when given)."""
        return state.mean if like is None else _cast_like(state.mean, like)


def swa(start: int, every: int = 1) -> Swa:
    """Stochastic weight averaging (Izmailov et al., 2018): an equal-weight mean of
    the params at regular steps late in training.

    With ``p_t`` the params after optimizer step ``t`` (1-based), the snapshots are
    the steps ``S = {t : t >= start and (t - start) % every == 0}`` and::

        value = (1 / |S|) * sum_{t in S} p_t

    kept as a running mean ``m <- m + (p_t - m) / n``. Until the first snapshot,
    ``value`` returns the current params. Pair it with a constant or cyclic
    learning rate over the averaging phase. Batch-norm statistics computed with the
    raw params do not match averaged params exactly; recompute them with one pass
    over the training data for best results.

    Args:
        start: the first step averaged, >= 1 (e.g. 75% of the training steps).
        every: the gap between snapshots, >= 1 (e.g. the steps per epoch).

    Example:
        >>> avg = jt.averaging.swa(start=1000, every=100)
    """
    hp.check_integer("swa", "start", start, low=1,
                     rule="an integer >= 1 (the first 1-based step to average)")
    hp.check_integer("swa", "every", every, low=1,
                     rule="an integer >= 1 (the number of steps between snapshots)")
    return Swa(start=start, every=every)


def ensemble_step(step: Callable, *, batch_axis: int | None = None) -> Callable:
    """Trains N models in one program: ``step`` vmapped over a stacked ``TrainState``.

    Build the N states from N keys with ``jax.vmap`` (each member gets its own
    initial params and its own dropout key), then call the returned function as
    you would the single step. Member ``i`` computes exactly what a separate run
    with key ``i`` computes (up to float reassociation in batched matmuls).

    Args:
        step: a :func:`jtricks.train.make_step` result (its pure ``apply`` is
            vmapped), or any pure ``(state, batch) -> (state, metrics)``.
        batch_axis: ``None`` feeds every member the same batch; ``0`` feeds member
            ``i`` the slice ``batch[i]`` (e.g. bootstrap resamples).

    Returns:
        A jitted ``(states, batch) -> (states, metrics)``, the states donated; every
        metric gains a leading member axis.

    Example:
        >>> step = jt.train.make_step(loss_fn, jt.adam(1e-3))
        >>> keys = jax.random.split(jax.random.key(0), 5)
        >>> states = jax.vmap(lambda k: step.init(init_params(k), k))(keys)
        >>> states, metrics = jt.averaging.ensemble_step(step)(states, batch)
        >>> probs = jt.averaging.ensemble_predict(predict, states.params, x)
    """
    fn = getattr(step, "apply", step)
    if not callable(fn):
        raise TypeError(
            f"ensemble_step: step must be a make_step result or a function "
            f"(state, batch) -> (state, metrics), got {type(step).__name__}."
        )
    if batch_axis not in (None, 0):
        raise ValueError(
            f"ensemble_step: batch_axis must be None (shared batch) or 0 (one batch "
            f"per member), got {batch_axis!r}."
        )
    return jax.jit(jax.vmap(fn, in_axes=(0, batch_axis)), donate_argnums=0)


def ensemble_predict(apply_fn: Callable, params: PyTree, *args: Any,
                     **kwargs: Any) -> jax.Array:
    """The ensemble's prediction: the mean over members of ``apply_fn(params_i, *args)``.

    ``params`` is stacked on a leading member axis (as produced by
    :func:`ensemble_step`); ``args`` are shared by all members. Average
    *probabilities* (apply a softmax inside ``apply_fn``), not logits, for the
    classic model-averaging ensemble.

    Example:
        >>> probs = jt.averaging.ensemble_predict(
        ...     lambda p, x: jax.nn.softmax(mlp(p, x)), states.params, x_test)
    """
    outs = jax.vmap(lambda p: apply_fn(p, *args, **kwargs))(params)
    return jax.tree.map(lambda o: jnp.mean(o, axis=0), outs)
