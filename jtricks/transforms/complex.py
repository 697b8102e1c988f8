"""Complex parameters as pairs of real ones: optax's ``contrib.split_real_and_imaginary``.

JAX's gradient of a real loss with respect to a complex parameter is the conjugate of
the descent direction other frameworks use; conjugate it (``jnp.conj``) between
``jax.grad`` and ``update``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtricks import tree as jtree
from jtricks.base import Transform, as_transform

__all__ = ["SplitRealAndImaginaryArrays", "SplitRealAndImaginaryState",
           "SplitRealAndImaginary", "split_real_and_imaginary"]


class SplitRealAndImaginaryArrays(NamedTuple):
    """A complex array as its two real parts (optax's class and fields)."""

    real: Any
    imaginary: Any


class SplitRealAndImaginaryState(NamedTuple):
    """``inner_state``: the inner transform's state, built on the split params."""

    inner_state: Any


def _split(x: Any) -> Any:
    """A complex leaf as its real pair; a real leaf unchanged."""
    if jnp.iscomplexobj(x):
        return SplitRealAndImaginaryArrays(jnp.real(x), jnp.imag(x))
    return x


def _merge(x: Any) -> Any:
    """A real pair back as one complex leaf; any other leaf unchanged."""
    if not isinstance(x, SplitRealAndImaginaryArrays):
        return x
    # complex64 at least (also for bf16 parts), as real + 1j * imaginary would give.
    dtype = jtree.acc_dtype(x.real, x.imaginary)
    return jax.lax.complex(jnp.asarray(x.real, dtype), jnp.asarray(x.imaginary, dtype))


def _is_pair(x: Any) -> bool:
    return isinstance(x, SplitRealAndImaginaryArrays)


class SplitRealAndImaginary(Transform):
    """Runs ``inner`` on real pairs; see :func:`split_real_and_imaginary`."""

    inner: Transform

    def init(self, params):
        return SplitRealAndImaginaryState(inner_state=self.inner.init(
            jax.tree.map(_split, params)))

    def update(self, updates, state, params=None, **extra):
        split_params = None if params is None else jax.tree.map(_split, params)
        inner_updates, inner_state = self.inner.update(
            jax.tree.map(_split, updates), state.inner_state, split_params, **extra)
        merged = jax.tree.map(_merge, inner_updates, is_leaf=_is_pair)
        return merged, SplitRealAndImaginaryState(inner_state=inner_state)


def split_real_and_imaginary(inner: Any) -> SplitRealAndImaginary:
    """Runs ``inner`` on the real and imaginary parts of complex leaves as two real
    leaves, and merges its updates back::

        z = a + i b   ->   inner sees SplitRealAndImaginaryArrays(a, b)
        (u_a, u_b)    ->   u = u_a + i u_b

    so an optimizer on a complex parameter behaves as on the two real ones (Adam's
    second moment is kept per part, not of ``|g|**2``). Real leaves pass through to
    ``inner`` unchanged. Same numbers and state as optax's
    ``contrib.split_real_and_imaginary``.

    Args:
        inner: the transform run on the real pairs (jtricks or optax).

    Example:
        >>> tx = jt.split_real_and_imaginary(jt.adam(1e-3))
        >>> grads = jax.tree.map(jnp.conj, jax.grad(loss)(params))  # JAX's convention
    """
    return SplitRealAndImaginary(inner=as_transform(inner, where="split_real_and_imaginary"))
