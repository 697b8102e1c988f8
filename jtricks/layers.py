"""Normalisation and dropout as pure functions: batch norm, layer norm, weight norm,
dropout.

Each layer is a function of explicit arrays (params, state, a PRNG key) with an
``*_init`` that builds them, so it works in plain JAX, inside a flax module's
``__call__`` and under ``jit``/``vmap``/``grad``. Conventions follow flax so a
switch changes no number: features on the last axis, biased batch variance,
``new = momentum * old + (1 - momentum) * batch`` running statistics, inverted
dropout that keeps each entry with probability ``1 - rate``.

Numerics: statistics are computed in at least fp32 (a bf16 batch is reduced in fp32),
variances are clamped at zero, and the output has the input's dtype.

Example:
    >>> params, state = jt.layers.batch_norm_init(64)
    >>> y, state = jt.layers.batch_norm(params, state, x, training=True)
    >>> y = jt.layers.dropout(key, y, 0.1, training=True)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks import tree as jtree

__all__ = [
    "batch_norm_init",
    "batch_norm",
    "layer_norm_init",
    "layer_norm",
    "weight_norm_init",
    "weight_norm",
    "dropout",
]


# --- helpers ---------------------------------------------------------------------------


def _check_training(where: str, training: Any) -> bool:
    if isinstance(training, jax.core.Tracer):
        raise TypeError(
            f"{where}: training must be a Python bool known when tracing, got a traced "
            f"value. Mark it static, e.g. jax.jit(step, static_argnames='training')."
        )
    if not isinstance(training, (bool, int)) and getattr(training, "shape", None) != ():
        raise TypeError(f"{where}: training must be a bool, got {training!r}.")
    return bool(training)


def _check_features(where: str, x: jax.Array, tree: dict, names: tuple[str, ...],
                    what: str) -> int:
    """Checks that every array ``tree[name]`` has shape ``(x.shape[-1],)``."""
    if x.ndim == 0:
        raise ValueError(
            f"{where}: x must have a feature axis (its last axis), got a scalar. "
            "Reshape it to (batch, features)."
        )
    features = x.shape[-1]
    if not isinstance(tree, dict):
        raise TypeError(
            f"{where}: {what} must be a dict with keys {names}, got {type(tree).__name__}. "
            f"Build it with {where}_init(features)."
        )
    for name in names:
        if name not in tree:
            raise ValueError(
                f"{where}: {what} has no {name!r} entry (keys: {sorted(tree)}). Build it "
                f"with {where}_init(features)."
            )
        shape = jnp.shape(tree[name])
        if shape != (features,):
            raise ValueError(
                f"{where}: feature count mismatch: {what}[{name!r}] has shape {shape}, so "
                f"{where} expects x with {shape[-1] if shape else '?'} features on its last "
                f"axis, but got x of shape {x.shape} ({features} features). Build the "
                f"{what} with {where}_init({features}), or feed features on the last axis."
            )
    return features


# --- batch norm ------------------------------------------------------------------------


def batch_norm_init(features: int, dtype: Any = jnp.float32) -> tuple[dict, dict]:
    """Parameters and running statistics of :func:`batch_norm`.

    Returns:
        ``(params, state)``: ``params = {"scale": ones, "bias": zeros}`` and
        ``state = {"mean": zeros, "var": ones}``, each of shape ``(features,)``.
        ``dtype`` (default fp32) is the dtype of all four; keep the statistics in
        fp32 even for a bf16 model.
    """
    if not isinstance(features, int) or isinstance(features, bool) or features < 1:
        raise ValueError(
            f"batch_norm_init: features must be a positive int (the size of the last "
            f"axis of x), got {features!r}."
        )
    params = {"scale": jnp.ones((features,), dtype), "bias": jnp.zeros((features,), dtype)}
    state = {"mean": jnp.zeros((features,), dtype), "var": jnp.ones((features,), dtype)}
    return params, state


def _moments(x: jax.Array, axes: tuple[int, ...], axis_name: Any) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance over ``axes`` (and over ``axis_name``), two-pass.

    Two passes (``E[(x - E[x])**2]``) instead of ``E[x**2] - E[x]**2``: the latter
    cancels catastrophically when ``|mean| >> std``. Under ``axis_name`` the mean of
    equal-sized shards' means is the global mean, so each pass is one ``pmean``.
    """
    mean = jnp.mean(x, axis=axes)
    if axis_name is not None:
        mean = jax.lax.pmean(mean, axis_name)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    if axis_name is not None:
        var = jax.lax.pmean(var, axis_name)
    return mean, jnp.maximum(var, 0.0)


