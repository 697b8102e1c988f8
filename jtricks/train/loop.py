"""A whole training run on device: each epoch one compiled program.

An epoch shuffles on device, scans the steps, evaluates once and updates early
stopping, all in the same program; Python only reads the stop flag (and, with
``progress``, the printed metrics) once per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import sharding as jsharding
from jtricks import tree as jtree
from jtricks.base import Transform
from jtricks.train.convs import canonical_convs
from jtricks.train.early_stopping import EarlyStopper
from jtricks.train.placement import constrain, onto_mesh
from jtricks.train.state import TrainState
from jtricks.train.step import Step, step_body

__all__ = ["fit"]

PyTree = Any


# --- the epoch program ----------------------------------------------------------------


def _evaluate(state: TrainState, eval_data: PyTree, averaging: Any,
              eval_fn: Callable) -> dict:
    params = state.params if averaging is None else averaging.value(
        state.averages, like=state.params)
    evaluated = eval_fn(params, state.model_state, eval_data)
    if not isinstance(evaluated, Mapping) or any(
            jnp.shape(v) != () for v in evaluated.values()):
        raise TypeError(
            "fit: eval_fn must return a dict of scalars such as {'loss': ..., "
            f"'accuracy': ...}}, got {jax.tree.map(jnp.shape, evaluated)!r}."
        )
    return {k: jnp.asarray(v, jnp.float32) for k, v in evaluated.items()}


def _watch(es: EarlyStopper, es_state: Any, state: TrainState, train: dict,
           evaluated: dict, monitor: str, has_eval: bool) -> Any:
    source, name = (evaluated, "eval_fn") if has_eval else (train, "train")
    if monitor not in source:
        raise ValueError(
            f"fit: monitor={monitor!r} is not among the {name} metrics "
            f"{sorted(source)}; pass one of them."
        )
    snapshot = (state.params, state.model_state, state.averages) if es.restore_best \
        else None
    return es.update(es_state, source[monitor], snapshot)


def _epoch(state: TrainState, es_state: Any, train_data: PyTree, eval_data: PyTree,
           key: jax.Array, tx: Transform, averaging: Any, es: EarlyStopper | None, *,
           loss_fn: Callable, eval_fn: Callable | None, batch_size: int,
           monitor: str | None, layout: Any = None, on_cpu: bool = False):
    """One epoch: ``(state, es_state, train_metrics, eval_metrics, stop)``.

    ``stop`` is a separate copy of the early-stopping flag, so the host can read it
    after ``es_state`` was donated to the next epoch. ``on_cpu``: the steps (a loop
    body) and ``eval_fn`` get their convolutions in XLA CPU's fast layout
    (:mod:`jtricks.train.convs`).
    """
    n = jax.tree.leaves(train_data)[0].shape[0]
    num_batches = n // batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, state.step), n)
    idx = perm[: num_batches * batch_size].reshape(num_batches, batch_size)
    batches = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), train_data)
    if layout is not None:  # each step's batch split over the data axis
        split = layout.batch_sharding(leading=1)
        batches = constrain(batches, jax.tree.map(lambda _: split, batches))
    def body(s, b):
        return step_body(s, b, tx, averaging, loss_fn, layout)

    if on_cpu:
        body = canonical_convs(body)
        eval_fn = eval_fn if eval_fn is None else canonical_convs(eval_fn)
    state, step_metrics = jax.lax.scan(body, state, batches)
    train = {k: jnp.mean(v.astype(jnp.float32), axis=0) for k, v in step_metrics.items()}
    evaluated = {} if eval_fn is None else _evaluate(state, eval_data, averaging, eval_fn)
    stop = jnp.asarray(False)
    if es is not None:
        es_state = _watch(es, es_state, state, train, evaluated, monitor,
                          eval_fn is not None)
        stop = jnp.copy(es_state.stop)
    return state, es_state, train, evaluated, stop


_EPOCH_STATIC = ("loss_fn", "eval_fn", "batch_size", "monitor", "layout", "on_cpu")
_jit_epoch = jax.jit(_epoch, static_argnames=_EPOCH_STATIC, donate_argnums=(0, 1))
# With early stopping the state is not donated: epoch e + 1 is queued before epoch e's
# stop flag is read, and if it is set, epoch e's state is the one returned. (Once
# stopped, the early-stopping state is frozen, so it can still be donated.)
_jit_epoch_keep = jax.jit(_epoch, static_argnames=_EPOCH_STATIC, donate_argnums=(1,))


# --- arguments -------------------------------------------------------------------------


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


def _check_args(step: Any, state: Any, train_data: PyTree, batch_size: Any, epochs: Any,
                eval_data: PyTree, eval_fn: Any, early_stopping: Any) -> None:
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
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopper):
        raise TypeError(f"fit: early_stopping must be a jt.train.EarlyStopping, got "
                        f"{type(early_stopping).__name__}.")
    n = _num_examples(train_data, "train_data")
    if batch_size > n:
        raise ValueError(
            f"fit: batch_size={batch_size} is larger than the {n} training examples; "
            "use a smaller batch."
        )


def _fit_layout(step: Step, mesh: Any, batch_size: int) -> Any:
    if mesh is not None and mesh is not step.mesh and mesh != step.mesh:
        raise ValueError(
            "fit: mesh differs from the step's mesh; build the step with "
            "jt.train.make_step(..., mesh=mesh) and call fit without mesh (or the same one)."
        )
    if step.mesh is None:
        return None
    if step.layout is None:
        raise ValueError("fit: a step on a mesh needs its state from step.init.")
    size = jsharding.check_axis(step.mesh, step.data_axis, "fit")
    if batch_size % size:
        raise ValueError(
            f"fit: batch_size={batch_size} does not divide by the {size} devices on mesh "
            f"axis {step.data_axis!r}; use a multiple of {size}."
        )
    return step.layout


def _on_cpu(data: PyTree, layout: Any) -> bool:
    """Whether the epoch runs on XLA CPU (where the data lies)."""
    if layout is not None:
        return layout.mesh.devices.flat[0].platform == "cpu"
    leaf = jax.tree.leaves(data)[0]
    return next(iter(leaf.devices())).platform == "cpu"


def _place_data(data: PyTree, layout: Any) -> PyTree:
    """The data on the device (one device), or whole on every device of the mesh
    (assembled from each process's part in a multi-process run)."""
    if data is None or layout is None:
        return jax.device_put(data)
    rep = jsharding.replicated(layout.mesh)
    if jax.process_count() > 1:
        data = jsharding.shard_batch(data, layout.mesh, layout.data_axis)
        with jsharding.use_mesh(layout.mesh):
            return jax.jit(lambda d: d, out_shardings=rep)(data)
    return jax.device_put(data, rep)


# --- the host side: history, progress, the epoch loop ----------------------------------


class _History:
    """Collects each finished epoch's metrics and drives the progress bar."""

    def __init__(self, epochs: int, progress: bool, watching: bool):
        self.train: list[dict] = []
        self.eval: list[dict] = []
        self.watching = watching
        self.bar = _progress_bar(epochs) if progress else None

    def record(self, epoch: int, train: dict, evaluated: dict, stop: jax.Array) -> bool:
        """Books a finished epoch; True when early stopping says to stop."""
        del epoch
        self.train.append(train)
        self.eval.append(evaluated)
        if self.bar is not None:
            loss, evaluated = jax.device_get((train["loss"], evaluated))  # one transfer
            shown = {"loss": float(loss), **{f"eval_{k}": float(v) for k, v in
                                             evaluated.items()}}
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)
        return self.watching and bool(stop)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def stacked(self) -> tuple[dict, dict]:
        def stack(hist):
            hist = jax.device_get(hist)
            names = hist[0].keys() if hist else ()
            return {k: np.stack([h[k] for h in hist]) for k in names}

        return stack(self.train), stack(self.eval)


