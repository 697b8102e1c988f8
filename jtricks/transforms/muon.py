"""Muon: momentum orthogonalised by a Newton-Schulz iteration.

Each matrix's (Nesterov) momentum is replaced by an approximation of its nearest
semi-orthogonal matrix ``U V^T`` (``U S V^T`` its SVD), computed by a few steps of a
quintic Newton-Schulz iteration. Tensors of other ranks say, through
:class:`MuonDimensionNumbers`, which axes form the matrix; the remaining axes are a
batch of independent matrices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jtricks import hyperparams as hp
from jtricks import tree as jtree
from jtricks.base import Stateless, Transform, static_field

__all__ = ["MuonDimensionNumbers", "MuonState", "ScaleByMuon", "scale_by_muon",
           "scale_by_shape"]

DEFAULT_NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_COEFFS_PRESETS = {
    "standard": DEFAULT_NS_COEFFS,
    "dion": ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377),
             (3.7418, -5.5913, 2.3037), (2.8769, -3.1427, 1.2046),
             (2.8366, -3.0525, 1.2012)),
}
PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")
# The AOL and Schatten first steps floor their rescaling at this constant (fixed in
# optax too: muon's `eps` does not reach them).
_FIRST_STEP_FLOOR = 1e-8


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a weight form the matrix Muon orthogonalises (optax's class).

    ``reduction_axis`` are the input (contracted) axes and ``output_axis`` the
    output axes of ``x @ W``; each an int or a sequence of ints (negative ones count
    from the end). Every other axis is a batch axis: each slice is orthogonalised on
    its own. The default is a plain ``(fan_in, fan_out)`` matrix.
    """

    reduction_axis: Sequence[int] | int = 0
    output_axis: Sequence[int] | int = 1


def is_dimension_numbers(x: Any) -> bool:
    """True for a :class:`MuonDimensionNumbers` (jtricks' or optax's: duck-typed)."""
    return isinstance(x, tuple) and hasattr(x, "reduction_axis") and hasattr(x, "output_axis")


def _axes(x: Any, spec: Any, path: Any) -> tuple[tuple[int, ...], ...]:
    """``(batch, reduction, output)`` axes of ``x`` under ``spec``, checked."""
    where = f"muon at {jtree.keystr(path)}"
    if spec is None:
        raise ValueError(
            f"{where}: this leaf has no dimension numbers, but every leaf that reaches "
            "scale_by_muon is orthogonalised. Use jt.muon (Adam for the others) or "
            "jt.masked to keep it out."
        )
    if x.ndim < 2:
        raise ValueError(
            f"{where}: Muon orthogonalises matrices, but this leaf has shape {x.shape}. "
            "Give it no dimension numbers (None) so jt.muon sends it to Adam, or "
            "mask it out of scale_by_muon."
        )

    def norm(axes):
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        return tuple(int(a) % x.ndim for a in axes)

    red, out = norm(spec.reduction_axis), norm(spec.output_axis)
    if set(red) & set(out):
        raise ValueError(
            f"{where}: reduction axes {red} and output axes {out} overlap (from {spec}, "
            f"shape {x.shape}). Each axis is a reduction, an output or a batch axis."
        )
    batch = tuple(a for a in range(x.ndim) if a not in red + out)
    return batch, red, out


def _as_matrices(x: jax.Array, axes: tuple) -> tuple[jax.Array, Any]:
    """``x`` as a ``(batch, fan_in, fan_out)`` stack and the function undoing that."""
    order = sum(axes, ())
    shapes = [tuple(x.shape[a] for a in group) for group in axes]
    stacked = jnp.transpose(x, order).reshape([math.prod(s) for s in shapes])
    back = np.argsort(order)
    return stacked, lambda y: jnp.transpose(y.reshape(sum(shapes, ())), back)


def _ns_step(x: jax.Array, c: jax.Array, first: str | None) -> jax.Array:
    """One quintic step ``x <- a x + (b A + c A^2) x`` with ``A = x x^H``; the first
    step of the AOL and Schatten variants rescales ``x`` (and ``A``) first."""
    if first == "schatten":
        a = x @ x.T
        s = jax.lax.rsqrt(jnp.maximum(jnp.linalg.norm(a), _FIRST_STEP_FLOOR))
        x, a = x * s, a * s**2
    else:
        a = x @ x.T.conj()
        if first == "aol":
            s = jax.lax.rsqrt(jnp.maximum(jnp.abs(a).sum(axis=-1), _FIRST_STEP_FLOOR))[:, None]
            x, a = x * s, a * s * s.T
    b = c[1] * a + c[2] * a @ a
    return c[0] * x + b @ x


