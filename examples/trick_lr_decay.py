"""Learning-rate decay: constant vs x0.98 per epoch vs cosine vs reduce-on-plateau.

The lesson: large steps early, small steps to fine-tune at the end; multiply the rate
by e.g. 0.98 after every epoch, or use a more elaborate schedule. Decay pays off
where a constant rate is high enough that the loss stops falling and only jitters
in the mini-batch noise: here SGD + momentum 0.9 from a high rate (0.3) trains an
MLP on MNIST-1D under four schedules: ``constant``;
``exponential_decay(lr, steps_per_epoch, 0.98, staircase=True)``; ``cosine_decay``
to zero; and ``jt.reduce_on_plateau`` (halves the rate when the epoch's mean
training loss stops improving for two epochs).

The four runs are one vmapped program: every schedule is the same transform,
``sgd(exponential_decay(lr, epoch, rate) * cosine_decay(1, steps, alpha))`` followed
by ``reduce_on_plateau(0.5, ..., min_scale=m)``, and only the numbers differ (rate 1,
alpha 1 or min_scale 1 switch a part off). Measured: the mean training loss of the
last epoch, and test accuracy.

Usage: ``python examples/trick_lr_decay.py [--quick]``
"""

from __future__ import annotations

import common as c
import jax
import jax.numpy as jnp
import numpy as np

import jtricks as jt

SIZE = {"tiny": dict(epochs=2), "quick": dict(epochs=20), "full": dict(epochs=100)}
LR = 0.3
# name -> (decay per epoch, cosine's final fraction, the plateau's lowest scale)
SCHEDULES = {"constant": (1.0, 1.0, 1.0), "x0.98 per epoch": (0.98, 1.0, 1.0),
             "cosine": (1.0, 0.0, 1.0), "reduce on plateau": (1.0, 1.0, 0.0)}


def transform(rate, alpha, min_scale, epochs, per_epoch):
    s = jt.schedules
    lr = (s.exponential_decay(LR, per_epoch, rate, staircase=True)
          * s.cosine_decay(1.0, epochs * per_epoch, alpha))
    return jt.chain(jt.sgd(lr, momentum=0.9), jt.reduce_on_plateau(
        0.5, patience=2, accumulation_size=per_epoch, min_scale=min_scale))


def run(size, out, seed):
    cfg = SIZE[size]
    d = c.mnist1d(val=1000)
    per_epoch = len(d["train"][0]) // 100
    params, state = c.mlp_init(jax.random.key(seed), (40, 100, 100, 10))
    loss, ev = c.mlp_loss(), c.eval_mlp({"test": d["test"]})

    def one(rate, alpha, min_scale):
        step = jt.train.make_step(loss, transform(rate, alpha, min_scale, cfg["epochs"],
                                                  per_epoch))
        st = step.init(params, jax.random.key(seed + 1), state)
        return c.train_epochs(step, st, d["train"], epochs=cfg["epochs"], batch_size=100,
                              key=jax.random.key(seed + 2), evaluate=ev)[1]

    numbers = jnp.asarray(list(SCHEDULES.values()), jnp.float32).T
    h = c.host(c.jit(jax.vmap(one))(*numbers))
    names = list(SCHEDULES)
    fig, (a1, a2) = c.figure()
    epochs = np.arange(1, cfg["epochs"] + 1)
    for i, name in enumerate(names):
        a1.plot(epochs, h["train_loss"][i], label=name)
        a2.plot(epochs, h["test_accuracy"][i], label=name)
    a1.set(title=f"training loss (SGD + momentum, lr {LR})", xlabel="epoch", yscale="log")
    a2.set(title="test accuracy", xlabel="epoch")
    plot = c.save(fig, out, "lr_decay.png")
    loss_end = dict(zip(names, np.nan_to_num(h["train_loss"][:, -1], nan=np.inf).tolist()))
    acc = dict(zip(names, h["test_accuracy"][:, -1].tolist()))
    fmt = lambda n: f"{n}: loss {loss_end[n]:.3f}, test {acc[n]:.3f}"
    decayed = names[1:]
    return [c.row(
        "9. learning-rate decay", f"MLP on MNIST-1D, {cfg['epochs']} epochs of SGD+momentum "
        f"from lr {LR}: last epoch's training loss, test accuracy",
        "; ".join(fmt(n) for n in decayed), fmt("constant"),
        max(loss_end[n] for n in decayed) < loss_end["constant"], plot,
        train_loss=loss_end, test_accuracy=acc)]


if __name__ == "__main__":
    c.main_for(run, "lr_decay", __doc__)
