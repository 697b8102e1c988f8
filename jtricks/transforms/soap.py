"""SOAP: Adam run in the eigenbasis of Shampoo's Kronecker factors (Vyas et al., 2024).

For a matrix ``G`` SOAP keeps Shampoo's two factors ``L = EMA(G G^T)`` and
``R = EMA(G^T G)``, their eigenbases ``Q_L`` and ``Q_R``, and runs Adam on the rotated
gradient ``Q_L^T G Q_R``. A tensor of any rank keeps one factor per axis; axes longer
than ``max_precond_dim`` (and every axis of a 0-d or 1-d leaf) are not rotated.
"""

from __future__ import annotations

import string
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field

__all__ = ["ScaleBySoapState", "ScaleBySoap", "scale_by_soap", "rotated_axes"]

# Rotations and factor statistics are small matrix products whose rounding would
# otherwise depend on the backend's default matmul precision (bf16 passes on TPU).
_HIGHEST = jax.lax.Precision.HIGHEST
_LETTERS = string.ascii_lowercase


class ScaleBySoapState(NamedTuple):
    """SOAP's state.

    Attributes:
        count: int32, the number of updates so far (the first one only seeds the
            factors, so Adam's step number is ``count``, not ``count + 1``).
        mu: Adam's first moment, in the original coordinates (params-shaped).
        nu: Adam's second moment, in the rotated coordinates (params-shaped).
        gg: per leaf, a tuple of the Kronecker factors ``EMA(G_(i) G_(i)^T)`` of its
            rotated axes (see :func:`rotated_axes`), in at least fp32.
        q: per leaf, a tuple of the eigenbases of those factors (columns ordered by
            decreasing eigenvalue), in at least fp32.
    """

    count: jax.Array
    mu: Any
    nu: Any
    gg: Any
    q: Any


def rotated_axes(shape: tuple[int, ...], max_precond_dim: int) -> tuple[int, ...]:
    """The axes SOAP rotates for a leaf of ``shape``: none for 0-d and 1-d leaves,
    otherwise every axis of length at most ``max_precond_dim``."""
    if len(shape) < 2:
        return ()
    return tuple(i for i, d in enumerate(shape) if d <= max_precond_dim)


def rotate(x: jax.Array, qs: tuple, axes: tuple[int, ...], back: bool = False) -> jax.Array:
    """``x`` with each axis ``i`` in ``axes`` multiplied by its basis: into the
    eigenbasis (``Q^T`` along that axis) or, with ``back``, out of it (``Q``)."""
    if not axes:
        return x
    letters = _LETTERS[:x.ndim]
    out, specs = list(letters), []
    for i in axes:
        new = letters[i].upper()
        specs.append(new + letters[i] if back else letters[i] + new)
        out[i] = new
    return jnp.einsum(f"{letters},{','.join(specs)}->{''.join(out)}", x, *qs,
                      precision=_HIGHEST)


def axis_outer(g: jax.Array, i: int) -> jax.Array:
    """``G_(i) G_(i)^T``: ``g``'s mode-``i`` unfolding times its transpose (d_i x d_i)."""
    letters = _LETTERS[:g.ndim]
    other = letters.replace(letters[i], letters[i].upper())
    return jnp.einsum(f"{letters},{other}->{letters[i]}{letters[i].upper()}", g, g,
                      precision=_HIGHEST)


def _eigenbasis(factor: jax.Array) -> jax.Array:
    """Eigenvectors of a symmetric factor, by decreasing eigenvalue."""
    return jnp.linalg.eigh(factor)[1][:, ::-1]


