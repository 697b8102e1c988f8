"""Preventing overfitting: early stopping, an L2 penalty, EMA, SWA and an ensemble.

The lesson: balance parameters against samples; stop when validation error starts to
rise; add a penalty on large weights to the loss; average models. Overfitting needs
many parameters per sample and training past the best epoch: a 2x256 ReLU MLP
(~77k parameters) learns MNIST-1D from 500 signals (150 parameters per signal)
with Adam for long after its validation loss bottoms out.

One vmapped program trains six members: five with different seeds and no penalty
(their averaged probabilities are the ensemble) and one with
``1e-3 * jt.regularization.l2(params)`` added to the loss. Every member also keeps
an EMA of its weights (``jt.averaging.ema(0.99)``) and an SWA average of its
epoch-end weights over the last quarter (``jt.averaging.swa``), both updated inside
the training step. Evaluations (500 validation and 1,000 test signals) run every
third epoch. Early stopping is ``jt.train.EarlyStopping(4)`` (four evaluations) on
the plain member's validation loss, restoring the best evaluation: fed the recorded
validation curve, it picks what ``jt.train.fit(..., early_stopping=...)`` would
restore, without training again.

Measured, against the plain member's last epoch: test cross-entropy (the quantity
that rises when a model overfits; here accuracy keeps creeping up while the loss
climbs, as in the MNIST-1D paper's own training logs) and test accuracy. The claim
holds when at least four of the five tricks lower the test loss.

Usage: ``python examples/trick_overfitting.py [--quick]``
"""

from __future__ import annotations

from typing import NamedTuple

import common as c
import jax
import jax.numpy as jnp
import numpy as np

import jtricks as jt

SIZE = {"tiny": dict(epochs=3), "quick": dict(epochs=60), "full": dict(epochs=300)}
MEMBERS, L2, N_TRAIN, BATCH = 5, 1e-3, 500, 50
EVERY = 3  # epochs between evaluations (they cost more than the training steps)
SIZES = (40, 256, 256, 10)


def apply(params, x):
    return c.mlp_apply(params, [{}] * len(params), x)[0]


class EmaAndSwa(NamedTuple):
    """Two parameter averages kept side by side (a pytree, so the step takes it as
    data); ``value`` is the EMA, ``swa_value`` the SWA."""

    ema: jt.averaging.Ema
    swa: jt.averaging.Swa

    def init(self, params):
        return self.ema.init(params), self.swa.init(params)

    def update(self, params, state):
        return self.ema.update(params, state[0]), self.swa.update(params, state[1])

    def value(self, state, like=None):
        return self.ema.value(state[0], like=like)

    def swa_value(self, state, like=None):
        return self.swa.value(state[1], like=like)