def batch_norm(params: dict, state: dict, x: ArrayLike, *, training: bool,
               momentum: ArrayLike = 0.99, eps: ArrayLike = 1e-5,
               axis_name: Any = None) -> tuple[jax.Array, dict]:
    """Batch normalisation (Ioffe & Szegedy 2015), flax's ``BatchNorm`` semantics.

    With ``x`` of shape ``(N, C)`` or ``(N, H, W, C)`` (features last), statistics
    are taken over every axis but the last. In training::

        mu     = mean(x)                      (per feature, over N [, H, W])
        var    = mean((x - mu)**2)            (biased, clamped at 0)
        y      = (x - mu) / sqrt(var + eps) * scale + bias
        mean'  = momentum * mean + (1 - momentum) * mu
        var'   = momentum * var  + (1 - momentum) * var_batch

    and at inference (``training=False``) ``y`` uses the running ``mean``/``var`` and
    the state is returned unchanged. Statistics are computed in at least fp32; ``y``
    has ``x``'s dtype and the new state keeps the state's dtype.

    Args:
        params: ``{"scale", "bias"}`` of shape ``(C,)`` from :func:`batch_norm_init`.
        state: ``{"mean", "var"}`` of shape ``(C,)`` from :func:`batch_norm_init`.
        x: the batch, features on the last axis.
        training: use (and update) batch statistics if true; the running ones if
            false. A Python bool (static under ``jit``).
        momentum: the running statistics' decay, in [0, 1]; may be a traced array.
        eps: added to the variance, >= 0.
        axis_name: a mapped axis name (``vmap``/``pmap``/``shard_map``) over which the
            batch is split: statistics are averaged across it, so every shard
            normalises with the global batch statistics (shards must be equal-sized).

    Returns:
        ``(y, new_state)``.

    Raises:
        ValueError: when the params/state do not have ``x``'s feature count (the message
            shows expected vs got), or when training on a single example without an
            ``axis_name`` (a batch of one has no variance).

    Example:
        >>> params, state = jt.layers.batch_norm_init(3)
        >>> x = jax.random.normal(jax.random.key(0), (32, 3)) * 5 + 2
        >>> y, state = jt.layers.batch_norm(params, state, x, training=True)
    """
    where = "batch_norm"
    training = _check_training(where, training)
    x = jnp.asarray(x)
    _check_features(where, x, params, ("scale", "bias"), "params")
    _check_features(where, x, state, ("mean", "var"), "state")
    hp.check_range(where, "momentum", momentum, low=0.0, high=1.0,
                   fix="momentum is the running statistics' decay; flax uses 0.99.")
    hp.check_eps(where, "eps", eps)
    dt = jtree.acc_dtype(x)
    xs = x.astype(dt)
    if training:
        axes = tuple(range(x.ndim - 1))
        if not axes and axis_name is None:
            raise ValueError(
                f"batch_norm: training needs a batch axis: x has shape {x.shape} (one "
                "example), whose variance is zero. Pass x as (batch, ..., features), or "
                "pass axis_name when mapping over examples."
            )
        mean, var = _moments(xs, axes, axis_name)
        new_state = {
            "mean": (momentum * state["mean"] + (1 - momentum) * mean).astype(
                jnp.result_type(state["mean"])),
            "var": (momentum * state["var"] + (1 - momentum) * var).astype(
                jnp.result_type(state["var"])),
        }
    else:
        mean = jnp.asarray(state["mean"]).astype(dt)
        var = jnp.asarray(state["var"]).astype(dt)
        new_state = state
    mul = jax.lax.rsqrt(var + eps) * jnp.asarray(params["scale"]).astype(dt)
    y = (xs - mean) * mul + jnp.asarray(params["bias"]).astype(dt)
    return y.astype(x.dtype), new_state


