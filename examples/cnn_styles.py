"""The same small CNN trained with jtricks in plain JAX, flax linen, flax nnx and equinox.

The MNIST-1D paper's CNN (three ReLU conv layers of 25 channels, kernels 5, 3, 3,
stride 2, then a dense layer), written four ways, each trained with ``jt.adam(1e-2)``
on the same batches:

- plain JAX: dict params from ``jt.init`` (``common.cnn_init``), ``tx.update`` and
  ``jt.apply_updates``;
- flax linen: ``flax.training.train_state.TrainState`` holding a jtricks optimizer,
  jtricks initialisers as ``kernel_init``;
- flax nnx: ``nnx.Optimizer(model, jt.adam(...), wrt=nnx.Param)``, jtricks
  initialisers as ``kernel_init``;
- equinox: ``eqx.filter`` for the params, ``eqx.apply_updates``.

``--compare-optax`` trains each a second time with ``optax.adam(1e-2)`` from the same
initial weights: jtricks is a drop-in, so the accuracies agree. Writes
``runs/cnn_styles.json`` as ``{style: {"jtricks": acc, "optax": acc}}``.

Usage: ``python examples/cnn_styles.py [--quick] [--compare-optax] [--styles jax,nnx]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common as c
import jax
import jax.numpy as jnp
import numpy as np

import jtricks as jt

STEPS = {"tiny": 20, "quick": 300, "full": 3000}
KERNELS = (5, 3, 3)


def batches(n, steps, seed):
    rng = np.random.default_rng(seed)
    return [rng.choice(n, 100, replace=False) for _ in range(steps)]


def plain_jax(tx, data, order, seed):
    params, (x, y) = c.cnn_init(jax.random.key(seed)), data["train"]
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, xb, yb):
        grads = jax.grad(lambda p: c.cross_entropy(c.cnn_apply(p, xb), yb))(params)
        updates, opt = tx.update(grads, opt, params)
        return jt.apply_updates(params, updates), opt

    for rows in order:
        params, opt = step(params, opt, x[rows], y[rows])
    return float(c.accuracy(c.cnn_apply(params, data["test"][0]), data["test"][1]))


def linen(tx, data, order, seed):
    import flax.linen as nn
    from flax.training.train_state import TrainState

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = x[..., None]
            for ks in KERNELS:
                h = nn.relu(nn.Conv(25, (ks,), strides=2, padding=[(1, 1)],
                                    kernel_init=jt.init.he_normal())(h))
            return nn.Dense(10, kernel_init=jt.init.he_normal())(h.reshape(len(h), -1))

    (x, y), model = data["train"], CNN()
    params = model.init(jax.random.key(seed), x[:1])["params"]
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def step(state, xb, yb):
        loss = lambda p: c.cross_entropy(state.apply_fn({"params": p}, xb), yb)
        return state.apply_gradients(grads=jax.grad(loss)(state.params))

    for rows in order:
        state = step(state, x[rows], y[rows])
    logits = model.apply({"params": state.params}, data["test"][0])
    return float(c.accuracy(logits, data["test"][1]))


def nnx_style(tx, data, order, seed):
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, rngs):
            conv = lambda c_in, ks: nnx.Conv(c_in, 25, (ks,), strides=2, padding=[(1, 1)],
                                             kernel_init=jt.init.he_normal(), rngs=rngs)
            self.conv1, self.conv2, self.conv3 = conv(1, 5), conv(25, 3), conv(25, 3)
            self.out = nnx.Linear(125, 10, kernel_init=jt.init.he_normal(), rngs=rngs)

        def __call__(self, x):
            h = x[..., None]
            for conv in (self.conv1, self.conv2, self.conv3):
                h = jax.nn.relu(conv(h))
            return self.out(h.reshape(len(h), -1))

    (x, y), model = data["train"], CNN(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xb, yb):
        grads = nnx.grad(lambda m: c.cross_entropy(m(xb), yb))(model)
        optimizer.update(model, grads)

    for rows in order:
        step(model, optimizer, jnp.asarray(x[rows]), jnp.asarray(y[rows]))
    return float(c.accuracy(model(data["test"][0]), data["test"][1]))


def equinox_style(tx, data, order, seed):
    import equinox as eqx

    class CNN(eqx.Module):
        convs: list
        out: eqx.nn.Linear

        def __init__(self, key):
            k = jax.random.split(key, 4)
            self.convs = [eqx.nn.Conv1d(c_in, 25, ks, stride=2, padding=1, key=k[i])
                          for i, (c_in, ks) in enumerate(zip((1, 25, 25), KERNELS))]
            self.out = eqx.nn.Linear(125, 10, key=k[3])

        def __call__(self, x):  # one signal: equinox layers work per example
            h = x[None]
            for conv in self.convs:
                h = jax.nn.relu(conv(h))
            return self.out(h.reshape(-1))

    (x, y), model = data["train"], CNN(jax.random.key(seed))
    opt = tx.init(eqx.filter(model, eqx.is_inexact_array))
    loss = lambda m, xb, yb: c.cross_entropy(jax.vmap(m)(xb), yb)

    @eqx.filter_jit
    def step(model, opt, xb, yb):
        grads = eqx.filter_grad(loss)(model, xb, yb)
        updates, opt = tx.update(grads, opt, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt

    for rows in order:
        model, opt = step(model, opt, x[rows], y[rows])
    return float(c.accuracy(jax.vmap(model)(data["test"][0]), data["test"][1]))


STYLES = {"jax": plain_jax, "linen": linen, "nnx": nnx_style, "equinox": equinox_style}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--quick", action="store_const", const="quick", dest="size", default="full")
    p.add_argument("--tiny", action="store_const", const="tiny", dest="size")
    p.add_argument("--compare-optax", action="store_true",
                   help="train each style with optax.adam too (pip install optax)")
    p.add_argument("--styles", default=",".join(STYLES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=c.ROOT / "runs" / "cnn_styles.json")
    args = p.parse_args(argv)
    data = c.mnist1d()
    order = batches(len(data["train"][0]), STEPS[args.size], args.seed)
    libraries = {"jtricks": jt.adam(1e-2)}
    if args.compare_optax:
        import optax

        libraries["optax"] = optax.adam(1e-2)
    results = {}
    print(f"MNIST-1D test accuracy after {len(order)} steps of adam(1e-2), batch 100")
    for style in args.styles.split(","):
        t0 = time.perf_counter()
        results[style] = {lib: STYLES[style](tx, data, order, args.seed)
                          for lib, tx in libraries.items()}
        print(f"{style:<8} " + "  ".join(f"{lib} {acc:.4f}" for lib, acc in
                                         results[style].items())
              + f"  ({time.perf_counter() - t0:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