def members(d, cfg, seed):
    """Five plain members and one with the L2 penalty; one program."""
    per_epoch = N_TRAIN // BATCH
    averaging = EmaAndSwa(jt.averaging.ema(0.99),
                          jt.averaging.swa(max(1, 3 * cfg["epochs"] * per_epoch // 4),
                                           per_epoch))
    penalty = jnp.array([0.0] * MEMBERS + [L2])
    keys = jax.random.split(jax.random.key(seed), MEMBERS + 1)
    (xv, yv), (xt, yt) = d["val"], d["test"]

    def evaluate(step, state):
        out = {}
        for name, params in [("raw", state.params), ("ema", step.eval_params(state)),
                             ("swa", averaging.swa_value(state.averages, like=state.params))]:
            logits = apply(params, xt)
            out[f"{name}_test_accuracy"] = c.accuracy(logits, yt)
            out[f"{name}_test_loss"] = c.cross_entropy(logits, yt)
        out["val_loss"] = c.cross_entropy(apply(state.params, xv), yv)
        out["test_probs"] = jax.nn.softmax(apply(state.params, xt))
        return out

    def one(pen, key):
        step = jt.train.make_step(c.stateless_loss(apply, pen), jt.adam(1e-3),
                                  averaging=averaging)
        st = step.init(c.mlp_init(key, SIZES)[0], key)
        return c.train_epochs(step, st, d["train"], epochs=cfg["epochs"], batch_size=BATCH,
                              key=jax.random.fold_in(key, 1), evaluate=evaluate,
                              eval_every=EVERY)[1]

    return c.host(c.jit(jax.vmap(one))(penalty, keys))


def early_stop(val_loss, test):
    """The evaluation ``EarlyStopping(4)`` on ``val_loss`` restores (patience: four
    evaluations, 12 epochs), and the test numbers ``test`` (a dict of curves) there."""
    rule = jt.train.EarlyStopping(4)
    state = rule.init({k: v[0] for k, v in test.items()})
    for epoch, v in enumerate(val_loss):
        state = rule.update(state, v, {k: x[epoch] for k, x in test.items()})
        if bool(state.stop):
            break
    return int(state.best_epoch), {k: float(v) for k, v in state.best_snapshot.items()}


def run(size, out, seed):
    cfg = SIZE[size]
    d = c.mnist1d(n_train=N_TRAIN, val=500)
    h = members(d, cfg, seed)
    yt = d["test"][1]
    probs = h["test_probs"][:MEMBERS].mean(0)  # [epochs, test, classes]
    picked = np.take_along_axis(probs, yt[None, :, None], axis=-1)[..., 0]
    ens_loss = -np.log(np.maximum(picked, 1e-30)).mean(-1)
    ens_acc = (probs.argmax(-1) == yt).mean(-1)
    best_epoch, stopped = early_stop(h["val_loss"][0], {
        "loss": h["raw_test_loss"][0], "accuracy": h["raw_test_accuracy"][0]})
    res = {"plain (last epoch)": (h["raw_test_loss"][0, -1], h["raw_test_accuracy"][0, -1]),
           "early stopping": (stopped["loss"], stopped["accuracy"]),
           f"L2 penalty {L2:g}": (h["raw_test_loss"][MEMBERS, -1],
                                  h["raw_test_accuracy"][MEMBERS, -1]),
           "EMA 0.99": (h["ema_test_loss"][0, -1], h["ema_test_accuracy"][0, -1]),
           "SWA (last quarter)": (h["swa_test_loss"][0, -1], h["swa_test_accuracy"][0, -1]),
           f"ensemble of {MEMBERS}": (ens_loss[-1], ens_acc[-1])}
    res = {k: (float(a), float(b)) for k, (a, b) in res.items()}

    fig, (a1, a2) = c.figure()
    epochs = EVERY * np.arange(1, len(h["val_loss"][0]) + 1)
    a1.plot(epochs, h["train_loss"][0], label="train (plain)")
    a1.plot(epochs, h["val_loss"][0], label="validation (plain)")
    a1.axvline(EVERY * (best_epoch + 1), color="gray", ls="--", label="early-stopping pick")
    a1.set(title="loss: overfitting after the minimum", xlabel="epoch", yscale="log")
    for label, curve in [("plain", h["raw_test_loss"][0]), ("EMA", h["ema_test_loss"][0]),
                         (f"L2 {L2:g}", h["raw_test_loss"][MEMBERS]),
                         ("SWA", h["swa_test_loss"][0]), (f"ensemble of {MEMBERS}", ens_loss)]:
        a2.plot(epochs, curve, label=label)
    a2.set(title="test cross-entropy", xlabel="epoch", yscale="log")
    plot = c.save(fig, out, "overfitting.png")
    plain = res["plain (last epoch)"]
    tricks = [k for k in res if k != "plain (last epoch)"]
    fmt = lambda k: f"{k}: loss {res[k][0]:.3f}, acc {res[k][1]:.3f}"
    return [c.row(
        "6. preventing overfitting", f"2x256 MLP, {N_TRAIN} MNIST-1D signals, "
        f"{cfg['epochs']} epochs of Adam: test cross-entropy and accuracy",
        "; ".join(fmt(k) for k in tricks), fmt("plain (last epoch)"),
        sum(res[k][0] < plain[0] for k in tricks) >= len(tricks) - 1, plot,
        test_loss={k: v[0] for k, v in res.items()},
        test_accuracy={k: v[1] for k, v in res.items()},
        best_epoch=EVERY * (best_epoch + 1))]


if __name__ == "__main__":
    c.main_for(run, "overfitting", __doc__)
