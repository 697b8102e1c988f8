"""Learning-rate decay: constant vs x0.98 per epoch vs cosine vs reduce-on-plateau.

The lesson: large steps early, small steps to fine-tune at the end; multiply the rate
by e.g. 0.98 after every epoch, or use a more elaborate schedule. The same MLP trains
on MNIST-1D with SGD + momentum from the same initial rate under four schedules:
``constant``; ``exponential_decay(lr, steps_per_epoch, 0.98, staircase=True)``;
``cosine_decay`` to zero; and ``jt.reduce_on_plateau`` (halves the rate when the
epoch's mean training loss stops improving). Measured: the final training loss
and test accuracy.

Usage: ``python examples/trick_lr_decay.py [--quick]``
"""

from __future__ import annotations

import common as c
import jax
import numpy as np

import jtricks as jt

SIZE = {"tiny": dict(epochs=2, only=("constant", "cosine")), "quick": dict(epochs=25),
        "full": dict(epochs=100)}
LR = 0.1


def schedules(epochs, per_epoch):
    s = jt.schedules
    return {
        "constant": jt.sgd(LR, momentum=0.9),
        "x0.98 per epoch": jt.sgd(s.exponential_decay(LR, per_epoch, 0.98, staircase=True),
                                  momentum=0.9),
        "cosine": jt.sgd(s.cosine_decay(LR, epochs * per_epoch), momentum=0.9),
        "reduce on plateau": jt.chain(jt.sgd(LR, momentum=0.9), jt.reduce_on_plateau(
            0.5, patience=2, accumulation_size=per_epoch)),
    }


def run(size, out, seed):
    cfg = SIZE[size]
    d = c.mnist1d(val=1000)
    per_epoch = len(d["train"][0]) // 100
    params, state = c.mlp_init(jax.random.key(seed), (40, 256, 256, 10))
    loss, ev = c.mlp_loss(), c.eval_mlp({"val": d["val"], "test": d["test"]})
    hists = {}
    for name, tx in schedules(cfg["epochs"], per_epoch).items():
        if name not in cfg.get("only", (name,)):
            continue
        step = jt.train.make_step(loss, tx)
        st = step.init(params, jax.random.key(seed + 1), state)
        fn = c.jit(lambda st, step=step: c.train_epochs(
            step, st, d["train"], epochs=cfg["epochs"], batch_size=100,
            key=jax.random.key(seed + 2), evaluate=ev)[1])
        hists[name] = c.host(fn(st))
    fig, (a1, a2) = c.figure()
    epochs = np.arange(1, cfg["epochs"] + 1)
    for name, h in hists.items():
        a1.plot(epochs, h["train_loss"], label=name)
        a2.plot(epochs, h["test_accuracy"], label=name)
    a1.set(title="training loss (SGD + momentum)", xlabel="epoch", yscale="log")
    a2.set(title="test accuracy", xlabel="epoch")
    plot = c.save(fig, out, "lr_decay.png")
    loss_end = {n: float(h["train_loss"][-1]) for n, h in hists.items()}
    acc = {n: float(h["test_accuracy"][-1]) for n, h in hists.items()}
    fmt = lambda n: f"{n}: loss {loss_end[n]:.3f}, test {acc[n]:.3f}"
    decayed = [n for n in hists if n != "constant"]
    return [c.row(
        "9. learning-rate decay", f"MLP on MNIST-1D, {cfg['epochs']} epochs of SGD+momentum "
        f"from lr {LR}: final training loss and test accuracy",
        "; ".join(fmt(n) for n in decayed), fmt("constant"),
        max(acc[n] for n in decayed) > acc["constant"], plot,
        train_loss=loss_end, test_accuracy=acc)]


if __name__ == "__main__":
    c.main_for(run, "lr_decay", __doc__)