def _power_step(factor: jax.Array, q: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One power-iteration step with QR: the columns of ``q`` sorted by their Rayleigh
    quotients (decreasing), then ``Q <- qr(factor @ Q)``. Returns the new basis and
    the sort order (the second moment's axis is permuted alike)."""
    fq = jnp.matmul(factor, q, precision=_HIGHEST)
    order = jnp.argsort(-jnp.sum(q * fq, axis=0))
    return jnp.linalg.qr(fq[:, order])[0], order


class ScaleBySoap(Transform):
    """SOAP's preconditioned direction; see :func:`scale_by_soap`."""

    b1: Any
    b2: Any
    shampoo_beta: Any
    eps: Any
    precondition_frequency: Any
    max_precond_dim: int = static_field(default=10000)

    def init(self, params):
        hp.check_real_params("scale_by_soap", params, "SOAP's eigenbases are real")

        def factors(p, make):
            acc = jtree.acc_dtype(p)
            return tuple(make(p.shape[i], acc) for i in rotated_axes(p.shape,
                                                                     self.max_precond_dim))

        gg = jax.tree.map(lambda p: factors(p, lambda d, t: jnp.zeros((d, d), t)), params)
        q = jax.tree.map(lambda p: factors(p, lambda d, t: jnp.eye(d, dtype=t)), params)
        return ScaleBySoapState(
            count=jtree.scalar(0, jnp.int32, params),
            mu=jtree.zeros_like(params), nu=jtree.zeros_like(params),
            gg=jtree.replicated_like(params, gg), q=jtree.replicated_like(params, q))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        count = state.count
        b1, b2, eps = (hp.value_at(v, count) for v in (self.b1, self.b2, self.eps))
        beta = b2 if self.shampoo_beta is None else hp.value_at(self.shampoo_beta, count)
        max_dim = self.max_precond_dim
        first = count == 0  # the first update only seeds the factors (as the paper's code)
        t = jnp.maximum(count, 1).astype(jnp.float32)
        step = jnp.sqrt(1 - jnp.asarray(b2, jnp.float32) ** t) / (
            1 - jnp.asarray(b1, jnp.float32) ** t)

        def adam_leaf(g, m_old, v_old, qs):
            axes = rotated_axes(g.shape, max_dim)
            g32 = g.astype(jtree.acc_dtype(g, m_old, v_old))
            m = b1 * m_old + (1 - b1) * g32
            v = b2 * v_old + (1 - b2) * jnp.square(rotate(g32, qs, axes))
            u = rotate(rotate(m, qs, axes) / (jnp.sqrt(v) + eps), qs, axes, back=True)
            u = jnp.where(first, 0, step.astype(u.dtype) * u)
            return (u.astype(g.dtype), jnp.where(first, m_old, m).astype(m_old.dtype),
                    jnp.where(first, v_old, v).astype(v_old.dtype))

        def factor_leaf(g, gg):
            g32 = g.astype(jtree.acc_dtype(g))
            axes = rotated_axes(g.shape, max_dim)
            return tuple((beta * f + (1 - beta) * axis_outer(g32, i)).astype(f.dtype)
                         for f, i in zip(gg, axes))

        where = "scale_by_soap.update"
        out = jtree.map_checked(adam_leaf, updates, state.mu, state.nu, state.q,
                                names=("updates", "state.mu", "state.nu", "state.q"),
                                where=where)
        u, mu, nu = jtree.unzip3(updates, out)
        gg = jtree.map_checked(factor_leaf, updates, state.gg,
                               names=("updates", "state.gg"), where=where)
        q, nu = self._refresh(count, updates, gg, state.q, nu)
        return u, ScaleBySoapState(count=jtree.increment(count), mu=mu, nu=nu, gg=gg, q=q)

    def _refresh(self, count, updates, gg, q, nu):
        """New eigenbases: by ``eigh`` at the first update, by one power step every
        ``precondition_frequency`` Adam steps after, else unchanged (one ``lax.switch``
        for all leaves, so no Python branch reads the traced count)."""
        treedef = jax.tree.structure(updates)
        shapes = [jnp.shape(g) for g in jax.tree.leaves(updates)]
        axes = [rotated_axes(s, self.max_precond_dim) for s in shapes]
        if not any(axes):
            return q, nu

        def seed(ops):
            gg_l, _, nu_l = ops
            return [tuple(_eigenbasis(f) for f in fs) for fs in gg_l], nu_l

        def power(ops):
            gg_l, q_l, nu_l = ops
            new_q, new_nu = [], []
            for fs, qs, v, ax in zip(gg_l, q_l, nu_l, axes):
                leaf_q = []
                for f, old, i in zip(fs, qs, ax):
                    basis, order = _power_step(f, old)
                    leaf_q.append(basis.astype(old.dtype))
                    v = jnp.take(v, order, axis=i)  # nu follows its sorted basis
                new_q.append(tuple(leaf_q))
                new_nu.append(v)
            return new_q, new_nu

        def keep(ops):
            return ops[1], ops[2]

        freq = self.precondition_frequency
        index = jnp.where(count == 0, 0, jnp.where(count % freq == 0, 1, 2))
        ops = (treedef.flatten_up_to(gg), treedef.flatten_up_to(q),
               treedef.flatten_up_to(nu))
        new_q, new_nu = jax.lax.switch(index, (seed, power, keep), ops)
        return treedef.unflatten(new_q), treedef.unflatten(new_nu)


def scale_by_soap(b1: Any = 0.95, b2: Any = 0.95, shampoo_beta: Any = None,
                  eps: Any = 1e-8, precondition_frequency: Any = 10,
                  max_precond_dim: int = 10000) -> ScaleBySoap:
    """SOAP's direction: Adam in the eigenbasis of Shampoo's factors (Vyas et al., 2024).

    For a matrix gradient ``G`` at Adam step ``t`` (every rank alike, one factor and
    one basis per rotated axis; see :func:`rotated_axes`)::

        G'  = Q_L^T G Q_R                           (rotate)
        M  <- b1 * M + (1 - b1) * G                 (first moment, original space)
        V  <- b2 * V + (1 - b2) * G'**2             (second moment, rotated space)
        u   = sqrt(1 - b2**t) / (1 - b1**t) * Q_L ((Q_L^T M Q_R) / (sqrt(V) + eps)) Q_R^T
        L  <- beta * L + (1 - beta) * G G^T;   R <- beta * R + (1 - beta) * G^T G
        every precondition_frequency steps (t % f == 0), one power step:
            sort the columns of Q_L by diag(Q_L^T L Q_L), decreasing (V's rows alike)
            Q_L <- qr(L Q_L)                          (Q_R alike)

    ``beta`` is ``shampoo_beta`` (``b2`` when ``None``). The first update only seeds
    the factors and takes ``Q_L, Q_R`` from ``eigh`` (its output is zero, so no
    gradient is ever rotated by a basis built from itself); Adam's step count ``t``
    starts at the second. Unrotated leaves and axes take Adam's step in the same
    form. This is the paper's Algorithm 3 with its reference implementation's
    choices (bias correction folded into the step size, the sort before QR, the
    skipped first step); factors and bases are kept in at least fp32.

    Args:
        b1: Adam's first-moment decay, in [0, 1); a float, an array or a schedule.
        b2: Adam's second-moment decay, in [0, 1).
        shampoo_beta: decay of the factors ``L``, ``R``, in [0, 1); ``None`` uses
            ``b2`` (the reference's default).
        eps: added to ``sqrt(V)``, >= 0.
        precondition_frequency: Adam steps between power steps, an integer >= 1 (a
            leaf: a new value does not recompile).
        max_precond_dim: axes longer than this are not rotated (static).

    Example:
        >>> tx = jt.chain(jt.scale_by_soap(), jt.scale_by_learning_rate(3e-3))
    """
    where = "scale_by_soap"
    hp.check_decay(where, "b1", b1)
    hp.check_decay(where, "b2", b2)
    if shampoo_beta is not None:
        hp.check_decay(where, "shampoo_beta", shampoo_beta)
    hp.check_eps(where, "eps", eps)
    hp.no_schedule(where, "precondition_frequency", precondition_frequency,
                   fix="Pass an integer such as 10.")
    hp.check_integer(where, "precondition_frequency", precondition_frequency, low=1,
                     fix="It counts Adam steps between refreshes of the eigenbases, e.g. 10.")
    hp.check_integer(where, "max_precond_dim", max_precond_dim, low=1,
                     fix="Axes longer than it are left unrotated; the reference uses 10000.")
    return ScaleBySoap(b1=hp.as_hyper(b1), b2=hp.as_hyper(b2),
                       shampoo_beta=None if shampoo_beta is None else hp.as_hyper(shampoo_beta),
                       eps=hp.as_hyper(eps), precondition_frequency=precondition_frequency,
                       max_precond_dim=int(max_precond_dim))
