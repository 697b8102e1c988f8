"""One optimizer step: the loss signature, its checks, and the jitted, donated step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import hyperparams as hp
from jtricks import sharding as jsharding
from jtricks import tree as jtree
from jtricks.base import Transform, apply_updates, as_transform
from jtricks.train.placement import Layout, build_layout, place_state
from jtricks.train.state import SHAPE_DEPENDENT, TrainState, flat_opt_init, on_tree
from jtricks.transforms.flatten import FlatParams, flat_params

__all__ = ["RESERVED_METRICS", "SHAPE_DEPENDENT", "Step", "make_step", "step_body"]

PyTree = Any

RESERVED_METRICS = ("loss", "grad_norm", "learning_rate", "finite")
"""Metric names make_step reports itself (``learning_rate/<group>`` too)."""


def _loss_parts(out: Any) -> tuple[Any, PyTree, dict]:
    """``(loss, model_state, metrics)`` from ``loss_fn``'s output, checked at trace time."""
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple)
            and len(out[1]) == 2):
        raise TypeError(
            "make_step: loss_fn must return (loss, (model_state, metrics)), got "
            f"{type(out).__name__}: {out!r}. For a model without state return the "
            "model_state it received; for no metrics return {}."
        )
    loss, (model_state, metrics) = out
    if jnp.shape(loss) != ():
        raise ValueError(
            f"make_step: loss_fn must return a scalar loss, got an array of shape "
            f"{jnp.shape(loss)} (dtype {jnp.result_type(loss)}). Reduce it over the "
            "batch, e.g. jnp.mean(per_example_losses)."
        )
    metrics = {} if metrics is None else metrics
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"make_step: the metrics returned by loss_fn must be a dict of scalars, got "
            f"{type(metrics).__name__}. Return {{}} for no metrics."
        )
    clash = sorted(k for k in metrics if k in RESERVED_METRICS
                   or str(k).startswith("learning_rate/"))
    if clash:
        raise ValueError(
            f"make_step: loss_fn metrics use reserved names {clash}; make_step reports "
            f"{list(RESERVED_METRICS)} itself. Rename them (e.g. 'data_loss')."
        )
    return loss, model_state, dict(metrics)


def _check_model_state(old: PyTree, new: PyTree) -> None:
    """``loss_fn`` must return the model state it received, same shapes and dtypes."""
    if jax.tree.structure(old) != jax.tree.structure(new):
        raise ValueError(
            "make_step: loss_fn returned a model_state with a different structure from "
            f"the one it received: {jtree.first_difference(old, new)}."
            " Return the same tree with updated values."
        )
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(old)[0],
                            jax.tree.leaves(new)):
        if jnp.shape(a) != jnp.shape(b) or jnp.result_type(a) != jnp.result_type(b):
            raise ValueError(
                f"make_step: loss_fn changed model_state at {jtree.keystr(path)} from "
                f"{jnp.shape(a)} {jnp.result_type(a)} to {jnp.shape(b)} "
                f"{jnp.result_type(b)}. Keep each leaf's shape and dtype (cast back with "
                ".astype)."
            )


SMALL_LEAF = 4096
"""Gradient leaves of at most this many elements are gathered for the norm metric."""


def _grad_norm(grads: PyTree, on_mesh: bool = False) -> jax.Array:
    """The overflow-safe global L2 norm of ``grads`` in a few reductions.

    A reduction per leaf is a kernel launch per leaf: on a model of 400 small arrays
    that and the overflow fallback's ``cond`` over every leaf made the step ~10%
    slower than without the metric (2-core CPU). Gathered into one vector per dtype
    (one copy kernel), the small leaves cost one reduction and the ``cond`` sees a
    few operands. Large leaves keep their own reduction (gathering them would copy
    the gradient), and so does every leaf on a mesh (a gather would replicate the
    sharded gradient)."""
    leaves = jax.tree.leaves(grads)
    if on_mesh or sum(1 for x in leaves if np.size(x) <= SMALL_LEAF) < 2:
        return jtree.global_norm(leaves, overflow_safe=True)
    small: dict[Any, list] = {}
    parts = []
    for x in leaves:
        if np.size(x) <= SMALL_LEAF:
            dtype = jtree.acc_dtype(x)
            small.setdefault(dtype, []).append(jnp.ravel(x).astype(dtype))
        else:
            parts.append(x)
    parts += [v[0] if len(v) == 1 else jnp.concatenate(v) for v in small.values()]
    return jtree.global_norm(parts, overflow_safe=True)


