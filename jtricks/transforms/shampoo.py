"""Shampoo with Adam grafting and blocking, after distributed Shampoo.

Each leaf is cut into blocks of at most ``block_size`` along every axis (the last
block of an axis padded with zeros); each block keeps one Kronecker factor per axis
and, every ``precondition_frequency`` steps, their inverse roots by ``eigh`` in fp32.
The preconditioned direction of each block is rescaled to the norm of Adam's
direction for that block (grafting), which sets the step size Shampoo lacks.
"""

from __future__ import annotations

import math
import string
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Transform, static_field

__all__ = ["ScaleByShampooState", "ScaleByShampoo", "scale_by_shampoo", "to_blocks",
           "from_blocks"]

_HIGHEST = jax.lax.Precision.HIGHEST
_LETTERS = string.ascii_lowercase


class ScaleByShampooState(NamedTuple):
    """Shampoo's state.

    Attributes:
        count: int32, the number of updates so far.
        mu: the filtered gradient (an EMA of gradients, decay ``b1``), params-shaped.
        nu: the grafting Adam's second moment (decay ``graft_b2``), params-shaped.
        stats: per leaf, a tuple with one ``(blocks, s_i, s_i)`` factor per axis
            (empty for a 0-d leaf), in at least fp32.
        preconditioners: per leaf, the inverse roots of those factors, same shapes.
    """

    count: jax.Array
    mu: Any
    nu: Any
    stats: Any
    preconditioners: Any


