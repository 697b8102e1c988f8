"""L-BFGS: the update multiplied by a limited-memory inverse-Hessian estimate."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field
from jtricks.transforms import linesearch as ls

__all__ = ["ScaleByLBFGSState", "ScaleByLBFGS", "scale_by_lbfgs"]


class ScaleByLBFGSState(NamedTuple):
    """optax's ``ScaleByLBFGSState``.

    Attributes:
        count: int32, the number of updates so far.
        params: the params of the previous update.
        updates: the incoming updates (gradients) of the previous update.
        diff_params_memory: the last ``memory_size`` params differences, stacked on
            a leading axis of each leaf (a ring buffer).
        diff_updates_memory: the matching differences of updates, stacked alike.
        weights_memory: ``1 / <du, dw>`` for each stored pair, shape (memory_size,).
    """

    count: jax.Array
    params: Any
    updates: Any
    diff_params_memory: Any
    diff_updates_memory: Any
    weights_memory: jax.Array


def _at(memory: Any, i: jax.Array) -> Any:
    return jax.tree.map(lambda x: x[i], memory)


def _two_loop(g: Any, dws: Any, dus: Any, rhos: jax.Array, gamma: Any,
              oldest: jax.Array) -> Any:
    """``P g`` by the two-loop recursion (Nocedal & Wright, Algorithm 7.4).

    The ring buffer's slots are visited from the newest pair to the oldest (slot
    ``oldest``), then back; an empty slot has ``rho = 0`` and changes nothing.
    """
    m = rhos.shape[0]
    order = (oldest + jnp.arange(m)) % m

    def backward(q, i):
        alpha = rhos[i] * ls.real_vdot(_at(dws, i), q)
        return ls.cast_like(ls.add_scale(q, -alpha, _at(dus, i)), q), alpha

    q, alphas = jax.lax.scan(backward, g, order, reverse=True)
    r = ls.scale(gamma, q)

    def forward(r, i_alpha):
        i, alpha = i_alpha
        beta = rhos[i] * ls.real_vdot(_at(dus, i), r)
        return ls.cast_like(ls.add_scale(r, alpha - beta, _at(dws, i)), r), None

    r, _ = jax.lax.scan(forward, r, (order, alphas))
    return r


class ScaleByLBFGS(Transform):
    """The L-BFGS direction; see :func:`scale_by_lbfgs`."""

    memory_size: int = static_field(default=10)
    scale_init_precond: bool = static_field(default=True)

    def init(self, params):
        hp.check_float_params("scale_by_lbfgs", params)
        m = self.memory_size

        def stacked(p):
            return jnp.zeros((m, *jnp.shape(p)), jnp.result_type(p))

        # A fresh buffer for every field (a donated state must not hold one twice).
        return ScaleByLBFGSState(
            count=jnp.zeros([], jnp.int32), params=jtree.zeros_like(params),
            updates=jtree.zeros_like(params),
            diff_params_memory=jax.tree.map(stacked, params),
            diff_updates_memory=jax.tree.map(stacked, params),
            weights_memory=jnp.zeros(m))

    def _identity_scale(self, dw: Any, du: Any, updates: Any, first: jax.Array) -> Any:
        """gamma: <du, dw> / |du|^2 after the first step, min(1, 1 / |g|) on it."""
        if not self.scale_init_precond:
            return 1.0
        den = ls.sq_norm(du)
        gamma = jnp.where(den > 0.0, ls.real_vdot(du, dw) / den, 1.0)
        g_norm = jnp.sqrt(ls.sq_norm(jax.lax.stop_gradient(updates)))
        return jnp.where(first, jnp.minimum(1.0, 1.0 / g_norm), gamma)

    def update(self, updates, state, params=None, **extra):
        del extra
        hp.require_params("scale_by_lbfgs", params,
                          "L-BFGS stores the differences of successive params")
        m, count = self.memory_size, state.count
        oldest, slot = count % m, (count - 1) % m
        first = count == 0
        # The memory first takes in the pair (dw, du) of the step just made, so a
        # line search after this transform has accepted it already.
        diffs = jtree.map_checked(lambda p, q, g, h: (p - q, g - h), params, state.params,
                                  updates, state.updates,
                                  names=("params", "state.params", "updates", "state.updates"),
                                  where="scale_by_lbfgs.update")
        dw, du = jtree.unzip2(params, diffs)
        curvature = ls.real_vdot(du, dw)
        rho = jnp.where(curvature == 0.0, 0.0, 1.0 / curvature)
        # There is no previous step to difference on the first update.
        dw, du, rho = jax.tree.map(lambda x: jnp.where(first, jnp.zeros_like(x), x),
                                   (dw, du, rho))
        dws, dus, rhos = jax.tree.map(lambda buf, x: buf.at[slot].set(x),
                                      (state.diff_params_memory, state.diff_updates_memory,
                                       state.weights_memory), (dw, du, rho))
        gamma = self._identity_scale(dw, du, updates, first)
        direction = _two_loop(updates, dws, dus, rhos, gamma, oldest)
        return direction, ScaleByLBFGSState(
            count=jtree.increment(count), params=params, updates=updates,
            diff_params_memory=dws, diff_updates_memory=dus, weights_memory=rhos)


def scale_by_lbfgs(memory_size: int = 10, scale_init_precond: bool = True) -> ScaleByLBFGS:
    """Multiplies the update by the L-BFGS inverse-Hessian estimate (optax's
    ``scale_by_lbfgs``; Liu & Nocedal, 1989; Nocedal & Wright, 1999, Alg. 7.4-7.5).

    With ``w`` the params, ``g`` the incoming update (the gradient) and the last
    ``m = memory_size`` pairs ``dw_j = w_{j+1} - w_j``, ``du_j = g_{j+1} - g_j``::

        rho_j = 1 / <du_j, dw_j>                     (0 where <du_j, dw_j> = 0)
        P_k   = V_j' P V_j + rho_j dw_j dw_j'   over j = k-m .. k-1, from
        P     = gamma_k I,   V_j = I - rho_j du_j dw_j'
        gamma_k = <du, dw> / <du, du> of the newest pair  (scale_init_precond)
                = min(1, 1 / |g_0|)                        on the first update
                = 1                                        (scale_init_precond=False)
        u <- P_k g                                   (the two-loop recursion)

    The memory takes in the newest pair before the product, so the transform can be
    followed by a line search that picks the step along ``-u`` (see :func:`lbfgs`).
    The update needs ``params``.

    Args:
        memory_size: the number of pairs kept, an integer >= 1 (static: it sets the
            state's shapes).
        scale_init_precond: start the product from ``gamma_k I`` rather than ``I``
            (static).

    Example:
        >>> tx = jt.chain(jt.scale_by_lbfgs(5), jt.scale(-0.1))
        >>> state = tx.init(params)
        >>> updates, state = tx.update(grads, state, params)
    """
    where = "scale_by_lbfgs"
    if isinstance(memory_size, jax.core.Tracer) or isinstance(memory_size, bool):
        raise TypeError(f"{hp.reporter(where)}: memory_size must be a Python int (it sets "
                        f"the state's shapes), got {memory_size!r}.")
    hp.no_schedule(where, "memory_size", memory_size)
    hp.check_integer(where, "memory_size", memory_size, low=1,
                     fix="memory_size counts the stored (dw, du) pairs; 10 is usual.")
    return ScaleByLBFGS(memory_size=int(memory_size),
                        scale_init_precond=bool(scale_init_precond))
