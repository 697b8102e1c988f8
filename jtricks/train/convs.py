"""Convolutions in the one layout XLA CPU runs fast, inside loop bodies too.

XLA CPU hands a convolution to its fast (Eigen) kernel only when its operands are
laid out batch-spatial-feature (NHWC) with the kernel spatial-in-out (HWIO). A
compiler pass rewrites a convolution of any other layout into transposes around
one of that layout, but it visits only the program's top level: inside a while
loop (the body of a ``lax.scan``, such as :func:`~jtricks.train.fit`'s epoch) such
a convolution runs as a naive loop, 10-20 times slower. Backward passes are full of
them even for an NHWC model: JAX writes the kernel gradient and the input gradient
as convolutions of permuted layouts. :func:`canonical_convs` does the same rewrite
on the jaxpr, before XLA sees it, at every depth.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore

__all__ = ["canonical_convs"]

# Primitives whose jaxpr parameters are re-traced with the rewrite applied; any other
# primitive keeps its inner jaxprs as they are.
_NESTED = frozenset({"jit", "pjit", "closed_call", "core_call", "cond", "while", "scan",
                     "checkpoint", "remat"})
_FAST_DTYPES = (jnp.dtype("float16"), jnp.dtype("float32"))  # the fast kernel's


def _canonical(ndim: int) -> lax.ConvDimensionNumbers:
    """``(batch, feature, spatial...)`` specs of NHWC input and output, HWIO kernel."""
    spatial = tuple(range(1, ndim - 1))
    return lax.ConvDimensionNumbers(lhs_spec=(0, ndim - 1, *spatial),
                                    rhs_spec=(ndim - 1, ndim - 2, *range(ndim - 2)),
                                    out_spec=(0, ndim - 1, *spatial))


def _to_rewrite(eqn: Any) -> bool:
    if eqn.primitive is not lax.conv_general_dilated_p:
        return False
    lhs = eqn.invars[0].aval
    return (3 <= lhs.ndim <= 5 and lhs.dtype in _FAST_DTYPES
            and tuple(eqn.params["dimension_numbers"]) != tuple(_canonical(lhs.ndim)))


def _needs_rewrite(jaxpr: Any) -> bool:
    for eqn in jaxpr.eqns:
        if _to_rewrite(eqn):
            return True
        if eqn.primitive.name in _NESTED and any(
                _needs_rewrite(sub) for sub in jcore.jaxprs_in_params(eqn.params)):
            return True
    return False


def _conv(lhs: jax.Array, rhs: jax.Array, params: dict) -> jax.Array:
    """The convolution in the canonical layout, between transposes to and from it."""
    lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
    n = lhs.ndim
    lhs = lax.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))
    rhs = lax.transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))
    out = lax.conv_general_dilated_p.bind(
        lhs, rhs, **{**params, "dimension_numbers": _canonical(n)})
    # `out` is (batch, spatial..., feature); put each axis where out_spec wants it.
    perm = [0] * n
    perm[out_spec[0]], perm[out_spec[1]] = 0, n - 1
    for i, axis in enumerate(out_spec[2:]):
        perm[axis] = 1 + i
    return lax.transpose(out, tuple(perm))


def _retraced(value: Any) -> Any:
    """A jaxpr parameter with the rewrite applied (the same value if nothing changes)."""
    if isinstance(value, tuple):
        return tuple(_retraced(v) for v in value)
    if isinstance(value, jcore.ClosedJaxpr):
        jaxpr, consts, avals = value.jaxpr, value.consts, value.in_avals
    elif isinstance(value, jcore.Jaxpr) and not value.constvars:
        jaxpr, consts, avals = value, (), [v.aval for v in value.invars]
    else:
        return value
    if not _needs_rewrite(jaxpr) or not all(isinstance(a, jax.core.ShapedArray)
                                            for a in avals):
        return value
    new = jax.make_jaxpr(lambda *args: _eval(jaxpr, consts, args))(*avals)
    if isinstance(value, jcore.ClosedJaxpr):
        return new
    return value if new.consts else new.jaxpr  # an open jaxpr cannot take new consts


def _eval(jaxpr: Any, consts: Any, args: Any) -> list:
    """``jaxpr`` applied to ``args``, each non-canonical convolution rewritten."""
    env: dict = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jcore.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        if _to_rewrite(eqn):
            outs = [_conv(*ins, eqn.params)]
        else:
            params = eqn.params
            if eqn.primitive.name in _NESTED:
                params = {k: _retraced(v) for k, v in params.items()}
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(params))
            if not eqn.primitive.multiple_results:
                outs = [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def canonical_convs(fn: Callable) -> Callable:
    """``fn`` with every convolution it traces in XLA CPU's fast layout.

    For a convolutional model trained on a CPU inside a loop of your own: wrap the
    function that holds the loop (or the loop's body) before ``jax.jit``; the
    values are the same, only the layouts of the convolutions change (each becomes
    transposes around an NHWC/HWIO convolution, as XLA's own pass would write it at
    the top level). :func:`~jtricks.train.fit` does this itself on a CPU. Without a
    convolution to rewrite ``fn`` is traced again as it is, so its program does not
    change. CPU only: GPU and TPU compilers choose convolution layouts at every depth
    themselves, so leave ``fn`` as it is there. Positional arguments only.

    Example::

        def epoch(state, batches):
            return jax.lax.scan(step.apply, state, batches)

        epoch = jax.jit(jt.train.canonical_convs(epoch))   # on a CPU
    """
    @functools.wraps(fn)
    def wrapped(*args: Any) -> Any:
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        if not _needs_rewrite(closed.jaxpr):
            return fn(*args)
        outs = _eval(closed.jaxpr, closed.consts, jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

    return wrapped
