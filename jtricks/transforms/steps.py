"""Step-count utilities of optax's: ``apply_every`` and the skip rules of
``MultiSteps`` (``skip_not_finite``, ``skip_large_updates``), which drive
``jt.MultiSteps`` and ``optax.MultiSteps`` alike."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform

__all__ = ["ApplyEvery", "ApplyEveryTransform", "apply_every", "skip_not_finite",
           "skip_large_updates"]


class ApplyEvery(NamedTuple):
    """State of :func:`apply_every` (optax's name): ``count`` int32, calls in the
    current window (0 .. k-1); ``grad_acc``, the window's running sum."""

    count: jax.Array
    grad_acc: Any


class ApplyEveryTransform(Transform):
    """Sums ``k`` updates and emits the sum every ``k``-th call; see :func:`apply_every`."""

    k: Any

    def init(self, params):
        hp.check_float_params("apply_every", params)
        return ApplyEvery(count=jtree.scalar(0, jnp.int32, params),
                          grad_acc=jtree.zeros_like(params))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        c = state.count % self.k
        emit = c == self.k - 1

        def leaf(g, acc):
            acc = (jnp.where(c != 0, acc, jnp.zeros_like(acc)) + g).astype(acc.dtype)
            return jnp.where(emit, acc, jnp.zeros_like(acc)), acc

        out = jtree.map_checked(leaf, updates, state.grad_acc,
                                names=("updates", "state.grad_acc"), where="apply_every.update")
        new, acc = jtree.unzip2(updates, out)
        return new, ApplyEvery(count=(jtree.increment(state.count) % self.k).astype(jnp.int32),
                               grad_acc=acc)


def apply_every(k: ArrayLike = 1) -> ApplyEveryTransform:
    """Sums the updates of ``k`` consecutive calls and applies the sum on the last
    one; the other calls return zeros::

        c   = count mod k
        acc = g if c == 0 else acc + g
        u   = acc if c == k - 1 else 0

    (A sum, not a mean: ``jt.accumulate`` averages and feeds an inner transform.)

    Args:
        k: calls per applied update, an integer >= 1.

    Example:
        >>> tx = jt.chain(jt.sgd(0.1), apply_every(4))
    """
    hp.no_schedule("apply_every", "k", k)
    hp.check_integer("apply_every", "k", k, low=1,
                     fix="It is the number of calls summed into one update, e.g. 4.")
    return ApplyEveryTransform(k=k)


def skip_not_finite(updates: Any, gradient_step: ArrayLike,
                    params: Any | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A skip rule for ``jt.MultiSteps`` (or optax's): skip when any update is NaN or
    inf::

        n    = number of non-finite entries in the updates
        skip = n > 0

    Args:
        updates: the (accumulated) updates.
        gradient_step: unused (the rule's signature is MultiSteps').
        params: unused.

    Returns:
        ``(skip, {"should_skip": skip, "num_not_finite": n})``.

    Example:
        >>> tx = jt.MultiSteps(jt.adam(1e-3), 4, should_skip_update_fn=jt.skip_not_finite)
    """
    del gradient_step, params
    counts = [jnp.sum(~jnp.isfinite(u)) for u in jax.tree.leaves(updates)]
    n = jnp.sum(jnp.asarray(counts))
    skip = n > 0
    return skip, {"should_skip": skip, "num_not_finite": n}


def skip_large_updates(updates: Any, gradient_step: ArrayLike, params: Any | None,
                       max_squared_norm: ArrayLike) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A skip rule for ``jt.MultiSteps`` (or optax's): skip when the squared global
    norm of the updates is not below ``max_squared_norm`` (NaN counts as large)::

        s    = sum(u^2)
        skip = not (s < max_squared_norm)

    Args:
        updates: the (accumulated) updates.
        gradient_step: unused.
        params: unused.
        max_squared_norm: the threshold on ``sum(u^2)``; bind it with
            ``functools.partial`` (a constant), or with ``jax.tree_util.Partial`` to
            keep it data inside ``jt.MultiSteps`` (a new threshold, no recompile).

    Returns:
        ``(skip, {"should_skip": skip, "norm_squared": s})``.

    Example:
        >>> rule = jax.tree_util.Partial(jt.skip_large_updates, max_squared_norm=100.0)
        >>> tx = jt.MultiSteps(jt.adam(1e-3), 4, should_skip_update_fn=rule)
    """
    del gradient_step, params
    s = jnp.sum(jnp.asarray([jnp.sum(u**2) for u in jax.tree.leaves(updates)]))
    skip = ~(s < max_squared_norm)
    return skip, {"should_skip": skip, "norm_squared": s}
