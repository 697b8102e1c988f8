"""Shared fixtures: a seeded random parameter tree and a gradient function.

The tree mixes every container and rank an optimizer must handle: a nested dict,
a list, a 0-d scalar, vectors, a dense kernel, a 3-D tensor and a 4-D convolution
kernel (so unit-wise clipping sees every rank it distinguishes).
"""

from __future__ import annotations

import os

# XLA's CPU fusion emitters take about half the compile time of the suite's many small
# programs (measured: a third of its CPU time) and buy nothing on arrays this small.
# Read when the backend starts, so before any computation; subprocesses inherit it.
# Every comparison compiles both libraries alike, so parities do not depend on it.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_cpu_use_fusion_emitters=false"]).strip()

import jax
import jax.numpy as jnp
import numpy as np
import pytest

SEED = 0

# The table tests compile one small program per transform and dtype; LLVM's backend
# optimisations dominate their compile time and buy nothing on arrays this small.
# Both libraries of a comparison are compiled alike; XLA's graph-level passes
# (fusion, simplification) still run.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


SHAPES = {
    "dense": {"w": (4, 3), "b": (3,)},
    "blocks": [{"kernel": (2, 3, 4)}, (5,)],
    "scale": (),
    "conv": (3, 3, 2, 4),
    "row": (1, 6),
}


def _shapes():
    return jax.tree.flatten(SHAPES, is_leaf=lambda s: isinstance(s, tuple))


def make_params(seed: int = SEED, dtype=jnp.float32) -> dict:
    """A random tree of 7 leaves: nested dict and list, a 0-d scalar, a 3-D and a 4-D
    tensor. Drawn with NumPy: test data needs no compilation."""
    rng = np.random.default_rng(seed)
    shapes, treedef = _shapes()
    return jax.tree.unflatten(
        treedef, [jnp.asarray(rng.standard_normal(s), jnp.float32).astype(dtype) for s in shapes]
    )


def loss(params: dict) -> jax.Array:
    """A smooth, well-conditioned loss whose curvature differs from leaf to leaf."""
    leaves = jax.tree.leaves(params)
    total = jnp.zeros((), jnp.float32)
    for i, p in enumerate(leaves):
        p = p.astype(jnp.float32)
        total = total + jnp.sum(0.5 * (i + 1) * p**2 + 0.3 * jnp.sin(3 * p))
    return total


def noise_sequence(params: dict, steps: int, seed: int = SEED + 1) -> dict:
    """Seeded gradient noise for ``steps`` updates: each leaf gets a leading step axis."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: jnp.asarray(rng.standard_normal((steps, *jnp.shape(p))), jnp.float32)
        .astype(p.dtype), params)


@jax.jit
def grad_fn(params: dict, noise: dict | None = None) -> dict:
    """The gradient of :func:`loss` (plus ``noise``, one step of :func:`noise_sequence`),
    in each parameter's dtype. The noise is drawn ahead of time, so a scanned step
    holds no random-number generation (which would make every compilation slower)."""
    grads = jax.grad(loss)(params)
    if noise is None:
        return grads
    return jax.tree.map(lambda g, e: (g + 0.5 * e).astype(g.dtype), grads, noise)


def trajectory(tx, apply, params: dict, noise: dict):
    """Params after each of ``len(noise)`` updates of ``tx`` (stacked on a leading
    axis) on the noisy gradient of :func:`loss`, and the final state; ``apply`` is
    the library's ``apply_updates``."""

    def body(carry, n):
        p, s = carry
        u, s = tx.update(grad_fn(p, n), s, p)
        p = apply(p, u)
        return (p, s), p

    (_, state), traj = jax.lax.scan(body, (params, tx.init(params)), noise)
    return traj, state


@pytest.fixture
def params() -> dict:
    return make_params(SEED)


@pytest.fixture
def params_bf16() -> dict:
    return make_params(SEED, jnp.bfloat16)


@pytest.fixture
def grads(params) -> dict:
    return grad_fn(params, jax.tree.map(lambda n: n[0], noise_sequence(params, 1)))


# --- the table of transforms: one line per jtricks transform and its optax twin ---------
#
# Each case is (name, jtricks factory, optax factory), both called with no argument and
# configured with the same explicit, non-default hyperparameters. Building blocks that
# return raw directions are followed by a fixed descent step so 100 steps stay bounded.
# Every test that takes a ``tx_case`` argument runs over the whole table.

def _lr_schedule(count):
    """An optax-free schedule: a plain function of the 0-based update count."""
    return 0.1 * 0.98 ** count


# Weight decay on kernels only: a tree of Python bools shaped like make_params(...).
DECAY_MASK = {
    "blocks": [{"kernel": True}, False],
    "conv": True,
    "dense": {"b": False, "w": True},
    "row": True,
    "scale": False,
}


