"""A wrapper that records gradient and update norms in the optimizer state.

``jt.record_norms(tx)`` behaves exactly like ``tx`` (same updates, bit for bit) and also
keeps, in its state, the norms of the gradients it received and of the updates it
emitted at the last step. Reading them costs one reduction per leaf inside the
jitted step and no host round-trip; ``jt.diagnostics.report_from_norms`` turns
them into a vanishing/exploding report.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import tree as jtree
from jtricks.base import Transform, as_transform

__all__ = ["NormsState", "RecordNorms", "record_norms"]


class NormsState(NamedTuple):
    """The wrapped transform's state plus the last step's norms (all fp32 scalars).

    Attributes:
        inner_state: the state of the monitored transform.
        grad_norm: global L2 norm of the incoming gradients.
        grad_norms: per-leaf L2 norms of the incoming gradients (a tree of scalars
            with the params' structure).
        update_norm: global L2 norm of the emitted updates.
        update_norms: per-leaf L2 norms of the emitted updates.
    """

    inner_state: Any
    grad_norm: jax.Array
    grad_norms: Any
    update_norm: jax.Array
    update_norms: Any


def _f32(tree: Any) -> Any:
    """The recorded norms are fp32 whatever the params' dtype (a fixed state type)."""
    return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


class RecordNorms(Transform):
    """Runs ``inner`` and records norms; see :func:`record_norms`."""

    inner: Transform

    def init(self, params):
        # Separate buffers for every field: a donated state must not alias itself.
        def zeros():
            return jax.tree.map(lambda _: jtree.scalar(0, jnp.float32, params), params)

        return NormsState(
            inner_state=self.inner.init(params),
            grad_norm=jtree.scalar(0, jnp.float32, params),
            grad_norms=zeros(),
            update_norm=jtree.scalar(0, jnp.float32, params),
            update_norms=zeros(),
        )

    def update(self, updates, state, params=None, **extra):
        if not isinstance(state, NormsState):
            raise ValueError(
                f"record_norms.update: state must be the NormsState returned by this "
                f"wrapper's init(params), got {type(state).__name__}."
            )
        grad_norm, grad_norms = _f32(jtree.norms(updates))
        new, inner_state = self.inner.update(updates, state.inner_state, params, **extra)
        update_norm, update_norms = _f32(jtree.norms(new))
        return new, NormsState(inner_state=inner_state, grad_norm=grad_norm,
                                 grad_norms=grad_norms, update_norm=update_norm,
                                 update_norms=update_norms)


def record_norms(tx: Any) -> RecordNorms:
    """Wraps ``tx`` so its state records gradient and update norms; updates unchanged.

    After each ``update`` the state holds, as fp32 scalars::

        grad_norm    = ||g||_2 over all leaves        grad_norms[i]   = ||g_i||_2
        update_norm  = ||u||_2 over all leaves        update_norms[i] = ||u_i||_2

    where ``g`` is the incoming gradient and ``u = tx(g)`` the emitted update, each
    norm accumulated in fp32 in one pass; a norm whose square overflows fp32 (beyond
    ~1.8e19) is recomputed rescaled, so it stays finite and only a NaN or inf entry
    gives a non-finite norm (see :func:`jtricks.tree.norms`). The
    inner transform is a pytree child, so its hyperparameters stay data (no
    recompilation when they change) and the wrapper is jittable and vmappable.

    Cost: one extra read of the gradients (about what ``clip_by_global_norm`` costs)
    and one of the updates, plus a few scalars of state per leaf.

    Args:
        tx: the transform to monitor (jtricks or optax).

    Example:
        >>> tx = jt.record_norms(jt.adam(1e-3))
        >>> updates, state = tx.update(grads, tx.init(params), params)
        >>> float(state.grad_norm)
        >>> print(jt.diagnostics.report_from_norms(state, params))
    """
    return RecordNorms(inner=as_transform(tx, where="record_norms"))