def step_body(state: TrainState, batch: PyTree, tx: Transform, averaging: Any,
              loss_fn: Callable, layout: Layout | None = None) -> tuple[TrainState, dict]:
    """One optimizer step as a pure function (jitted, scanned or vmapped by callers).

    ``layout`` (static) says how a step on a mesh constrains the params the loss
    sees (gathered under FSDP) and the gradients (split like the params)."""
    key = jax.random.fold_in(state.key, state.step)

    def objective(params):
        if layout is not None:
            params = layout.for_loss(params)
        loss, model_state, metrics = _loss_parts(
            loss_fn(params, state.model_state, batch, key))
        _check_model_state(state.model_state, model_state)
        return loss, (model_state, metrics)

    (loss, (model_state, aux)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    if layout is not None:
        grads = layout.like_params(grads)
    # `value` feeds reduce_on_plateau; transforms that do not use it ignore it.
    if layout is None:
        updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
    else:
        updates, opt_state = layout.update(tx, grads, state.opt_state, state.params,
                                           value=loss)
    params = apply_updates(state.params, updates)
    if layout is not None:  # ZeRO-1: updates come split like the state; params do not
        params = layout.like_params(params)
    grad_norm = _grad_norm(grads, on_mesh=layout is not None)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A non-finite step must not poison the running statistics either (the params
    # are protected by skip_nonfinite when the optimizer is wrapped in it).
    model_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                               model_state, state.model_state)
    averages = state.averages
    if averaging is not None:
        averages = averaging.update(params, averages)
    metrics = {**aux, "loss": loss, "grad_norm": grad_norm, "finite": finite,
               **hp.learning_rates(tx, state.params, state.opt_state, opt_state)}
    return TrainState(step=jtree.increment(state.step), params=params, opt_state=opt_state,
                      model_state=model_state, key=state.key, averages=averages), metrics


_jit_step = jax.jit(step_body, static_argnames=("loss_fn", "layout"), donate_argnums=(0,))


def _flat_for(params: PyTree, pad_to: int) -> FlatParams:
    """``params`` as flat vectors padded to a multiple of ``pad_to`` (re-padded when
    given flat with another padding)."""
    if isinstance(params, FlatParams):
        if all(v.shape[0] % pad_to == 0 for v in params.vectors.values()):
            return params
        params = params.tree()
    return flat_params(params, pad_to=pad_to)


def _leaf_spec(x: Any) -> tuple:
    # Arrays answer .shape/.dtype directly; jnp.result_type costs microseconds a call,
    # which a batch of a thousand arrays would pay on every step.
    if isinstance(x, jax.Array):
        return x.shape, x.dtype
    return np.shape(x), jnp.result_type(x)


def _batch_spec(batch: PyTree) -> tuple:
    leaves, treedef = jax.tree.flatten(batch)
    return treedef, tuple(map(_leaf_spec, leaves))


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


def _check_key(key: Any) -> jax.Array:
    key = jnp.asarray(key) if not hasattr(key, "dtype") else key
    if not (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
            or (key.dtype == jnp.uint32 and key.shape[-1:] == (2,))):
        raise TypeError(
            f"make_step.init: key must be a PRNG key (jax.random.key(seed)), got "
            f"{key.dtype} of shape {key.shape}."
        )
    return key


class Step:
    """A jitted training step; build it with :func:`make_step`.

    ``step(state, batch) -> (state, metrics)``; the input state is donated (its
    buffers are reused), so keep only the returned one. With a ``mesh`` the step is
    data-parallel: see :func:`make_step`.
    """

    def __init__(self, loss_fn: Callable, tx: Any, averaging: Any = None, *,
                 mesh: Any = None, data_axis: str = "data", zero: bool = False,
                 param_sharding: Any = None, flat_params: bool = False):
        if not callable(loss_fn):
            raise TypeError(
                f"make_step: loss_fn must be a function (params, model_state, batch, key) "
                f"-> (loss, (model_state, metrics)), got {type(loss_fn).__name__}."
            )
        if averaging is not None and not all(
                callable(getattr(averaging, m, None)) for m in ("init", "update", "value")):
            raise TypeError(
                f"make_step: averaging must have init/update/value methods (e.g. "
                f"jt.averaging.ema(0.999)), got {type(averaging).__name__}."
            )
        self.loss_fn = loss_fn
        self.tx = as_transform(tx, where="make_step")
        self.averaging = averaging
        self._first_batch: tuple | None = None
        self.mesh, self.data_axis, self.zero = mesh, data_axis, bool(zero)
        self.param_sharding = param_sharding
        self.layout: Layout | None = None
        self._jit: Callable | None = None
        if mesh is None and (zero or param_sharding is not None):
            raise ValueError(
                f"make_step: zero={zero!r} / param_sharding={param_sharding!r} need a "
                "mesh; pass mesh=jax.make_mesh((n,), ('data',))."
            )
        if mesh is not None:
            jsharding.check_axis(mesh, data_axis, "make_step")
        if not isinstance(flat_params, bool):
            raise TypeError(f"make_step: flat_params must be True or False, got "
                            f"{flat_params!r}.")
        if flat_params and param_sharding is not None and not isinstance(param_sharding,
                                                                         str):
            raise ValueError(
                "make_step: flat_params=True cannot take param_sharding as a tree of "
                "PartitionSpecs (tensor parallelism): the flat vectors are no longer "
                "shaped like the parameters those specs split. Keep flat_params=False "
                "for tensor parallelism, or use param_sharding=None (data parallel) or "
                "'fsdp' with flat_params=True."
            )
        self.flat_params = flat_params

    def init(self, params: PyTree, key: jax.Array, model_state: PyTree = None) -> TrainState:
        """A fresh :class:`TrainState` at step 0 for ``params`` and the base ``key``.

        On a mesh, the params are placed as ``param_sharding`` says, the optimizer
        state follows them (ZeRO-1 with ``zero``) and the step, key and
        ``model_state`` are replicated. Every leaf is a copy: the caller's arrays
        stay valid after the state is donated to a step. With ``flat_params`` the
        params (and the optimizer state and averages built from them) are stored as
        :func:`jtricks.flat_params` vectors (on a mesh padded to a multiple of the
        data axis size); a transform that needs the tree is refused here.
        """
        if self.mesh is not None:
            if self.flat_params:  # padded so each vector splits over the data axis
                params = _flat_for(params, int(self.mesh.shape[self.data_axis]))
            self.layout = build_layout(params, self.mesh, self.data_axis,
                                       self.param_sharding)
            self._jit = None
            return place_state(self.layout, self.tx, self.averaging, self.zero, params,
                               _check_key(key), model_state)
        if self.flat_params and not isinstance(params, FlatParams):
            params = flat_params(params)
        state = TrainState(
            step=jnp.zeros([], jnp.int32),
            params=params,
            opt_state=flat_opt_init(self.tx, params) if self.flat_params
            else self.tx.init(params),
            model_state=model_state,
            key=_check_key(key),
            averages=None if self.averaging is None else self.averaging.init(params),
        )
        # The step donates the state's buffers: give it buffers of its own, so the
        # caller's params stay valid and no buffer appears twice (an average or an
        # optimizer state initialised *as* the params would alias them).
        return jax.tree.map(lambda x: jnp.array(x, copy=True), state)

    def apply(self, state: TrainState, batch: PyTree) -> tuple[TrainState, dict]:
        """The step as a pure, un-jitted function (for ``lax.scan``/``vmap``)."""
        return step_body(state, batch, self.tx, self.averaging, self.adapt(self.loss_fn))

    def adapt(self, fn: Callable) -> Callable:
        """``fn(params, ...)``, written for the params' tree, made to take the state's
        params: ``fn`` itself, or with ``flat_params`` ``fn(flat.tree(), ...)`` (on a
        mesh the tree is cut from the vectors gathered whole)."""
        return on_tree(fn, self.layout) if self.flat_params else fn

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
        if self.flat_params and not isinstance(state.params, FlatParams):
            raise TypeError(
                "step: this step was built with flat_params=True, but state.params is a "
                f"{type(state.params).__name__}; build the state with this step's init."
            )
        if self.mesh is None:
            self.check_batch(batch)
            return _jit_step(state, batch, self.tx, self.averaging,
                             loss_fn=self.adapt(self.loss_fn))
        if self.layout is None:
            raise ValueError("step: a step on a mesh needs its state from step.init.")
        batch = jsharding.shard_batch(batch, self.mesh, self.data_axis)
        self.check_batch(batch)
        with jsharding.use_mesh(self.mesh):
            return self._compiled(state)(state, batch, self.tx, self.averaging,
                                         loss_fn=self.adapt(self.loss_fn),
                                         layout=self.layout)

    def _compiled(self, state: TrainState) -> Callable:
        """The step jitted with the state's shardings as its outputs' (built once)."""
        if self._jit is None:
            shardings = jax.tree.map(lambda x: x.sharding, state)
            rep = jsharding.replicated(self.mesh)
            self._jit = jax.jit(step_body, static_argnames=("loss_fn", "layout"),
                                donate_argnums=(0,), out_shardings=(shardings, rep))
        return self._jit

    def eval_params(self, state: TrainState) -> PyTree:
        """The params to evaluate: the average when ``averaging`` is set, else ``params``;
        with ``flat_params`` as their usual tree (what ``loss_fn`` sees)."""
        if self.averaging is None:
            params = state.params
        else:
            params = self.averaging.value(state.averages, like=state.params)
        return params.tree() if self.flat_params else params


def make_step(loss_fn: Callable, tx: Any, *, averaging: Any = None, mesh: Any = None,
              data_axis: str = "data", zero: bool = False,
              param_sharding: Any = None, flat_params: bool = False) -> Step:
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

    The metrics are ``loss``, ``grad_norm`` (global L2 norm of the gradient,
    overflow-safe: finite for a finite gradient whose squares overflow fp32),
    ``finite`` (bool), the learning rate the update applied (see
    :func:`jtricks.hyperparams.learning_rates`: ``learning_rate`` when every
    parameter gets the same factors, a schedule evaluated at its count times the
    scale of any ``reduce_on_plateau`` over the same parameters;
    ``learning_rate/<group>`` per group under a ``partition`` with two rates or a
    masked plateau; nothing for a rate hidden inside an optax transform other than
    ``optax.inject_hyperparams``) and the ``metrics`` dict returned by ``loss_fn``.
    With ``jt.accumulate`` the averager sees every micro-step's params
    (unchanged between updates), which only reweights the average.

    The optimizer's hyperparameters are passed to the compiled step as data, so
    steps built from ``jt.adam(1e-3)`` and ``jt.adam(3e-4)`` share one compilation.

    **On many devices** (``mesh=``): ``step.init`` places the params (replicated by
    default; ``param_sharding="fsdp"`` splits each over ``data_axis`` along its
    largest dimension divisible by the axis size, and the loss sees them gathered;
    or a tree of ``PartitionSpec`` for tensor parallelism), the optimizer state
    following them (``zero=True``: ZeRO-1, also split over ``data_axis``; see
    :func:`jtricks.sharding.state_shardings`) and the step, key and ``model_state``
    replicated. ``step(state, batch)`` splits the batch over ``data_axis``
    (:func:`jtricks.sharding.shard_batch`; in a multi-process run each process
    passes its own part, process ``i`` its slice in the mesh's device order) and
    runs one SPMD program: the loss, gradient norms, clipping and batch statistics
    are those of the global batch, the same numbers as one device. Outputs keep the
    state's shardings, so step 2 reuses step 1's compilation.

    **Flat parameters** (``flat_params=True``): ``state.params`` is a
    :class:`~jtricks.FlatParams` (one vector per dtype; ``state.params.tree()`` is the
    usual tree), and so are the gradients, the optimizer state's params-shaped parts
    and the averages: a step moves a few arrays instead of one per leaf, and the
    optimizer makes one pass over each vector. ``loss_fn`` (and ``fit``'s ``eval_fn``)
    still receive the tree, and ``step.eval_params(state)`` returns it. Transforms
    that look at leaf shapes or at the tree's structure are refused by ``step.init``
    (see ``SHAPE_DEPENDENT``). With ``mesh`` the vectors are zero-padded to a multiple
    of the data axis size (``jt.flat_params(params, pad_to=n)``; ``tree()`` leaves
    the padding out, and it stays zero) and placed like any array: replicated (one
    gradient all-reduce per dtype), the optimizer state split with ``zero``, the
    params split too with ``"fsdp"``; a ``PartitionSpec`` tree is refused.

    Args:
        loss_fn: ``(params, model_state, batch, key) -> (loss, (model_state,
            metrics))`` with a scalar ``loss``.
        tx: a jtricks transform or an optax ``GradientTransformation``.
        averaging: optional parameter averager, e.g. ``jt.averaging.ema(0.999)``.
        mesh: a ``jax.sharding.Mesh`` for a data-parallel step, or ``None``.
        data_axis: the mesh axis the batch (and ZeRO/FSDP state) is split over.
        zero: ZeRO-1: split the optimizer state over ``data_axis`` too.
        param_sharding: ``None`` (replicated), ``"fsdp"``, or a tree of
            ``PartitionSpec`` matching the params (not with ``flat_params``).
        flat_params: store the params as :func:`jtricks.flat_params` (one vector
            per dtype), for models of many small arrays; see above.

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
    return Step(loss_fn, tx, averaging, mesh=mesh, data_axis=data_axis, zero=zero,
                param_sharding=param_sharding, flat_params=flat_params)
