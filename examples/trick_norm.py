"""Batch, layer and weight normalisation in a deep sigmoid MLP.

The lesson: batch normalisation subtracts the mini-batch mean and divides by its
standard deviation, as a layer after the weights and before the activation, and gives
higher final accuracy and faster training; weight and layer normalisation are the
alternatives. Here an 8-layer sigmoid MLP (width 64) on MNIST-1D trains with SGD +
momentum for the same number of epochs with no normalisation, ``jt.layers.batch_norm``,
``jt.layers.layer_norm`` and ``jt.layers.weight_norm``. Measured: validation accuracy
per epoch, the epoch each first reaches 50%, and test accuracy at the end.

Usage: ``python examples/trick_norm.py [--quick]``
"""

from __future__ import annotations

import common as c
import jax
import numpy as np

import jtricks as jt

NORMS = (None, "batch", "layer", "weight")
SIZE = {"tiny": dict(epochs=2, norms=NORMS[:2]), "quick": dict(epochs=12, norms=NORMS),
        "full": dict(epochs=80, norms=NORMS)}
SIZES = (40,) + (64,) * 8 + (10,)


def first_epoch(curve, level):
    hit = np.nonzero(curve >= level)[0]
    return int(hit[0]) + 1 if len(hit) else None


def run(size, out, seed):
    cfg = SIZE[size]
    d = c.mnist1d(val=1000)
    act = jax.nn.sigmoid
    loss, ev = c.mlp_loss(act), c.eval_mlp({"val": d["val"], "test": d["test"]}, act=act)
    hists = {}
    for norm in cfg["norms"]:
        params, state = c.mlp_init(jax.random.key(seed), SIZES, jt.init.glorot_normal(), norm)
        step = jt.train.make_step(loss, jt.sgd(0.05, momentum=0.9))
        st = step.init(params, jax.random.key(seed + 1), state)
        run_ = c.jit(lambda st, step=step: c.train_epochs(
            step, st, d["train"], epochs=cfg["epochs"], batch_size=100,
            key=jax.random.key(seed + 2), evaluate=ev)[1])
        hists[norm or "none"] = c.host(run_(st))

    fig, (a1, a2) = c.figure()
    epochs = np.arange(1, cfg["epochs"] + 1)
    for name, h in hists.items():
        a1.plot(epochs, h["train_loss"], label=name)
        a2.plot(epochs, h["val_accuracy"], label=name)
    a1.set(title="training loss, 8 sigmoid layers", xlabel="epoch", yscale="log")
    a2.set(title="validation accuracy", xlabel="epoch")
    plot = c.save(fig, out, "norm.png")
    acc = {n: float(h["test_accuracy"][-1]) for n, h in hists.items()}
    reach = {n: first_epoch(h["val_accuracy"], 0.5) for n, h in hists.items()}
    fmt = lambda n: f"{n}: test {acc[n]:.3f}, 50% val at epoch {reach[n]}"
    return [c.row(
        "4. batch / layer / weight normalisation",
        f"8-layer sigmoid MLP on MNIST-1D, {cfg['epochs']} epochs of SGD+momentum: test "
        "accuracy and the first epoch with 50% validation accuracy",
        "; ".join(fmt(n) for n in hists if n != "none"), fmt("none"),
        acc["batch"] > acc["none"] + 0.02, plot, test_accuracy=acc, epoch_to_50=reach)]


if __name__ == "__main__":
    c.main_for(run, "norm", __doc__)