# --- layer norm ------------------------------------------------------------------------


def layer_norm_init(features: int, dtype: Any = jnp.float32) -> dict:
    """``{"scale": ones, "bias": zeros}`` of shape ``(features,)`` for :func:`layer_norm`."""
    if not isinstance(features, int) or isinstance(features, bool) or features < 1:
        raise ValueError(
            f"layer_norm_init: features must be a positive int (the size of the last "
            f"axis of x), got {features!r}."
        )
    return {"scale": jnp.ones((features,), dtype), "bias": jnp.zeros((features,), dtype)}


def layer_norm(params: dict, x: ArrayLike, eps: ArrayLike = 1e-6) -> jax.Array:
    """Layer normalisation (Ba et al. 2016), flax's ``LayerNorm`` semantics.

    Each example is normalised over its last (feature) axis; no running state, the
    same computation in training and inference::

        mu  = mean(x, axis=-1)
        var = mean((x - mu)**2, axis=-1)      (clamped at 0)
        y   = (x - mu) / sqrt(var + eps) * scale + bias

    Statistics in at least fp32; ``y`` has ``x``'s dtype.

    Args:
        params: ``{"scale", "bias"}`` of shape ``(features,)`` from
            :func:`layer_norm_init`.
        x: any shape ``(..., features)``.
        eps: added to the variance, >= 0.

    Example:
        >>> y = jt.layers.layer_norm(jt.layers.layer_norm_init(16), x)
    """
    where = "layer_norm"
    x = jnp.asarray(x)
    _check_features(where, x, params, ("scale", "bias"), "params")
    hp.check_eps(where, "eps", eps)
    dt = jtree.acc_dtype(x)
    xs = x.astype(dt)
    mean = jnp.mean(xs, axis=-1, keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(xs - mean), axis=-1, keepdims=True), 0.0)
    mul = jax.lax.rsqrt(var + eps) * jnp.asarray(params["scale"]).astype(dt)
    y = (xs - mean) * mul + jnp.asarray(params["bias"]).astype(dt)
    return y.astype(x.dtype)


# --- weight norm -----------------------------------------------------------------------


def _weight_axes(where: str, v: jax.Array) -> tuple[int, ...]:
    if v.ndim < 2:
        raise ValueError(
            f"{where}: v must be a kernel of rank >= 2 laid out (..., fan_in, fan_out), "
            f"got shape {v.shape}. Weight normalisation rescales each output unit's "
            "incoming weights; biases are left unnormalised."
        )
    return tuple(range(v.ndim - 1))


def weight_norm_init(kernel: ArrayLike) -> dict:
    """``{"v": kernel, "g": ||kernel||}`` so that ``weight_norm(v, g) == kernel``.

    ``g`` holds, for each output unit (last axis), the L2 norm of its incoming
    weights, so the reparametrised layer starts exactly at the initialiser's draw
    (as in Salimans & Kingma 2016 and PyTorch; flax instead starts ``g`` at ones).
    """
    v = jnp.asarray(kernel)
    axes = _weight_axes("weight_norm_init", v)
    g = jtree.unit_norms(v, axes).reshape(v.shape[-1]).astype(v.dtype)
    return {"v": v, "g": g}


