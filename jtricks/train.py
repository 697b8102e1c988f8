"""Training: a state pytree, a jitted step, a whole training loop on device.

The pieces, from small to large:

* :class:`TrainState`: every number a run needs to continue: ``step``, ``params``,
  ``opt_state``, ``model_state`` (batch-norm statistics...), the base PRNG ``key``
  and the parameter ``averages`` (EMA/SWA) if any. Saving it with :func:`save`
  and continuing after :func:`restore` is bit-identical to never stopping.
* :func:`make_step`: one optimizer step, jitted with the state donated. Dropout
  keys come from ``fold_in(state.key, state.step)``, so they depend on the step
  number alone (the reason a resumed run repeats the same randomness).
* :func:`fit`: epochs whose steps run in one ``lax.scan`` per epoch on device
  (one dispatch per epoch instead of one per batch), with on-device shuffling,
  an evaluation per epoch, :class:`EarlyStopping` (pure and jittable) and an
  optional progress bar.

The one loss signature used everywhere::

    def loss_fn(params, model_state, batch, key):
        ...
        return loss, (new_model_state, metrics)

``loss`` is a scalar; ``model_state`` is returned unchanged by models without
state; ``metrics`` is a dict of scalars (``{}`` for none) that ends up in the
step's metrics and in the history of :func:`fit`.

Example::

    step = jt.train.make_step(loss_fn, jt.adam(1e-3), averaging=jt.averaging.ema(0.99))
    state = step.init(params, jax.random.key(0), model_state)
    state, metrics = step(state, batch)                 # one step, or a whole run:
    state, history = jt.train.fit(step, state, (x, y), batch_size=128, epochs=50,
                                  key=jax.random.key(1), eval_data=(xv, yv),
                                  eval_fn=evaluate, monitor="accuracy",
                                  early_stopping=jt.train.EarlyStopping(5, mode="max"))
    jt.train.save("checkpoints", state, keep=3)
    state = jt.train.restore("checkpoints", like=step.init(params, key, model_state))

Checkpoints (:func:`save`, :func:`restore`) are described in :mod:`jtricks.checkpoint`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Struct, Transform, apply_updates, as_transform, static_field
from jtricks.checkpoint import CheckpointError, all_checkpoints, latest, restore, save
from jtricks.transforms.plateau import ReduceOnPlateauState
from jtricks.transforms.scaling import ScaleByLearningRate, ScaleByLearningRateState

PyTree = Any

__all__ = [
    "TrainState",
    "Step",
    "make_step",
    "EarlyStopping",
    "EarlyStoppingState",
    "fit",
    "save",
    "restore",
    "latest",
    "all_checkpoints",
    "CheckpointError",
]

_RESERVED = ("loss", "grad_norm", "learning_rate", "finite")


class TrainState(Struct):
    """Everything a training run carries from one step to the next (a pytree).

    Attributes:
        step: int32, the number of steps taken.
        params: the trained parameters.
        opt_state: the optimizer's state (``tx.init(params)``).
        model_state: non-trained model variables, e.g. batch-norm running
            statistics; ``None`` for stateless models.
        key: the run's base PRNG key. It is never split in place: step ``t`` uses
            ``jax.random.fold_in(key, t)``.
        averages: the averager's state (EMA/SWA) or ``None``.

    Build one with :meth:`Step.init`. The optimizer itself is not stored (its
    hyperparameters belong to the :class:`Step`), so a checkpoint holds numbers only.
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    model_state: PyTree
    key: jax.Array
    averages: PyTree = None


def _find(tree: PyTree, kind: type) -> list:
    """The nodes of type ``kind`` in ``tree``, in traversal order."""
    return [x for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, kind))
            if isinstance(x, kind)]


def _learning_rate(tx: Transform, old_state: PyTree, new_state: PyTree) -> jax.Array | None:
    """The learning rate this update used, if ``tx`` has exactly one.

    Finds the single ``scale_by_learning_rate`` in the transform tree and its state,
    evaluates a schedule at the state's count before the update, and multiplies by
    the scale of every ``reduce_on_plateau`` after the update (the scale it applied).
    """
    txs = _find(tx, ScaleByLearningRate)
    states = _find(old_state, ScaleByLearningRateState)
    if len(txs) != 1 or len(states) != 1:
        return None
    lr = jnp.asarray(hp.value_at(txs[0].learning_rate, states[0].count), jnp.float32)
    for plateau in _find(new_state, ReduceOnPlateauState):
        lr = lr * plateau.scale.astype(jnp.float32)
    return lr