def _kernels_only(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _cases():
    import optax

    import jtricks as jt

    def then_step(block, optax_block, step=-0.05):
        return (lambda: jt.chain(block(), jt.scale(step)),
                lambda: optax.chain(optax_block(), optax.scale(step)))

    rows = [
        ("sgd", lambda: jt.sgd(0.05), lambda: optax.sgd(0.05)),
        ("sgd_momentum", lambda: jt.sgd(0.05, momentum=0.8),
         lambda: optax.sgd(0.05, momentum=0.8)),
        ("sgd_nesterov", lambda: jt.sgd(0.05, momentum=0.8, nesterov=True),
         lambda: optax.sgd(0.05, momentum=0.8, nesterov=True)),
        ("sgd_fp32_trace",
         lambda: jt.sgd(0.05, momentum=0.8, nesterov=True, accumulator_dtype=jnp.float32),
         lambda: optax.sgd(0.05, momentum=0.8, nesterov=True, accumulator_dtype=jnp.float32)),
        ("sgd_schedule", lambda: jt.sgd(_lr_schedule, momentum=0.9),
         lambda: optax.sgd(_lr_schedule, momentum=0.9)),
        ("normalized_sgd", lambda: jt.normalized_sgd(0.05, eps=1e-5),
         lambda: optax.chain(optax.normalize_by_update_norm(1.0, 1e-5),
                             optax.scale_by_learning_rate(0.05))),
        ("adagrad", lambda: jt.adagrad(0.2, initial_accumulator_value=0.2, eps=1e-6),
         lambda: optax.adagrad(0.2, initial_accumulator_value=0.2, eps=1e-6)),
        ("rmsprop", lambda: jt.rmsprop(0.01, decay=0.8, eps=1e-6),
         lambda: optax.rmsprop(0.01, decay=0.8, eps=1e-6)),
        ("rmsprop_centered", lambda: jt.rmsprop(0.01, decay=0.8, eps=1e-6, centered=True),
         lambda: optax.rmsprop(0.01, decay=0.8, eps=1e-6, centered=True)),
        ("rmsprop_nesterov",
         lambda: jt.rmsprop(0.01, decay=0.8, eps=1e-6, momentum=0.7, nesterov=True),
         lambda: optax.rmsprop(0.01, decay=0.8, eps=1e-6, momentum=0.7, nesterov=True)),
        ("rmsprop_eps_outside_debiased",
         lambda: jt.rmsprop(0.01, decay=0.8, eps=1e-6, eps_in_sqrt=False,
                            bias_correction=True),
         lambda: optax.rmsprop(0.01, decay=0.8, eps=1e-6, eps_in_sqrt=False,
                               bias_correction=True)),
        ("nadam", lambda: jt.adam(0.02, b1=0.8, b2=0.95, eps=1e-6, nesterov=True),
         lambda: optax.adam(0.02, b1=0.8, b2=0.95, eps=1e-6, nesterov=True)),
        ("adam", lambda: jt.adam(0.02, b1=0.8, b2=0.95, eps=1e-6),
         lambda: optax.adam(0.02, b1=0.8, b2=0.95, eps=1e-6)),
        ("adamw", lambda: jt.adamw(0.02, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1),
         lambda: optax.adamw(0.02, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1)),
        ("adamw_mask",
         lambda: jt.adamw(_lr_schedule, weight_decay=0.1, mask=_kernels_only),
         lambda: optax.adamw(_lr_schedule, weight_decay=0.1, mask=_kernels_only)),
        ("trace", *then_step(lambda: jt.trace(0.7), lambda: optax.trace(0.7))),
        ("trace_nesterov", *then_step(lambda: jt.trace(0.7, nesterov=True),
                                      lambda: optax.trace(0.7, nesterov=True))),
        ("scale_by_adagrad", *then_step(lambda: jt.scale_by_adagrad(0.3, eps=1e-6),
                                        lambda: optax.scale_by_rss(0.3, eps=1e-6), -0.2)),
        ("scale_by_rms", *then_step(lambda: jt.scale_by_rms(0.85, eps=1e-6),
                                    lambda: optax.scale_by_rms(0.85, eps=1e-6), -0.01)),
        ("scale_by_rms_centered",
         *then_step(lambda: jt.scale_by_rms(0.85, eps=1e-6, centered=True),
                    lambda: optax.scale_by_stddev(0.85, eps=1e-6), -0.01)),
        ("scale_by_adam",
         *then_step(lambda: jt.scale_by_adam(0.8, 0.95, eps=1e-6, eps_root=1e-8),
                    lambda: optax.scale_by_adam(0.8, 0.95, eps=1e-6, eps_root=1e-8), -0.02)),
        ("clip", *then_step(lambda: jt.clip(0.5), lambda: optax.clip(0.5))),
        ("clip_by_global_norm", *then_step(lambda: jt.clip_by_global_norm(6.0),
                                           lambda: optax.clip_by_global_norm(6.0))),
        ("normalize_by_global_norm",
         *then_step(lambda: jt.normalize_by_global_norm(1e-5),
                    lambda: optax.normalize_by_update_norm(1.0, 1e-5), -0.1)),
        ("adaptive_grad_clip",
         *then_step(lambda: jt.adaptive_grad_clip(0.5, eps=1e-2),
                    lambda: optax.adaptive_grad_clip(0.5, eps=1e-2))),
        ("add_decayed_weights",
         *then_step(lambda: jt.add_decayed_weights(0.1, mask=DECAY_MASK),
                    lambda: optax.add_decayed_weights(0.1, mask=DECAY_MASK))),
        ("scale", lambda: jt.scale(-0.05), lambda: optax.scale(-0.05)),
        ("scale_by_learning_rate", lambda: jt.scale_by_learning_rate(0.05),
         lambda: optax.scale_by_learning_rate(0.05)),
        ("scale_by_learning_rate_schedule", lambda: jt.scale_by_learning_rate(_lr_schedule),
         lambda: optax.scale_by_learning_rate(_lr_schedule)),
    ]
    return rows


# One module per optimizer family, each defining ROWS in the format above.
FAMILIES: tuple[str, ...] = ()


def _family_rows():
    import importlib

    return [row for family in FAMILIES
            for row in importlib.import_module(f"cases_{family}").ROWS]


CASES = _cases() + _family_rows()
assert len({name for name, _, _ in CASES}) == len(CASES), "two table rows share a name"


def pytest_generate_tests(metafunc):
    # Any test taking `tx_case` runs over the whole table, one id per row.
    if "tx_case" in metafunc.fixturenames:
        metafunc.parametrize("tx_case", CASES, ids=[name for name, _, _ in CASES])