def weight_norm(v: ArrayLike, g: ArrayLike, eps: ArrayLike = 1e-12) -> jax.Array:
    """Weight normalisation (Salimans & Kingma 2016): ``w = g * v / ||v||``.

    The norm is taken per output unit, over every axis but the last (a dense kernel
    ``(n_in, n_out)`` or a conv kernel ``(kh, kw, c_in, c_out)``)::

        w[..., j] = g[j] * v[..., j] / sqrt(sum(v[..., j]**2) + eps)

    The same numbers as flax's ``WeightNorm`` with ``scale = g``. Direction (``v``)
    and length (``g``) are learned separately, which conditions the gradient like a
    cheap, batch-independent batch norm.

    Args:
        v: the direction parameter, rank >= 2.
        g: the length per output unit, shape ``(v.shape[-1],)``.
        eps: added under the square root, >= 0 (guards an all-zero column).

    Example:
        >>> p = jt.layers.weight_norm_init(jt.init.lecun_normal()(key, (784, 128)))
        >>> y = x @ jt.layers.weight_norm(p["v"], p["g"])
    """
    where = "weight_norm"
    v = jnp.asarray(v)
    g = jnp.asarray(g)
    axes = _weight_axes(where, v)
    if g.shape != (v.shape[-1],):
        raise ValueError(
            f"{where}: g must have one entry per output unit: expected shape "
            f"({v.shape[-1]},) for v of shape {v.shape}, got {g.shape}. Build both with "
            "weight_norm_init(kernel)."
        )
    hp.check_eps(where, "eps", eps)
    dt = jtree.acc_dtype(v)
    vs = v.astype(dt)
    w = vs * jax.lax.rsqrt(jnp.sum(vs * vs, axis=axes, keepdims=True) + eps) * g.astype(dt)
    return w.astype(jnp.promote_types(v.dtype, g.dtype))


# --- dropout ---------------------------------------------------------------------------


def dropout(key: jax.Array | None, x: ArrayLike, rate: ArrayLike, *, training: bool,
            broadcast_axes: tuple[int, ...] = ()) -> jax.Array:
    """Inverted dropout (Srivastava et al. 2014), flax's ``Dropout`` semantics.

    In training each entry is kept with probability ``1 - rate`` and rescaled so its
    expectation is unchanged; at inference ``x`` passes through::

        m ~ Bernoulli(1 - rate)               (per entry; shared along broadcast_axes)
        y = m * x / (1 - rate)                if training
        y = x                                 otherwise

    Given the same key, the mask is the one flax's ``nn.Dropout(rate)(x, rng=key)``
    draws.

    Args:
        key: a PRNG key (``jax.random.key``); required when training, ignored (may be
            ``None``) otherwise. Split it per call: reusing a key reuses the mask.
        x: the activations.
        rate: the probability of dropping an entry, in [0, 1); may be a traced array.
        training: drop if true; identity if false. A Python bool (static).
        broadcast_axes: axes along which one mask entry is shared (e.g. ``(1, 2)`` for
            an ``(N, H, W, C)`` input drops whole channels).

    Raises:
        ValueError: ``rate`` outside [0, 1).
        TypeError: training without a key, or a traced ``training``.

    Example:
        >>> key, sub = jax.random.split(key)
        >>> h = jt.layers.dropout(sub, h, 0.5, training=True)
    """
    where = "dropout"
    training = _check_training(where, training)
    hp.check_range(where, "rate", rate, low=0.0, high=1.0, high_open=True,
                   fix="rate is the probability of dropping an entry; usual values are "
                       "0.1-0.5 (rate 1 would drop everything).")
    x = jnp.asarray(x)
    if not training:
        return x
    if key is None:
        raise TypeError(
            f"{where}: training=True needs a PRNG key, got None. Pass one, e.g. "
            "key, sub = jax.random.split(key); dropout(sub, x, rate, training=True)."
        )
    mask_shape = list(x.shape)
    for a in broadcast_axes:
        if not -x.ndim <= a < x.ndim:
            raise ValueError(
                f"{where}: broadcast_axes entry {a} is out of range for x of shape {x.shape}."
            )
        mask_shape[a] = 1
    keep_prob = 1.0 - rate
    keep = jax.random.bernoulli(key, keep_prob, tuple(mask_shape))
    keep = jnp.broadcast_to(keep, x.shape)
    return jnp.where(keep, x / keep_prob, jnp.zeros((), x.dtype)).astype(x.dtype)