def _check_loss_output(out: Any, model_state: PyTree) -> tuple[Any, PyTree, dict]:
    """Validates ``loss_fn``'s return value at trace time; returns its parts."""
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple)
            and len(out[1]) == 2):
        raise TypeError(
            "make_step: loss_fn must return (loss, (model_state, metrics)), got "
            f"{type(out).__name__}: {out!r}. For a model without state return the "
            "model_state it received; for no metrics return {}."
        )
    loss, (new_model_state, metrics) = out
    if jnp.shape(loss) != ():
        raise ValueError(
            f"make_step: loss_fn must return a scalar loss, got an array of shape "
            f"{jnp.shape(loss)} (dtype {jnp.result_type(loss)}). Reduce it over the "
            "batch, e.g. jnp.mean(per_example_losses)."
        )
    if metrics is None:
        metrics = {}
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"make_step: the metrics returned by loss_fn must be a dict of scalars, got "
            f"{type(metrics).__name__}. Return {{}} for no metrics."
        )
    clash = sorted(set(metrics) & set(_RESERVED))
    if clash:
        raise ValueError(
            f"make_step: loss_fn metrics use reserved names {clash}; make_step reports "
            f"{list(_RESERVED)} itself. Rename them (e.g. 'data_loss')."
        )
    old = jax.tree_util.tree_flatten_with_path(model_state)[0]
    new_leaves = jax.tree_util.tree_flatten_with_path(new_model_state)[0]
    if jax.tree.structure(model_state) != jax.tree.structure(new_model_state):
        raise ValueError(
            "make_step: loss_fn returned a model_state with a different structure from "
            f"the one it received: {jtree.first_difference(model_state, new_model_state)}."
            " Return the same tree with updated values."
        )
    for (path, a), (_, b) in zip(old, new_leaves):
        if jnp.shape(a) != jnp.shape(b) or jnp.result_type(a) != jnp.result_type(b):
            raise ValueError(
                f"make_step: loss_fn changed model_state at {jtree.keystr(path)} from "
                f"{jnp.shape(a)} {jnp.result_type(a)} to {jnp.shape(b)} "
                f"{jnp.result_type(b)}. Keep each leaf's shape and dtype (cast back with "
                ".astype)."
            )
    return loss, new_model_state, dict(metrics)


