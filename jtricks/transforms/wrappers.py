"""Wrappers that decide when an inner transform runs: skipping non-finite steps and
gradient accumulation (optax's ``MultiSteps``, and ``accumulate`` for its common case).

Each wrapper keeps its inner transform as a pytree child, so the inner
hyperparameters stay data (a wrapped ``adam(1e-3)`` and ``adam(3e-4)`` share one
compilation). Inner transforms may be jtricks or optax transforms.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Struct, Transform, as_transform, is_schedule, static_field

__all__ = [
    "SkipNonfiniteState",
    "SkipNonfinite",
    "skip_nonfinite",
    "MultiStepsState",
    "AccumulateState",
    "ShouldSkipUpdateFunction",
    "SkipRule",
    "MultiSteps",
    "accumulate",
]


# --- skip_nonfinite -----------------------------------------------------------------


class SkipNonfiniteState(NamedTuple):
    """State of :func:`skip_nonfinite`.

    Attributes:
        notfinite_count: int32, consecutive non-finite updates (0 after a finite one).
        last_finite: bool, whether the last update was finite.
        total_notfinite: int32, non-finite updates since ``init``.
        inner_state: the inner transform's state (untouched by skipped updates).
    """

    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: Any


def _all_finite(tree: Any) -> jax.Array:
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return reduce(jnp.logical_and, flags, jnp.asarray(True))


class SkipNonfinite(Transform):
    """Skips updates that hold a NaN or an inf; see :func:`skip_nonfinite`."""

    inner: Transform
    max_consecutive: Any = None

    def init(self, params):
        # A fresh buffer per field: a donated state must not hold one array twice.
        return SkipNonfiniteState(notfinite_count=jtree.scalar(0, jnp.int32, params),
                                  last_finite=jtree.scalar(True, jnp.bool_, params),
                                  total_notfinite=jtree.scalar(0, jnp.int32, params),
                                  inner_state=self.inner.init(params))

    def update(self, updates, state, params=None, **extra):
        finite = _all_finite(updates)
        bad = ~finite
        consecutive = jnp.where(finite, 0, jtree.increment(state.notfinite_count))
        apply = finite
        if self.max_consecutive is not None:
            apply = finite | (consecutive > self.max_consecutive)
        new, inner_state = self.inner.update(updates, state.inner_state, params, **extra)
        # Selecting (rather than lax.cond) keeps one straight-line program that XLA
        # fuses; a skipped step returns the old inner state bit for bit.
        new = jax.tree.map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), new)
        inner_state = jax.tree.map(lambda n, o: jnp.where(apply, n, o),
                                   inner_state, state.inner_state)
        return new, SkipNonfiniteState(
            notfinite_count=consecutive.astype(jnp.int32),
            last_finite=finite,
            total_notfinite=jnp.where(bad, jtree.increment(state.total_notfinite),
                                      state.total_notfinite),
            inner_state=inner_state,
        )


def skip_nonfinite(tx: Any, max_consecutive: ArrayLike | None = None) -> SkipNonfinite:
    """Skips every update whose incoming gradient holds a NaN or an inf.

    On a non-finite step the output is all zeros and the inner state is left
    exactly as it was; the step is counted in ``notfinite_count`` (consecutive) and
    ``total_notfinite``. A finite step afterwards updates normally. ::

        finite  = all(isfinite(g))
        n_bad   = 0 if finite else n_bad + 1
        apply   = finite or (max_consecutive is not None and n_bad > max_consecutive)
        u, s    = tx.update(g, s) if apply else (zeros, s)

    With ``max_consecutive=n`` the ``(n + 1)``-th consecutive non-finite step is
    applied anyway, as ``optax.apply_if_finite(tx, n)`` does (so the NaN reaches the
    parameters and training visibly fails instead of silently stalling).

    Args:
        tx: the transform to protect (jtricks or optax).
        max_consecutive: ``None`` (the default) skips every non-finite step; an
            integer ``n >= 0`` gives up after ``n`` consecutive skipped steps.

    Example:
        >>> tx = jt.skip_nonfinite(jt.adam(1e-3))
        >>> state.notfinite_count   # after some steps: how many were skipped in a row
    """
    if max_consecutive is not None:
        hp.check_integer("skip_nonfinite", "max_consecutive", max_consecutive,
                         rule="an integer >= 0 or None",
                         fix="None skips every non-finite step.")
    return SkipNonfinite(inner=as_transform(tx, where="skip_nonfinite"),
                         max_consecutive=max_consecutive)


# --- MultiSteps / accumulate --------------------------------------------------------


class MultiStepsState(NamedTuple):
    """State of :class:`MultiSteps` (and :func:`accumulate`), field for field optax's.

    Attributes:
        mini_step: int32, gradients accumulated in the current window (< every_k).
        gradient_step: int32, updates of the inner transform so far.
        inner_opt_state: the inner transform's state.
        acc_grads: the window's running mean (or sum) of the gradients, in
            ``accumulator_dtype`` (fp32 by default, as optax's).
        skip_state: what ``should_skip_update_fn`` returned last (``()`` without one).
    """

    mini_step: jax.Array
    gradient_step: jax.Array
    inner_opt_state: Any
    acc_grads: Any
    skip_state: Any = ()


AccumulateState = MultiStepsState  # the name this state had before MultiSteps existed


class ShouldSkipUpdateFunction(Protocol):
    """The type of ``MultiSteps``' ``should_skip_update_fn`` (optax's protocol)."""

    def __call__(self, updates: Any, gradient_step: ArrayLike,
                 params: Any | None) -> tuple[ArrayLike, Any]:
        """Returns ``(skip, skip_state)``: a boolean scalar (True drops this gradient)
        and any pytree to keep in ``MultiStepsState.skip_state``."""


class SkipRule(Struct):
    """A plain skip function kept static, so the transform holding it stays a pytree
    (a pytree callable such as ``jax.tree_util.Partial`` is kept as it is instead)."""

    fn: Callable = static_field()

    def __call__(self, updates, gradient_step, params):
        return self.fn(updates, gradient_step, params)


def _as_rule(fn: Any) -> Any:
    if fn is None or isinstance(fn, Struct):
        return fn
    if not callable(fn):
        raise TypeError(
            f"MultiSteps: should_skip_update_fn must be None or a function "
            f"(updates, gradient_step, params) -> (skip, skip_state), got "
            f"{type(fn).__name__}: {fn!r}. Use e.g. jt.skip_not_finite."
        )
    # A pytree callable with leaves (jax.tree_util.Partial(rule, max_squared_norm=x))
    # keeps its numbers as data; a plain function would be a non-array leaf.
    leaves = jax.tree.leaves(fn)
    return SkipRule(fn=fn) if len(leaves) == 1 and leaves[0] is fn else fn


def _acc_dtype(dtype: Any, p: Any) -> Any:
    """optax's accumulator dtype for ``p``; complex params keep a complex accumulator
    (casting a complex mean to a real dtype would drop its imaginary part)."""
    own = jnp.result_type(p)
    if dtype is None:
        return own
    if jnp.issubdtype(own, jnp.complexfloating):
        return jnp.promote_types(dtype, own)
    return dtype


class MultiSteps(Transform):
    """optax's ``MultiSteps``: accumulates gradients over several calls and applies
    ``opt`` once per window; see :func:`accumulate` for the rule.

    The constructor is optax's, ``MultiSteps(opt, every_k_schedule, use_grad_mean=True,
    should_skip_update_fn=None, accumulator_dtype=jnp.float32)``, and so are
    ``init``/``update``/``has_updated``/``gradient_transformation()`` and the state.
    Unlike optax's it is a transform pytree: ``opt``'s hyperparameters and an integer
    ``every_k_schedule`` are data (no recompile for a new value, ``vmap`` sweeps).

    ::

        k    = every_k_schedule(gradient_step)          (or the integer itself)
        skip = should_skip_update_fn(g, gradient_step, params)[0]   (False without one)
        a    = a + (g - a) / (mini_step + 1)           (a + g if not use_grad_mean)
        u    = opt(a) on the k-th call of a window, else 0;   a skipped call changes
               nothing but skip_state

    Attributes:
        opt: the transform to apply to the accumulated gradients (jtricks or optax).
        every_k_schedule: gradients per update: an integer >= 1, or a schedule
            ``gradient_step -> k`` (a jtricks schedule or any function).
        use_grad_mean: average the window's gradients (True) or sum them.
        should_skip_update_fn: ``None`` or ``(updates, gradient_step, params) ->
            (skip, skip_state)`` with ``skip`` a boolean scalar, e.g.
            ``jt.skip_not_finite``; a skipped gradient is dropped as if the
            call never happened. A ``jax.tree_util.Partial`` keeps its bound numbers
            as data.
        accumulator_dtype: dtype of ``acc_grads`` (``None``: the params' dtype).

    Example:
        >>> tx = jt.MultiSteps(jt.adam(1e-3), every_k_schedule=4,
        ...                    should_skip_update_fn=jt.skip_not_finite)
        >>> state = tx.init(params)
        >>> updates, state = tx.update(grads, state, params)
        >>> tx.has_updated(state)   # True once every 4 calls
    """

    opt: Any
    every_k_schedule: Any
    use_grad_mean: bool = static_field(default=True)
    should_skip_update_fn: Any = None
    accumulator_dtype: Any = static_field(default=jnp.float32)

    def __post_init__(self):
        # The constructor is optax's, so it validates itself (unflattening under jit
        # bypasses __init__, and tracers are never checked).
        k = self.every_k_schedule
        if not is_schedule(k):
            hp.check_integer("MultiSteps", "every_k_schedule", k, low=1,
                             fix="It is the number of micro-batches per update, e.g. 4, "
                                 "or a schedule gradient_step -> k.")
        dtype = self.accumulator_dtype
        if dtype is not None:
            dtype = jax.dtypes.canonicalize_dtype(dtype)
        object.__setattr__(self, "opt", as_transform(self.opt, where="MultiSteps"))
        object.__setattr__(self, "every_k_schedule", hp.as_hyper(k))
        object.__setattr__(self, "use_grad_mean", bool(self.use_grad_mean))
        object.__setattr__(self, "should_skip_update_fn", _as_rule(self.should_skip_update_fn))
        object.__setattr__(self, "accumulator_dtype", dtype)

    @property
    def inner_opt(self) -> Transform:
        """The wrapped transform (optax's name for it)."""
        return self.opt

    def _skip(self, updates, gradient_step, params):
        if self.should_skip_update_fn is None:
            return jnp.asarray(False), ()
        skip, skip_state = self.should_skip_update_fn(updates, gradient_step, params)
        if jnp.shape(skip) != () or jnp.result_type(skip) != jnp.bool_:
            raise ValueError(
                f"MultiSteps.update: should_skip_update_fn must return a boolean scalar "
                f"first, got dtype {jnp.result_type(skip)} and shape {jnp.shape(skip)}. "
                "Return e.g. (jnp.any(...), info)."
            )
        return skip, skip_state

    def init(self, params):
        hp.check_float_params("MultiSteps", params)
        step = jtree.scalar(0, jnp.int32, params)
        _, skip_state = self._skip(jtree.zeros_like(params), step, params)
        acc = jax.tree.map(
            lambda p: jnp.zeros_like(p, _acc_dtype(self.accumulator_dtype, p)), params)
        return MultiStepsState(mini_step=jtree.scalar(0, jnp.int32, params), gradient_step=step,
                               inner_opt_state=self.opt.init(params), acc_grads=acc,
                               skip_state=skip_state)

    def update(self, updates, state, params=None, **extra):
        n, step = state.mini_step, state.gradient_step
        k = hp.value_at(self.every_k_schedule, step)
        skip, skip_state = self._skip(updates, step, params)
        if self.use_grad_mean:
            fold = lambda g, a: (a + (g - a) / (n + 1)).astype(a.dtype)
        else:
            fold = lambda g, a: (a + g).astype(a.dtype)
        acc = jtree.map_checked(fold, updates, state.acc_grads,
                                names=("updates", "state.acc_grads"), where="MultiSteps.update")
        grads = jax.tree.map(lambda a, g: a.astype(jnp.result_type(g)), acc, updates)
        new, inner_state = self.opt.update(grads, state.inner_opt_state, params, **extra)
        # The inner update runs on every call and is kept only on a window's last one
        # (selects, not lax.cond: the step stays one straight-line program). `>=`
        # rather than optax's `==` also closes a window if k shrinks mid-window.
        emit = (n + 1 >= k) & ~skip
        pick = lambda c, a, b: jnp.where(c, a, b).astype(jnp.result_type(b))
        return (
            jax.tree.map(lambda u: jnp.where(emit, u, jnp.zeros_like(u)), new),
            MultiStepsState(
                mini_step=jnp.where(skip, n, jnp.where(emit, 0, n + 1)).astype(jnp.int32),
                gradient_step=jnp.where(emit, jtree.increment(step), step),
                inner_opt_state=jax.tree.map(lambda a, b: pick(emit, a, b), inner_state,
                                             state.inner_opt_state),
                acc_grads=jax.tree.map(
                    lambda a, old: pick(skip, old, jnp.where(emit, jnp.zeros_like(a), a)),
                    acc, state.acc_grads),
                skip_state=skip_state,
            ),
        )

    def has_updated(self, state: Any) -> jax.Array:
        """Whether the call that returned ``state`` applied an update (optax's test:
        a window just closed, ``mini_step == 0`` after at least one update)."""
        return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def gradient_transformation(self) -> MultiSteps:
        """The transform itself (optax returns an ``(init, update)`` pair; this one
        unpacks as that pair and stays a pytree)."""
        return self

    def hyperparams_at(self, state):
        return {"opt": self.opt.hyperparams_at(state.inner_opt_state),
                "every_k_schedule": hp.value_at(self.every_k_schedule, state.gradient_step)}

    def learning_rate_factors(self, params, state, new_state):
        return self.opt.learning_rate_factors(params, state.inner_opt_state,
                                              new_state.inner_opt_state)


def accumulate(tx: Any, every_k: ArrayLike) -> MultiSteps:
    """Averages gradients over ``every_k`` calls and applies ``tx`` on the last one.

    Calls ``1 .. k-1`` of each window return zero updates; call ``k`` feeds the mean
    of the window's ``k`` gradients to ``tx`` and returns its update, so ``k``
    micro-batches act as one large batch. It is ``jt.MultiSteps(tx, every_k)``, whose
    other options (a schedule of ``k``, a skip rule, sums) are optax's::

        a <- a + (g - a) / (mini_step + 1)
        u  = tx(a) if mini_step == k - 1 else 0

    Args:
        tx: the transform to apply to the averaged gradients (jtricks or optax).
        every_k: gradients per update, an integer >= 1 (or an integer array, e.g. a
            traced one in a sweep); for a schedule use :class:`MultiSteps`.

    Example:
        >>> tx = jt.accumulate(jt.adam(1e-3), every_k=4)   # 4 micro-batches per step
    """
    if is_schedule(every_k):
        raise TypeError(
            f"accumulate: every_k must be an integer >= 1, got the function {every_k!r}. "
            "For a number of micro-batches that changes with the step, use "
            "jt.MultiSteps(tx, every_k_schedule=schedule)."
        )
    hp.check_integer("accumulate", "every_k", every_k, low=1,
                     fix="It is the number of micro-batches per update, e.g. 4.")
    return MultiSteps(as_transform(tx, where="accumulate"), every_k)