def orthogonalize(x: jax.Array, coeffs: jax.Array, ns_steps: int, preconditioning: str,
                  eps: Any) -> jax.Array:
    """Approximates the orthogonal polar factor of one matrix by Newton-Schulz steps.

    ``coeffs`` is ``(a, b, c)`` used for ``ns_steps`` steps, or one row per step. The
    iteration runs on the wide orientation (fewer rows than columns) and in ``x``'s
    dtype.
    """
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    if preconditioning == "frobenius":
        x = x / (jnp.linalg.norm(x) + eps)
    elif preconditioning == "spectral":
        # LAPACK has no bf16 SVD: the spectral norm is taken in (at least) fp32.
        top = jnp.linalg.norm(x.astype(jtree.acc_dtype(x)), ord=2)
        x = x / (top.astype(jnp.real(x).dtype) + eps)
    coeffs = coeffs.astype(x.dtype)
    rows = [coeffs] * ns_steps if coeffs.ndim == 1 else list(coeffs)
    special = preconditioning if preconditioning in ("aol", "schatten") else None
    for i, c in enumerate(rows):
        x = _ns_step(x, c, special if i == 0 else None)
    return x.T if tall else x


def leaf_specs(spec: Any, updates: Any, where: str) -> list:
    """One dimension-numbers entry per leaf of ``updates`` (``None``: no spec).

    ``spec`` is ``None`` (every leaf a plain matrix), a single
    :class:`MuonDimensionNumbers`, a tree of them (and ``None``s) shaped like the
    updates or a prefix of it, or a callable ``updates -> such a tree``.
    """
    if callable(spec) and not is_dimension_numbers(spec):
        spec = spec(updates)
    n = len(jax.tree.leaves(updates))
    if spec is None:
        return [MuonDimensionNumbers()] * n
    is_leaf = lambda x: x is None or is_dimension_numbers(x)
    try:
        full = jax.tree.map(lambda s, sub: jax.tree.map(lambda _: s, sub), spec, updates,
                            is_leaf=is_leaf)
    except (ValueError, TypeError):
        raise ValueError(
            f"{where}: the weight dimension numbers must be shaped like the params (or "
            f"a prefix of them): {jtree.first_difference(updates, spec)}. Give a tree "
            "of MuonDimensionNumbers (None for leaves Muon skips)."
        ) from None
    return jax.tree.structure(updates).flatten_up_to(full)


class MuonState(NamedTuple):
    """optax's ``MuonState``.

    Attributes:
        count: int32, the number of updates so far.
        mu: the momentum, shaped like the params.
        ns_coeffs: the Newton-Schulz coefficients, ``(3,)`` or one row per step; the
            update reads them from here (so a restored state keeps its own).
    """

    count: jax.Array
    mu: Any
    ns_coeffs: jax.Array


class ScaleByMuon(Transform):
    """Muon's orthogonalised momentum; see :func:`scale_by_muon`."""

    ns_coeffs: Any
    beta: Any
    eps: Any
    ns_steps: int = static_field(default=5)
    mu_dtype: Any = static_field(default=None)
    nesterov: bool = static_field(default=True)
    adaptive: bool = static_field(default=False)
    preconditioning: str = static_field(default="frobenius")
    weight_dimension_numbers: Any = static_field(default=None)

    def init(self, params):
        hp.check_float_params("scale_by_muon", params)
        coeffs = jnp.asarray(self.ns_coeffs)
        if coeffs.ndim == 2:
            coeffs = coeffs[-self.ns_steps:]
        return MuonState(count=jtree.scalar(0, jnp.int32, params),
                         mu=jtree.zeros_like(params, self.mu_dtype),
                         ns_coeffs=jtree.replicated_like(params, coeffs))

    def update(self, updates, state, params=None, **extra):
        del params, extra
        beta = hp.value_at(self.beta, state.count)
        eps = hp.value_at(self.eps, state.count)
        count = jtree.increment(state.count)
        c = jtree.bias_correction(beta, count)
        c_next = jtree.bias_correction(beta, jtree.increment(count))
        specs = leaf_specs(self.weight_dimension_numbers, updates, "scale_by_muon.update")
        paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(updates)[0]]
        coeffs, steps, pre = state.ns_coeffs, self.ns_steps, self.preconditioning
        index = jax.tree.structure(updates).unflatten(range(len(specs)))

        def leaf(g, m_old, i):
            path, spec = paths[i], specs[i]
            m = (1 - beta) * g + beta * m_old
            if self.nesterov:
                m_hat = (beta * (m / c_next.astype(m.dtype))
                         + (1 - beta) * (g / c.astype(g.dtype)))
            else:
                m_hat = m / c.astype(m.dtype)
            stacked, back = _as_matrices(m_hat, _axes(m_hat, spec, path))
            o = back(jax.vmap(lambda x: orthogonalize(x, coeffs, steps, pre, eps))(stacked))
            if self.adaptive:  # scale by the dual norm <m_hat, o> (Bernstein et al.)
                o = jnp.sum(m_hat.conj() * o) * o
            return o, m.astype(m_old.dtype)

        out = jtree.map_checked(leaf, updates, state.mu, index,
                                names=("updates", "state.mu", "leaf index"),
                                where="scale_by_muon.update")
        u, mu = jtree.unzip2(updates, out)
        return u, MuonState(count=count, mu=mu, ns_coeffs=state.ns_coeffs)