def _progress_bar(epochs: int) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            "fit(progress=True) needs tqdm: pip install tqdm (or pass progress=False)."
        ) from None
    return tqdm(total=epochs, unit="epoch")


def _run_pipelined(run: Callable, state: TrainState, es_state: Any, epochs: int,
                   history: _History) -> tuple[TrainState, Any, bool]:
    """Epoch e + 1 is queued before epoch e's results are read, so the device never
    waits for Python; if epoch e said stop, epoch e + 1's result is dropped and epoch
    e's state returned."""
    pending = None
    for epoch in range(epochs):
        previous = state
        state, es_state, *results = run(previous, es_state)
        if pending is not None and history.record(*pending):
            return previous, es_state, True
        pending = (epoch, *results)
    return state, es_state, pending is not None and history.record(*pending)


def _run_with_callback(run: Callable, state: TrainState, es_state: Any, epochs: int,
                       history: _History, callback: Callable
                       ) -> tuple[TrainState, Any, bool]:
    """One epoch at a time: the callback sees each epoch's state before the next."""
    for epoch in range(epochs):
        state, es_state, train, evaluated, stop = run(state, es_state)
        stopped = history.record(epoch, train, evaluated, stop)
        callback(epoch, state, {"train": train, "eval": evaluated})
        if stopped:
            return state, es_state, True
    return state, es_state, False