def _grid(shape: tuple[int, ...], block_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(blocks per axis, block length per axis)`` for a leaf of ``shape``."""
    sizes = tuple(min(d, block_size) for d in shape)
    return tuple(-(-d // s) for d, s in zip(shape, sizes)), sizes


def to_blocks(x: jax.Array, block_size: int) -> jax.Array:
    """``x`` of shape ``(d_1, ..., d_p)`` as ``(n_blocks, s_1, ..., s_p)``, each axis
    cut into blocks of ``s_i = min(d_i, block_size)`` (the last one zero-padded)."""
    counts, sizes = _grid(x.shape, block_size)
    pad = [(0, n * s - d) for d, n, s in zip(x.shape, counts, sizes)]
    if any(hi for _, hi in pad):
        x = jnp.pad(x, pad)
    p = x.ndim
    x = x.reshape(sum(zip(counts, sizes), ()))
    x = jnp.transpose(x, tuple(range(0, 2 * p, 2)) + tuple(range(1, 2 * p, 2)))
    return x.reshape((math.prod(counts), *sizes))


def from_blocks(blocks: jax.Array, shape: tuple[int, ...], block_size: int) -> jax.Array:
    """The inverse of :func:`to_blocks`: the blocks laid back out, padding dropped."""
    counts, sizes = _grid(shape, block_size)
    p = len(shape)
    x = blocks.reshape(counts + sizes)
    x = jnp.transpose(x, [k for i in range(p) for k in (i, p + i)])
    x = x.reshape(tuple(n * s for n, s in zip(counts, sizes)))
    return x[tuple(slice(0, d) for d in shape)]


def _block_outer(b: jax.Array, i: int) -> jax.Array:
    """Per block, the mode-``i`` unfolding times its transpose: ``(n, s_i, s_i)``."""
    letters = _LETTERS[:b.ndim - 1]
    other = letters.replace(letters[i], letters[i].upper())
    return jnp.einsum(f"Z{letters},Z{other}->Z{letters[i]}{letters[i].upper()}", b, b,
                      precision=_HIGHEST)


def _precondition(b: jax.Array, roots: tuple) -> jax.Array:
    """Each block multiplied along every axis by that axis's (symmetric) root."""
    letters = _LETTERS[:b.ndim - 1]
    specs = [f"Z{c.upper()}{c}" for c in letters]
    return jnp.einsum(f"Z{letters},{','.join(specs)}->Z{letters.upper()}", b, *roots,
                      precision=_HIGHEST)


def _inverse_root(factor: jax.Array, eps: Any, order: int) -> jax.Array:
    """``(factor + eps I)^(-1/(2 order))`` per block, by ``eigh``; eigenvalues that
    round below zero are clamped to zero first (the factor is PSD)."""
    w, v = jnp.linalg.eigh(factor)
    w = (jnp.maximum(w, 0) + eps) ** (-1.0 / (2 * order))
    return jnp.einsum("zij,zj,zkj->zik", v, w.astype(v.dtype), v, precision=_HIGHEST)


def _block_norms(b: jax.Array) -> jax.Array:
    """The Frobenius norm of each block, shaped to broadcast against ``b``."""
    return jnp.sqrt(jnp.sum(jnp.square(b), axis=tuple(range(1, b.ndim)), keepdims=True))


class ScaleByShampoo(Transform):
    """Shampoo's grafted direction; see :func:`scale_by_shampoo`."""

    b1: Any
    b2: Any
    eps: Any
    precondition_frequency: Any
    graft_b2: Any
    graft_eps: Any
    start_preconditioning_step: Any
    block_size: int = static_field(default=1024)

    def init(self, params):
        hp.check_real_params("scale_by_shampoo", params, "these factors are real")

        def factors(p, eye):
            counts, sizes = _grid(jnp.shape(p), self.block_size)
            n, acc = math.prod(counts), jtree.acc_dtype(p)
            return tuple(jnp.broadcast_to(jnp.eye(s, dtype=acc), (n, s, s)) if eye
                         else jnp.zeros((n, s, s), acc) for s in sizes)

        stats = jax.tree.map(lambda p: factors(p, False), params)
        roots = jax.tree.map(lambda p: factors(p, True), params)
        return ScaleByShampooState(
            count=jtree.scalar(0, jnp.int32, params),
            mu=jtree.zeros_like(params), nu=jtree.zeros_like(params),
            stats=jtree.replicated_like(params, stats),
            preconditioners=jtree.replicated_like(params, roots))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        count = state.count
        b1, b2, eps, gb2, geps = (hp.value_at(v, count) for v in (
            self.b1, self.b2, self.eps, self.graft_b2, self.graft_eps))
        t = jtree.increment(count)
        c1, cg = jtree.bias_correction(b1, t), jtree.bias_correction(gb2, t)
        # b2 == 1 sums the outer products (AdaGrad's factors) and needs no debiasing.
        b2 = jnp.asarray(b2, jnp.float32)
        weight = jnp.where(b2 == 1, 1, 1 - b2)
        c2 = jnp.where(b2 == 1, 1, jtree.bias_correction(b2, t))
        size = self.block_size

        def moments_leaf(g, m_old, v_old, fs):
            g32 = g.astype(jtree.acc_dtype(g, m_old, v_old))
            m = b1 * m_old + (1 - b1) * g32
            v = gb2 * v_old + (1 - gb2) * jnp.square(g32)
            m_hat = m / c1.astype(m.dtype)
            graft = m_hat / (jnp.sqrt(v / cg.astype(v.dtype)) + geps)
            gb = to_blocks(g32, size) if g.ndim else None
            fs = tuple((b2 * f + weight * _block_outer(gb, i)).astype(f.dtype)
                       for i, f in enumerate(fs))
            return (m.astype(m_old.dtype), v.astype(v_old.dtype), fs), (m_hat, graft)

        where = "scale_by_shampoo.update"
        out = jtree.map_checked(moments_leaf, updates, state.mu, state.nu, state.stats,
                                names=("updates", "state.mu", "state.nu", "state.stats"),
                                where=where)
        saved, work = jtree.unzip2(updates, out)
        mu, nu, stats = jtree.unzip3(updates, saved)
        roots = self._refresh(t, updates, stats, state.preconditioners, c2, eps)
        shampoo_on = t >= self.start_preconditioning_step

        def direction_leaf(g, pair, rs):
            m_hat, graft = pair
            if not g.ndim:
                return graft.astype(g.dtype)  # a scalar's grafted direction is Adam's
            s = _precondition(to_blocks(m_hat, size), rs)
            ab, sn = to_blocks(graft, size), _block_norms(s)
            s = s * jnp.where(sn > 0, _block_norms(ab) / jnp.where(sn > 0, sn, 1), 0)
            u = jnp.where(shampoo_on, from_blocks(s, g.shape, size), graft)
            return u.astype(g.dtype)

        u = jax.tree.map(direction_leaf, updates, work, roots)
        return u, ScaleByShampooState(count=t, mu=mu, nu=nu, stats=stats,
                                      preconditioners=roots)

    def _refresh(self, t, updates, stats, roots, c2, eps):
        """Inverse roots of the debiased factors on steps ``t`` divisible by
        ``precondition_frequency``, else the stored ones (one ``lax.cond``)."""
        treedef = jax.tree.structure(updates)
        orders = [jnp.ndim(g) for g in jax.tree.leaves(updates)]
        if not any(orders):
            return roots

        def compute(ops):
            return [tuple(_inverse_root(f / c2.astype(f.dtype), eps, order).astype(f.dtype)
                          for f in fs) for fs, order in zip(ops[0], orders)]

        ops = (treedef.flatten_up_to(stats), treedef.flatten_up_to(roots))
        new = jax.lax.cond(t % self.precondition_frequency == 0, compute,
                           lambda ops: ops[1], ops)
        return treedef.unflatten(new)


def scale_by_shampoo(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-12,
                     precondition_frequency: Any = 100, block_size: int = 1024,
                     graft_b2: Any = 0.999, graft_eps: Any = 1e-8,
                     start_preconditioning_step: Any = None) -> ScaleByShampoo:
    """Shampoo's direction with Adam grafting (Gupta et al., 2018; Anil et al., 2020;
    Shi et al., 2023).

    For a block ``G`` of an order-``p`` leaf at step ``t`` (1-based), with one factor
    ``L_i`` per axis and ``G_(i)`` the mode-``i`` unfolding::

        L_i <- b2 * L_i + (1 - b2) * G_(i) G_(i)^T      (b2 == 1: L_i <- L_i + G_(i) G_(i)^T)
        M   <- b1 * M + (1 - b1) * G;     M^ = M / (1 - b1**t)     (filtered gradient)
        V   <- graft_b2 * V + (1 - graft_b2) * G**2
        A   = M^ / (sqrt(V / (1 - graft_b2**t)) + graft_eps)     (Adam's direction)
        every precondition_frequency steps (t % f == 0), by eigh in fp32:
            P_i = (L_i / (1 - b2**t) + eps I)^(-1/(2p))           (no debiasing at b2 == 1)
        S   = M^ x_1 P_1 x_2 ... x_p P_p                          (Shampoo's direction)
        u   = ||A|| / ||S|| * S     if t >= start_preconditioning_step, else A

    Norms are per block. Each axis is cut into blocks of ``block_size`` (the last
    one zero-padded), each block with its own factors. Before the first refresh the
    roots are identities. This is Shi et al.'s (2023) algorithm with Adam grafting
    (no extra momentum, decoupled weight decay left to the chain).

    Args:
        b1: decay of the filtered gradient, in [0, 1).
        b2: decay of the factors, in [0, 1]; 1 accumulates them as AdaGrad does.
        eps: added to the factors' eigenvalues before the root, >= 0.
        precondition_frequency: steps between root computations, an integer >= 1.
        block_size: the longest block along any axis (static).
        graft_b2: the grafting Adam's second-moment decay, in [0, 1).
        graft_eps: the grafting Adam's eps, >= 0.
        start_preconditioning_step: the first step that uses Shampoo's direction
            (Adam's before it), an integer >= 1; ``None`` means
            ``precondition_frequency`` (the first step with computed roots).

    Example:
        >>> tx = jt.chain(jt.scale_by_shampoo(precondition_frequency=20),
        ...               jt.scale_by_learning_rate(1e-3))
    """
    where = "scale_by_shampoo"
    hp.check_decay(where, "b1", b1)
    hp.check_range(where, "b2", b2, low=0.0, high=1.0,
                   fix="b2 is the factors' decay; 0.999 is typical, 1 sums them (AdaGrad).")
    hp.check_eps(where, "eps", eps)
    hp.check_decay(where, "graft_b2", graft_b2)
    hp.check_eps(where, "graft_eps", graft_eps)
    for name, value in (("precondition_frequency", precondition_frequency),
                        ("start_preconditioning_step", start_preconditioning_step)):
        hp.no_schedule(where, name, value, fix="Pass an integer such as 100.")
        hp.check_integer(where, name, value, low=1, fix="It counts steps, e.g. 100.")
    hp.check_integer(where, "block_size", block_size, low=1,
                     fix="It caps the factors' size; 1024 is typical.")
    if start_preconditioning_step is None:
        start_preconditioning_step = precondition_frequency
    return ScaleByShampoo(
        b1=hp.as_hyper(b1), b2=hp.as_hyper(b2), eps=hp.as_hyper(eps),
        precondition_frequency=precondition_frequency, graft_b2=hp.as_hyper(graft_b2),
        graft_eps=hp.as_hyper(graft_eps),
        start_preconditioning_step=start_preconditioning_step, block_size=int(block_size))