def check_ns_coeffs(where: str, ns_coeffs: Any, ns_steps: Any) -> None:
    """``ns_coeffs`` is ``(a, b, c)`` or at most ``ns_steps`` rows of them, finite."""
    _check_static_int(where, "ns_steps", ns_steps)
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(ns_coeffs)):
        return
    try:
        arr = np.asarray(ns_coeffs, np.float64)
    except (TypeError, ValueError):
        arr = np.zeros((0,))
    if arr.ndim not in (1, 2) or arr.shape[-1] != 3:
        raise ValueError(
            f"{hp.reporter(where)}: ns_coeffs must be three numbers (a, b, c) or a sequence "
            f"of such triples (one per step), got {ns_coeffs!r} (shape {arr.shape}). The "
            f"default is {DEFAULT_NS_COEFFS}."
        )
    hp.check_finite(where, "ns_coeffs", arr)
    if arr.ndim == 2 and arr.shape[0] > ns_steps:
        raise ValueError(
            f"{hp.reporter(where)}: ns_coeffs has {arr.shape[0]} rows (one per step) but "
            f"ns_steps is {ns_steps}; give at most ns_steps rows or raise ns_steps."
        )


def _check_static_int(where: str, name: str, value: Any) -> None:
    """A structural whole number >= 0, known before tracing (it unrolls a loop)."""
    if hp.concrete(value) is None or np.ndim(value) != 0:
        raise TypeError(
            f"{hp.reporter(where)}: {name} sets how many steps are unrolled, so it must be a "
            f"Python int, got {type(value).__name__}: {value!r}."
        )
    hp.check_integer(where, name, value)


def check_preconditioning(where: str, preconditioning: Any) -> None:
    if preconditioning not in PRECONDITIONINGS:
        raise ValueError(
            f"{hp.reporter(where)}: preconditioning must be one of {PRECONDITIONINGS}, got "
            f"{preconditioning!r}."
        )