def _restore_best(es: EarlyStopper | None, es_state: Any, state: TrainState
                  ) -> tuple[TrainState, int | None]:
    if es is None:
        return state, None
    best_epoch = int(es_state.best_epoch)
    if best_epoch < 0:
        return state, None
    if es.restore_best:
        params, model_state, averages = es_state.best_snapshot
        state = state.replace(params=params, model_state=model_state, averages=averages)
    return state, best_epoch


# --- fit ---------------------------------------------------------------------------------


def fit(step: Step, state: TrainState, train_data: PyTree, *, batch_size: int, epochs: int,
        key: jax.Array, eval_data: PyTree = None, eval_fn: Callable | None = None,
        early_stopping: EarlyStopper | None = None, monitor: str = "loss",
        progress: bool = False,
        callback: Callable[[int, TrainState, dict], Any] | None = None,
        mesh: Any = None) -> tuple[TrainState, dict]:
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
            are the averaged ones when the step has ``averaging`` (the usual tree
            under ``flat_params``).
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
        mesh: the step's mesh (the default; a step built with
            ``make_step(..., mesh=...)`` runs on it). On a mesh the data is placed on
            every device once, and each step's batch (``batch_size`` must divide by
            the data axis's size) is split over the data axis: the same numbers as
            one device. In a multi-process run each process passes its own part of
            ``train_data`` and ``eval_data`` (as :func:`jtricks.sharding.shard_batch`
            describes).

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
    _check_args(step, state, train_data, batch_size, epochs, eval_data, eval_fn,
                early_stopping)
    layout = _fit_layout(step, mesh, batch_size)
    # Put the data on the device(s) once, not once per epoch.
    train_data = _place_data(train_data, layout)
    eval_data = _place_data(eval_data, layout)
    on_cpu = _on_cpu(train_data, layout)
    step.check_batch(jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype), train_data),
        where="fit")
    es = early_stopping
    es_state = None if es is None else es.init(
        (state.params, state.model_state, state.averages) if es.restore_best else None)
    if layout is not None and es_state is not None:
        es_state = onto_mesh(es_state, layout.mesh)
    jitted = _jit_epoch if es is None or callback is not None else _jit_epoch_keep

    def run(state, es_state):
        with jsharding.use_mesh(None if layout is None else layout.mesh):
            return jitted(state, es_state, train_data, eval_data, key, step.tx,
                          step.averaging, es, loss_fn=step.adapt(step.loss_fn),
                          eval_fn=None if eval_fn is None else step.adapt(eval_fn),
                          batch_size=int(batch_size),
                          monitor=monitor if es is not None else None, layout=layout,
                          on_cpu=on_cpu)

    history = _History(epochs, progress, watching=es is not None)
    try:
        if callback is None:
            state, es_state, stopped = _run_pipelined(run, state, es_state, epochs, history)
        else:
            state, es_state, stopped = _run_with_callback(run, state, es_state, epochs,
                                                          history, callback)
    finally:
        history.close()
    state, best_epoch = _restore_best(es, es_state, state)
    train, evaluated = history.stacked()
    return state, {"train": train, "eval": evaluated, "epochs": len(history.train),
                   "best_epoch": best_epoch, "stopped": stopped}
