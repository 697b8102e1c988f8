"""Optimisers on the same budget, each tuned by one vmapped learning-rate sweep.

The lesson: SGD on random mini-batches, w <- w - lr * grad; momentum keeps a velocity
(gamma = 0.9); dividing by the gradient's norm uses the direction only
(``jt.normalized_sgd``); Adagrad, RMSProp and Adam adapt the step per parameter; "if
unsure, use Adam". Each optimizer trains the same MLP on MNIST-1D for the same
number of steps at five learning rates (a factor ~3 apart around a usual value);
the five runs are one program, ``jax.vmap`` over the transform's learning-rate leaf.
Measured: the best validation accuracy of each optimizer, at its best rate, and that
rate's test accuracy.

Usage: ``python examples/trick_optimizers.py [--quick]``
"""

from __future__ import annotations

import common as c
import jax
import jax.numpy as jnp
import numpy as np

import jtricks as jt

# name -> (learning rate -> transform, the centre of the sweep)
OPTIMIZERS = {
    "sgd": (lambda lr: jt.sgd(lr), 0.3),
    "momentum 0.9": (lambda lr: jt.sgd(lr, momentum=0.9), 0.03),
    "nesterov 0.9": (lambda lr: jt.sgd(lr, momentum=0.9, nesterov=True), 0.03),
    "normalized_sgd": (lambda lr: jt.normalized_sgd(lr), 0.1),
    "adagrad": (lambda lr: jt.adagrad(lr), 0.03),
    "rmsprop": (lambda lr: jt.rmsprop(lr), 1e-3),
    "adam": (lambda lr: jt.adam(lr), 3e-3),
}
SIZE = {"tiny": dict(epochs=1, grid=3, names=("sgd", "adam")),
        "quick": dict(epochs=10, grid=5, names=tuple(OPTIMIZERS)),
        "full": dict(epochs=40, grid=7, names=tuple(OPTIMIZERS))}


def run(size, out, seed):
    cfg = SIZE[size]
    d = c.mnist1d(val=1000)
    params, state = c.mlp_init(jax.random.key(seed), (40, 100, 100, 10))
    loss, ev = c.mlp_loss(), c.eval_mlp({"val": d["val"], "test": d["test"]})
    half = (cfg["grid"] - 1) / 4
    factors = 10.0 ** np.linspace(-half, half, cfg["grid"])  # 10**0.5 apart
    results = {}
    for name in cfg["names"]:
        make, centre = OPTIMIZERS[name]
        def one(lr, make=make):
            step = jt.train.make_step(loss, make(lr))
            st = step.init(params, jax.random.key(seed + 1), state)
            return c.train_epochs(step, st, d["train"], epochs=cfg["epochs"], batch_size=100,
                                  key=jax.random.key(seed + 2), evaluate=ev)[1]
        lrs = centre * factors
        h = c.host(c.jit(jax.vmap(one))(jnp.asarray(lrs, jnp.float32)))
        final = np.nan_to_num(h["val_accuracy"][:, -1])
        i = int(np.argmax(final))
        results[name] = {"lrs": lrs.tolist(), "val": final.tolist(), "best_lr": float(lrs[i]),
                         "best_val": float(final[i]), "test": float(h["test_accuracy"][i, -1]),
                         "curve": h["val_accuracy"][i]}
    fig, (a1, a2) = c.figure()
    for name, r in results.items():
        a1.plot(np.arange(1, cfg["epochs"] + 1), r.pop("curve"),
                label=f"{name} (lr {r['best_lr']:.2g})")
        a2.semilogx(r["lrs"], r["val"], "o-", label=name)
    a1.set(title="validation accuracy at the best rate", xlabel="epoch")
    a2.set(title="final validation accuracy vs learning rate", xlabel="learning rate")
    plot = c.save(fig, out, "optimizers.png")
    ranked = sorted(results, key=lambda n: -results[n]["best_val"])
    fmt = lambda n: f"{n} {results[n]['best_val']:.3f} (lr {results[n]['best_lr']:.2g})"
    return [c.row(
        "7. optimisers", f"MLP on MNIST-1D, {cfg['epochs']} epochs, best of a "
        f"{cfg['grid']}-rate sweep each: final validation accuracy",
        "ranking: " + ", ".join(fmt(n) for n in ranked),
        f"plain SGD: {fmt('sgd')}",
        results["adam"]["best_val"] >= results[ranked[0]]["best_val"] - 0.02, plot,
        results=results)]


if __name__ == "__main__":
    c.main_for(run, "optimizers", __doc__)