def scale_by_muon(ns_coeffs: Any = DEFAULT_NS_COEFFS, ns_steps: Any = 5, beta: Any = 0.95,
                  eps: Any = 1e-8, mu_dtype: Any = None, *, nesterov: bool = True,
                  adaptive: bool = False, preconditioning: str = "frobenius",
                  weight_dimension_numbers: Any = None) -> ScaleByMuon:
    """Replaces each matrix's momentum by its Newton-Schulz orthogonalisation (Muon).

    Same numbers and state as ``optax.contrib.scale_by_muon`` (Jordan et al., 2024,
    "Muon: an optimizer for hidden layers in neural networks"). With ``g`` the
    incoming update and ``t`` the 1-based step::

        m     <- beta * m + (1 - beta) * g
        m_hat <- m / (1 - beta**t)                                       (plain)
        m_hat <- beta * m / (1 - beta**(t+1)) + (1 - beta) * g / (1 - beta**t)
                                                                   (nesterov)
        X     <- m_hat / (||m_hat||_F + eps)          (preconditioning="frobenius";
                  "spectral" divides by ||m_hat||_2 + eps; "aol" and "schatten"
                  rescale inside the first step instead)
        X     <- a X + (b A + c A^2) X,   A = X X^T,  ns_steps times
        u     <- X                        (adaptive: <m_hat, X> * X)

    computed on the wide orientation of each matrix. ``(a, b, c) = ns_coeffs``, or
    one row of ``ns_coeffs`` per step.

    Args:
        ns_coeffs: ``(a, b, c)``, or a sequence of at most ``ns_steps`` such rows
            (then one step per row). They are stored in the state.
        ns_steps: the number of Newton-Schulz steps (a Python int, static).
        beta: momentum decay in [0, 1); a float, an array or a schedule.
        eps: added to the norm that normalises the momentum, >= 0.
        mu_dtype: dtype of the momentum (``None``: the params').
        nesterov: Nesterov momentum (static).
        adaptive: scale each update by the dual norm ``<m_hat, X>`` (static).
        preconditioning: ``"frobenius"``, ``"spectral"``, ``"aol"`` or ``"schatten"``.
        weight_dimension_numbers: ``None`` (every leaf a ``(fan_in, fan_out)``
            matrix), a :class:`MuonDimensionNumbers` for every leaf, a tree of them
            shaped like the params, or a callable ``updates -> such a tree``. Static.

    Example:
        >>> tx = jt.chain(jt.scale_by_muon(), jt.scale_by_learning_rate(0.02))
    """
    where = "scale_by_muon"
    check_ns_coeffs(where, ns_coeffs, ns_steps)
    hp.check_decay(where, "beta", beta)
    hp.check_eps(where, "eps", eps)
    check_preconditioning(where, preconditioning)
    return ScaleByMuon(ns_coeffs=ns_coeffs, beta=hp.as_hyper(beta), eps=hp.as_hyper(eps),
                       ns_steps=int(ns_steps), mu_dtype=None if mu_dtype is None
                       else jax.dtypes.canonicalize_dtype(mu_dtype),
                       nesterov=bool(nesterov), adaptive=bool(adaptive),
                       preconditioning=preconditioning,
                       weight_dimension_numbers=weight_dimension_numbers)


class ScaleByShape(Stateless):
    """Muon's per-matrix step multiplier from its shape; see :func:`scale_by_shape`."""

    consistent_rms: Any = None
    weight_dimension_numbers: Any = static_field(default=None)

    def update(self, updates, state, params=None, **extra):
        del params, extra
        specs = leaf_specs(self.weight_dimension_numbers, updates, "scale_by_shape.update")
        flat = jax.tree_util.tree_flatten_with_path(updates)[0]
        scaled = []
        for (path, u), spec in zip(flat, specs):
            _, red, out = _axes(u, spec, path)
            fan_in = math.prod(u.shape[a] for a in red)
            fan_out = math.prod(u.shape[a] for a in out)
            if self.consistent_rms is None:
                factor = jnp.sqrt(jnp.maximum(1, fan_out / fan_in))
            else:
                factor = jnp.sqrt(jnp.maximum(fan_in, fan_out)) * self.consistent_rms
            scaled.append(factor * u)
        return jax.tree.structure(updates).unflatten(scaled), state


def scale_by_shape(weight_dimension_numbers: Any = None,
                   consistent_rms: Any = None) -> ScaleByShape:
    """Multiplies each matrix's update by a factor of its shape (Muon's second block).

    ::

        u <- sqrt(max(1, fan_out / fan_in)) * u                  (consistent_rms=None)
        u <- sqrt(max(fan_in, fan_out)) * consistent_rms * u     (Liu et al., 2025)

    ``fan_in``/``fan_out`` are the sizes of the reduction/output axes named by the
    leaf's :class:`MuonDimensionNumbers` (as in :func:`scale_by_muon`).

    Args:
        weight_dimension_numbers: as for :func:`scale_by_muon` (static).
        consistent_rms: ``None`` for width scaling, or a target RMS > 0 (0.2 matches
            AdamW's), a number or an array.

    Example:
        >>> tx = jt.chain(jt.scale_by_muon(), scale_by_shape(), jt.scale_by_learning_rate(0.02))
    """
    if consistent_rms is not None:
        hp.no_schedule("scale_by_shape", "consistent_rms", consistent_rms)
        hp.check_positive("scale_by_shape", "consistent_rms", consistent_rms)
    return ScaleByShape(consistent_rms=consistent_rms,
                        weight_dimension_numbers=weight_dimension_numbers)