def _step_body(state: TrainState, batch: PyTree, tx: Transform, averaging: Any,
               loss_fn: Callable) -> tuple[TrainState, dict]:
    """One optimizer step as a pure function (jitted, scanned or vmapped by callers)."""
    key = jax.random.fold_in(state.key, state.step)

    def objective(params):
        out = loss_fn(params, state.model_state, batch, key)
        loss, model_state, metrics = _check_loss_output(out, state.model_state)
        return loss, (model_state, metrics)

    (loss, (model_state, aux)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    # `value` feeds reduce_on_plateau; transforms that do not use it ignore it.
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
    lr = _learning_rate(tx, state.opt_state, opt_state)
    params = apply_updates(state.params, updates)
    grad_norm = jtree.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A non-finite step must not poison the running statistics either (the params
    # are protected by skip_nonfinite when the optimizer is wrapped in it).
    model_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                               model_state, state.model_state)
    averages = state.averages
    if averaging is not None:
        averages = averaging.update(params, averages)
    metrics = {**aux, "loss": loss, "grad_norm": grad_norm, "finite": finite}
    if lr is not None:
        metrics["learning_rate"] = lr
    new_state = TrainState(step=jtree.increment(state.step), params=params,
                           opt_state=opt_state, model_state=model_state, key=state.key,
                           averages=averages)
    return new_state, metrics


_jit_step = jax.jit(_step_body, static_argnames=("loss_fn",), donate_argnums=(0,))


def _batch_spec(batch: PyTree) -> tuple:
    leaves, treedef = jax.tree.flatten(batch)
    return treedef, tuple((np.shape(x), jnp.result_type(x)) for x in leaves)


def _batch_mismatch(where: str, first: tuple, batch: PyTree) -> ValueError:
    treedef, specs = first
    if jax.tree.structure(batch) != treedef:
        return ValueError(
            f"{where}: this batch's structure differs from the first batch's: "
            f"{jax.tree.structure(batch)} vs {treedef}. Every batch must be the same tree."
        )
    for (path, leaf), (shape, dtype) in zip(jax.tree_util.tree_flatten_with_path(batch)[0],
                                            specs):
        if np.shape(leaf) != shape or jnp.result_type(leaf) != dtype:
            return ValueError(
                f"{where}: batch leaf {jtree.keystr(path)} has shape {np.shape(leaf)} "
                f"{jnp.result_type(leaf)}, but the first batch had {shape} {dtype}. Every "
                "batch must have the same shapes (a new shape recompiles the step): drop "
                "or pad the last partial batch."
            )
    return ValueError(f"{where}: batch differs from the first batch.")


class Step:
    """A jitted training step; build it with :func:`make_step`.

    ``step(state, batch) -> (state, metrics)``; the input state is donated (its
    buffers are reused), so keep only the returned one.
    """

    def __init__(self, loss_fn: Callable, tx: Any, averaging: Any = None):
        if not callable(loss_fn):
            raise TypeError(
                f"make_step: loss_fn must be a function (params, model_state, batch, key) "
                f"-> (loss, (model_state, metrics)), got {type(loss_fn).__name__}."
            )
        self.loss_fn = loss_fn
        self.tx = as_transform(tx, where="make_step")
        if averaging is not None and not all(
                callable(getattr(averaging, m, None)) for m in ("init", "update", "value")):
            raise TypeError(
                f"make_step: averaging must have init/update/value methods (e.g. "
                f"jt.averaging.ema(0.999)), got {type(averaging).__name__}."
            )
        self.averaging = averaging
        self._first_batch: tuple | None = None

    def init(self, params: PyTree, key: jax.Array, model_state: PyTree = None) -> TrainState:
        """A fresh :class:`TrainState` at step 0 for ``params`` and the base ``key``."""
        key = jnp.asarray(key) if not hasattr(key, "dtype") else key
        if not (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
                or (key.dtype == jnp.uint32 and key.shape[-1:] == (2,))):
            raise TypeError(
                f"make_step.init: key must be a PRNG key (jax.random.key(seed)), got "
                f"{key.dtype} of shape {key.shape}."
            )
        state = TrainState(
            step=jnp.zeros([], jnp.int32),
            params=params,
            opt_state=self.tx.init(params),
            model_state=model_state,
            key=key,
            averages=None if self.averaging is None else self.averaging.init(params),
        )
        # The step donates the state's buffers: give it buffers of its own, so the
        # caller's params stay valid and no buffer appears twice (an average or an
        # optimizer state initialised *as* the params would alias them).
        return jax.tree.map(lambda x: jnp.array(x, copy=True), state)

    def apply(self, state: TrainState, batch: PyTree) -> tuple[TrainState, dict]:
        """The step as a pure, un-jitted function (for ``lax.scan``/``vmap``)."""
        return _step_body(state, batch, self.tx, self.averaging, self.loss_fn)

    def check_batch(self, batch: PyTree, where: str = "step") -> None:
        """Refuses a batch whose tree, shapes or dtypes differ from the first one's."""
        spec = _batch_spec(batch)
        if self._first_batch is None:
            self._first_batch = spec
        elif spec != self._first_batch:
            raise _batch_mismatch(where, self._first_batch, batch)

    def __call__(self, state: TrainState, batch: PyTree) -> tuple[TrainState, dict]:
        if not isinstance(state, TrainState):
            raise TypeError(
                f"step: state must be a jt.train.TrainState (from step.init), got "
                f"{type(state).__name__}."
            )
        self.check_batch(batch)
        return _jit_step(state, batch, self.tx, self.averaging, loss_fn=self.loss_fn)

    def eval_params(self, state: TrainState) -> PyTree:
        """The params to evaluate: the average when ``averaging`` is set, else ``params``."""
        if self.averaging is None:
            return state.params
        return self.averaging.value(state.averages, like=state.params)


def make_step(loss_fn: Callable, tx: Any, *, averaging: Any = None) -> Step:
    """Builds a jitted, donated training step.

    Step ``t`` (0-based, ``t = state.step``) does::

        key_t               = fold_in(state.key, t)
        loss, (ms, metrics) = loss_fn(params, model_state, batch, key_t)
        g                   = d loss / d params
        updates, opt_state  = tx.update(g, opt_state, params, value=loss)
        params              = params + updates
        averages            = averaging.update(params, averages)        (if given)

    ``value=loss`` feeds :func:`jtricks.reduce_on_plateau`. Gradient accumulation
    and skipping non-finite steps are optimizer wrappers
    (``jt.accumulate(tx, k)``, ``jt.skip_nonfinite(tx)``) and work unchanged; a step
    whose loss or gradient is not finite also keeps the previous ``model_state``.

    The metrics are ``loss``, ``grad_norm`` (global L2 norm of the gradient),
    ``finite`` (bool), ``learning_rate`` (when ``tx`` holds one
    ``scale_by_learning_rate``: a schedule is evaluated at its count, times the
    scale of any ``reduce_on_plateau``) and the ``metrics`` dict returned by
    ``loss_fn``. With ``jt.accumulate`` the averager sees every micro-step's params
    (unchanged between updates), which only reweights the average.

    The optimizer's hyperparameters are passed to the compiled step as data, so
    steps built from ``jt.adam(1e-3)`` and ``jt.adam(3e-4)`` share one compilation.

    Args:
        loss_fn: ``(params, model_state, batch, key) -> (loss, (model_state,
            metrics))`` with a scalar ``loss``.
        tx: a jtricks transform or an optax ``GradientTransformation``.
        averaging: optional parameter averager, e.g. ``jt.averaging.ema(0.999)``.

    Returns:
        A :class:`Step`: ``step.init(params, key, model_state)`` builds the state,
        ``step(state, batch)`` runs one step (validating that the batch's shapes match
        the first batch's), ``step.apply`` is the pure function.

    Example:
        >>> def loss_fn(params, model_state, batch, key):
        ...     x, y = batch
        ...     logits = mlp(params, x)
        ...     loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        ...     return loss, (model_state, {})
        >>> step = jt.train.make_step(loss_fn, jt.adam(1e-3))
        >>> state = step.init(params, jax.random.key(0))
        >>> state, metrics = step(state, (x, y))
    """
    return Step(loss_fn, tx, averaging)


# ------------------------------------------------------------------ early stopping


class EarlyStoppingState(NamedTuple):
    """``epoch``: updates seen; ``best``: best value; ``best_epoch``: its 0-based epoch
    (-1 before any); ``wait``: epochs since; ``stop``: bool; ``best_snapshot``."""

    epoch: jax.Array
    best: jax.Array
    best_epoch: jax.Array
    wait: jax.Array
    stop: jax.Array
    best_snapshot: PyTree


class EarlyStopping(Struct):
    """Stops when a monitored value has not improved for ``patience`` epochs.

    A value ``v`` improves on the best so far ``b`` when ``v < b - min_delta``
    (``mode="min"``, e.g. a loss) or ``v > b + min_delta`` (``mode="max"``, e.g. an
    accuracy); NaN never improves. After each update::

        wait = 0 if improved else wait + 1
        stop = stop or wait >= patience

    Once stopped, further updates change nothing. Pure and jittable: the state is a
    pytree of arrays and ``update`` has no Python control flow on values, so it runs
    inside :func:`fit`'s compiled epoch (or your own ``jit``/``scan``).

    With ``restore_best=True`` the state keeps a copy of the snapshot passed at the
    best epoch (:func:`fit` passes the params, model state and averages), to be put
    back when training ends.

    Args:
        patience: epochs without improvement before stopping, >= 0.
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

    patience: Any
    min_delta: Any = 0.0
    mode: str = static_field(default="min")
    restore_best: bool = static_field(default=True)

    def __post_init__(self):
        if self.mode not in ("min", "max"):
            raise ValueError(
                f"EarlyStopping: mode must be 'min' (lower is better, e.g. a loss) or "
                f"'max' (higher is better, e.g. an accuracy), got {self.mode!r}."
            )
        hp.check("EarlyStopping", "patience", self.patience,
                 lambda x: (x >= 0) & (x == np.floor(x)), "an integer >= 0",
                 "patience counts epochs without improvement, e.g. 5.")
        hp.check_range("EarlyStopping", "min_delta", self.min_delta, low=0.0,
                       fix="min_delta is the smallest improvement that counts, e.g. 1e-4.")

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
        min_delta = jnp.asarray(self.min_delta, jnp.float32)
        if self.mode == "min":
            improved = value < state.best - min_delta
        else:
            improved = value > state.best + min_delta
        improved = improved & ~state.stop
        wait = jnp.where(improved, 0, state.wait + 1)
        stop = state.stop | (wait >= jnp.asarray(self.patience, jnp.int32))
        best_snapshot = state.best_snapshot
        if self.restore_best:
            if snapshot is None:
                raise ValueError(
                    "EarlyStopping.update: restore_best=True needs the snapshot to keep "
                    "(e.g. the params); pass it, or build EarlyStopping(restore_best=False)."
                )
            best_snapshot = jtree.map_checked(
                lambda new, old: jnp.where(improved, new, old), snapshot, state.best_snapshot,
                names=("snapshot", "state.best_snapshot"), where="EarlyStopping.update")
        frozen = state.stop
        return EarlyStoppingState(
            epoch=jnp.where(frozen, state.epoch, state.epoch + 1),
            best=jnp.where(improved, value, state.best),
            best_epoch=jnp.where(improved, state.epoch, state.best_epoch),
            wait=jnp.where(frozen, state.wait, wait),
            stop=stop,
            best_snapshot=best_snapshot,
        )


# ------------------------------------------------------------------ fit


def _num_examples(data: PyTree, where: str) -> int:
    leaves = jax.tree_util.tree_flatten_with_path(data)[0]
    if not leaves:
        raise ValueError(f"fit: {where} is empty; pass arrays with a leading example axis.")
    n = None
    for path, leaf in leaves:
        if np.ndim(leaf) == 0:
            raise ValueError(
                f"fit: {where} leaf {jtree.keystr(path)} is a scalar; every leaf needs a "
                "leading example axis."
            )
        if n is None:
            n, first = np.shape(leaf)[0], jtree.keystr(path)
        elif np.shape(leaf)[0] != n:
            raise ValueError(
                f"fit: {where} leaves disagree on the number of examples: {first} has "
                f"{n}, {jtree.keystr(path)} has {np.shape(leaf)[0]}."
            )
    return int(n)


def _epoch(state: TrainState, es_state: Any, train_data: PyTree, eval_data: PyTree,
           key: jax.Array, tx: Transform, averaging: Any, es: Any, *, loss_fn: Callable,
           eval_fn: Callable | None, batch_size: int, monitor: str | None):
    """One epoch on device: ``(state, es_state, train_metrics, eval_metrics, stop)``.

    ``stop`` is a separate copy of the early-stopping flag, so the host can read it
    after ``es_state`` was donated to the next epoch.
    """
    state, es_state, train, evaluated = _run_epoch(
        state, es_state, train_data, eval_data, key, tx, averaging, es, loss_fn=loss_fn,
        eval_fn=eval_fn, batch_size=batch_size, monitor=monitor)
    stop = jnp.copy(es_state.stop) if es is not None else jnp.asarray(False)
    return state, es_state, train, evaluated, stop


def _run_epoch(state: TrainState, es_state: Any, train_data: PyTree, eval_data: PyTree,
               key: jax.Array, tx: Transform, averaging: Any, es: Any, *, loss_fn: Callable,
               eval_fn: Callable | None, batch_size: int, monitor: str | None):
    """Shuffle, scan the steps, evaluate, update early stopping."""
    n = jax.tree.leaves(train_data)[0].shape[0]
    num_batches = n // batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, state.step), n)
    idx = perm[: num_batches * batch_size].reshape(num_batches, batch_size)
    batches = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), train_data)

    def body(s, b):
        return _step_body(s, b, tx, averaging, loss_fn)

    state, step_metrics = jax.lax.scan(body, state, batches)
    train = {k: jnp.mean(v.astype(jnp.float32), axis=0) for k, v in step_metrics.items()}
    evaluated = {}
    if eval_fn is not None:
        params = state.params if averaging is None else averaging.value(
            state.averages, like=state.params)
        evaluated = eval_fn(params, state.model_state, eval_data)
        if not isinstance(evaluated, Mapping) or any(
                jnp.shape(v) != () for v in evaluated.values()):
            raise TypeError(
                "fit: eval_fn must return a dict of scalars such as {'loss': ..., "
                f"'accuracy': ...}}, got {jax.tree.map(jnp.shape, evaluated)!r}."
            )
        evaluated = {k: jnp.asarray(v, jnp.float32) for k, v in evaluated.items()}
    if es is not None:
        source, name = (evaluated, "eval_fn") if eval_fn is not None else (train, "train")
        if monitor not in source:
            raise ValueError(
                f"fit: monitor={monitor!r} is not among the {name} metrics "
                f"{sorted(source)}; pass one of them."
            )
        snapshot = (state.params, state.model_state, state.averages) if es.restore_best \
            else None
        es_state = es.update(es_state, source[monitor], snapshot)
    return state, es_state, train, evaluated


_EPOCH_STATIC = ("loss_fn", "eval_fn", "batch_size", "monitor")
_jit_epoch = jax.jit(_epoch, static_argnames=_EPOCH_STATIC, donate_argnums=(0, 1))
# With early stopping the state is not donated: epoch e + 1 is queued before epoch e's
# stop flag is read, and if it is set, epoch e's state is the one returned. (Once
# stopped, the early-stopping state is frozen, so it can still be donated.)
_jit_epoch_keep = jax.jit(_epoch, static_argnames=_EPOCH_STATIC, donate_argnums=(1,))


def fit(step: Step, state: TrainState, train_data: PyTree, *, batch_size: int, epochs: int,
        key: jax.Array, eval_data: PyTree = None, eval_fn: Callable | None = None,
        early_stopping: EarlyStopping | None = None, monitor: str = "loss",
        progress: bool = False,
        callback: Callable[[int, TrainState, dict], Any] | None = None,
        ) -> tuple[TrainState, dict]:
    """Trains for up to ``epochs`` epochs, each epoch one compiled program on device.

    Each epoch: the examples are permuted with ``fold_in(key, state.step)`` (on
    device), cut into ``len // batch_size`` batches (the remainder is left out of
    this epoch and different examples are left out each epoch), the steps run in
    one ``lax.scan``, then ``eval_fn`` runs once and ``early_stopping`` is updated,
    all in the same program. Python only reads the stop flag (and, with
    ``progress``, the printed metrics) once per epoch.

    Args:
        step: from :func:`make_step`.
        state: from ``step.init``; it is donated (consumed): use the returned one.
        train_data: a pytree of arrays sharing a leading example axis, e.g.
            ``(x_train, y_train)``; batches are the same tree with ``batch_size``
            rows, as ``loss_fn`` expects.
        batch_size: examples per step (static).
        epochs: the maximum number of epochs.
        key: shuffling key (independent of ``state.key``, which drives dropout).
        eval_data: passed whole to ``eval_fn``.
        eval_fn: ``(params, model_state, eval_data) -> {name: scalar}``; ``params``
            are the averaged ones when the step has ``averaging``.
        early_stopping: an :class:`EarlyStopping`; it watches ``monitor``.
        monitor: the metric early stopping watches: a key of ``eval_fn``'s dict, or of
            the training metrics (epoch means) when there is no ``eval_fn``.
        progress: show a tqdm progress bar (``pip install tqdm``).
        callback: called after each epoch as ``callback(epoch, state, metrics)`` with
            the 0-based epoch and ``metrics = {"train": ..., "eval": ...}`` (device
            scalars), e.g. to save a checkpoint every few epochs. It waits for the
            epoch to finish; do not keep ``state`` (the next epoch consumes it).
            Resuming ``fit`` from a checkpoint saved there repeats the same shuffles
            and dropout masks (both are keyed by ``state.step``); the early-stopping
            counters start afresh.

    Returns:
        ``(state, history)``. With ``early_stopping.restore_best`` the returned
        state's ``params``, ``model_state`` and ``averages`` are those of the best
        epoch (``step``, ``opt_state`` and ``key`` stay the last ones). ``history``
        is ``{"train": {name: array[epochs_run]}, "eval": {name: array[epochs_run]},
        "epochs": epochs_run, "best_epoch": int or None, "stopped": bool}``;
        training metrics are epoch means of the step metrics.

    Example:
        >>> state, hist = jt.train.fit(step, state, (x_tr, y_tr), batch_size=128,
        ...     epochs=100, key=jax.random.key(1), eval_data=(x_va, y_va),
        ...     eval_fn=evaluate, early_stopping=jt.train.EarlyStopping(10, mode="max"),
        ...     monitor="accuracy")
    """
    if not isinstance(step, Step):
        raise TypeError(f"fit: step must come from jt.train.make_step, got {type(step).__name__}.")
    if not isinstance(state, TrainState):
        raise TypeError(f"fit: state must be a TrainState (from step.init), got "
                        f"{type(state).__name__}.")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"fit: batch_size must be an integer >= 1, got {batch_size!r}.")
    if not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"fit: epochs must be an integer >= 0, got {epochs!r}.")
    if eval_data is not None and eval_fn is None:
        raise ValueError("fit: eval_data was given without eval_fn; pass both or neither.")
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError(f"fit: early_stopping must be a jt.train.EarlyStopping, got "
                        f"{type(early_stopping).__name__}.")
    n = _num_examples(train_data, "train_data")
    if batch_size > n:
        raise ValueError(
            f"fit: batch_size={batch_size} is larger than the {n} training examples; "
            "use a smaller batch."
        )
    # Put the data on the device once, not once per epoch.
    train_data = jax.device_put(train_data)
    eval_data = jax.device_put(eval_data)
    step.check_batch(jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype), train_data),
        where="fit")

    es = early_stopping
    es_state = None
    if es is not None:
        es_state = es.init((state.params, state.model_state, state.averages)
                           if es.restore_best else None)

    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError(
                "fit(progress=True) needs tqdm: pip install tqdm (or pass progress=False)."
            ) from None
        bar = tqdm(total=epochs, unit="epoch")

    train_hist, eval_hist, stopped = [], [], False

    def finish(epoch, train, evaluated, stop):
        """Host-side bookkeeping of a finished epoch; True when training must stop."""
        train_hist.append(train)
        eval_hist.append(evaluated)
        if bar is not None:
            loss, evaluated = jax.device_get((train["loss"], evaluated))  # one transfer
            shown = {"loss": float(loss), **{f"eval_{k}": float(v) for k, v in
                                             evaluated.items()}}
            bar.set_postfix(shown, refresh=False)
            bar.update(1)
        return es is not None and bool(stop)

    # Without a callback, epoch e + 1 is queued before epoch e's results are read, so
    # the device never waits for Python; if epoch e said stop, epoch e + 1's result
    # is dropped and epoch e's state returned.
    run_epoch = _jit_epoch if es is None or callback is not None else _jit_epoch_keep
    pending = None
    try:
        for epoch in range(epochs):
            previous = state
            state, es_state, train, evaluated, stop = run_epoch(
                previous, es_state, train_data, eval_data, key, step.tx, step.averaging, es,
                loss_fn=step.loss_fn, eval_fn=eval_fn, batch_size=int(batch_size),
                monitor=monitor if es is not None else None)
            if callback is not None:
                if finish(epoch, train, evaluated, stop):
                    stopped = True
                callback(epoch, state, {"train": train, "eval": evaluated})
                if stopped:
                    break
                continue
            if pending is not None and finish(*pending):
                stopped, state = True, previous
                break
            pending = (epoch, train, evaluated, stop)
        else:
            if pending is not None and finish(*pending):
                stopped = True
    finally:
        if bar is not None:
            bar.close()

    best_epoch = None
    if es is not None:
        best_epoch = int(es_state.best_epoch)
        if es.restore_best and best_epoch >= 0:
            params, model_state, averages = es_state.best_snapshot
            state = state.replace(params=params, model_state=model_state, averages=averages)
        if best_epoch < 0:
            best_epoch = None

    def stack(hist):
        hist = jax.device_get(hist)
        names = hist[0].keys() if hist else ()
        return {k: np.stack([h[k] for h in hist]) for k in names}

    history = {"train": stack(train_hist), "eval": stack(eval_hist),
               "epochs": len(train_hist), "best_epoch": best_epoch, "stopped": stopped}
    return state, history
