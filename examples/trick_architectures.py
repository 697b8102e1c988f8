"""Architectures: an MLP, the MNIST-1D paper's CNN and a small ResNet, same budget.

The lesson: choose an architecture proven for the task and sized to the data;
ResNet-style skips let a network adapt its effective depth. MNIST-1D's digits are
shifted, scaled and noisy 1-D signals, where translation-equivariant convolutions
should beat a dense network of similar size. Each model trains with Adam for the
same number of epochs. Measured: test accuracy and parameter count.

Usage: ``python examples/trick_architectures.py [--quick]``
"""

from __future__ import annotations

import common as c
import jax
import numpy as np

import jtricks as jt


def mlp_apply(params, x):
    return c.mlp_apply(params, [{}] * len(params), x)[0]


MODELS = {"MLP 100-100": (lambda k: c.mlp_init(k, (40, 100, 100, 10))[0], mlp_apply),
          "CNN (paper)": (c.cnn_init, c.cnn_apply),
          "ResNet 3 blocks": (c.resnet_init, c.resnet_apply)}
SIZE = {"tiny": dict(epochs=1, names=("MLP 100-100", "CNN (paper)")),
        "quick": dict(epochs=12, names=tuple(MODELS)), "full": dict(epochs=60, names=tuple(MODELS))}


def run(size, out, seed):
    cfg = SIZE[size]
    d = c.mnist1d()
    hists, counts = {}, {}
    for name in cfg["names"]:
        init, apply = MODELS[name]
        params = init(jax.random.key(seed))
        counts[name] = sum(p.size for p in jax.tree.leaves(params))
        step = jt.train.make_step(c.stateless_loss(apply), jt.adam(3e-3))
        st = step.init(params, jax.random.key(seed + 1))
        ev = c.eval_stateless(apply, {"test": d["test"]})
        fn = c.jit(lambda st, step=step, ev=ev: c.train_epochs(
            step, st, d["train"], epochs=cfg["epochs"], batch_size=100,
            key=jax.random.key(seed + 2), evaluate=ev)[1])
        hists[name] = c.host(fn(st))
    fig, (a1, a2) = c.figure()
    epochs = np.arange(1, cfg["epochs"] + 1)
    for name, h in hists.items():
        a1.plot(epochs, h["train_loss"], label=f"{name} ({counts[name]:,} params)")
        a2.plot(epochs, h["test_accuracy"], label=name)
    a1.set(title="training loss", xlabel="epoch", yscale="log")
    a2.set(title="test accuracy, MNIST-1D", xlabel="epoch")
    plot = c.save(fig, out, "architectures.png")
    acc = {n: float(h["test_accuracy"][-1]) for n, h in hists.items()}
    fmt = lambda n: f"{n}: test {acc[n]:.3f} ({counts[n]:,} params)"
    return [c.row(
        "10. architectures", f"MNIST-1D, {cfg['epochs']} epochs of Adam each: test accuracy",
        "; ".join(fmt(n) for n in acc if n != "MLP 100-100"), fmt("MLP 100-100"),
        min(a for n, a in acc.items() if n != "MLP 100-100") > acc["MLP 100-100"], plot,
        test_accuracy=acc, params=counts)]


if __name__ == "__main__":
    c.main_for(run, "architectures", __doc__)
