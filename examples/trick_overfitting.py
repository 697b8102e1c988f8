"""Preventing overfitting: early stopping, an L2 penalty, EMA, SWA and an ensemble.

The lesson: balance parameters against samples; stop when validation error starts to
rise; add a penalty on large weights to the loss; average models. A 2x256 ReLU MLP
(~77k parameters) learns MNIST-1D from 1,000 signals with Adam for long enough to
overfit. One vmapped program trains six members: five with different seeds and no
penalty (their averaged probabilities are the ensemble, ``jt.averaging.ensemble_predict``)
and one with ``1e-3 * jt.regularization.l2(params)`` added to the loss; every member
also keeps an EMA of its weights (``jt.averaging.ema``). A second run uses
``jt.averaging.swa`` over the last quarter, and a third ``jt.train.fit`` with
``jt.train.EarlyStopping`` on the validation accuracy (restoring the best epoch).
Measured: test accuracy of each against the plain member's last epoch.

Usage: ``python examples/trick_overfitting.py [--quick]``
"""

from __future__ import annotations

import common as c
import jax
import jax.numpy as jnp
import numpy as np

import jtricks as jt

SIZE = {"tiny": dict(epochs=3), "quick": dict(epochs=60), "full": dict(epochs=200)}
MEMBERS, L2 = 5, 1e-3
SIZES = (40, 256, 256, 10)


def apply(params, x):
    return c.mlp_apply(params, [{}] * len(params), x)[0]


def members(d, cfg, seed, splits):
    """Five plain members and one with the L2 penalty, each with an EMA; one program."""
    penalty = jnp.array([0.0] * MEMBERS + [L2])
    keys = jax.random.split(jax.random.key(seed), MEMBERS + 1)

    def evaluate(step, state):
        out = c.eval_stateless(apply, splits)(step, state)  # the EMA weights
        raw = {"test_raw_accuracy": c.accuracy(apply(state.params, splits["test"][0]),
                                               splits["test"][1]),
               "test_probs": jax.nn.softmax(apply(state.params, splits["test"][0]))}
        return {**out, **raw}

    def one(pen, key):
        step = jt.train.make_step(c.stateless_loss(apply, pen), jt.adam(1e-3),
                                  averaging=jt.averaging.ema(0.99))
        st = step.init(c.mlp_init(key, SIZES)[0], key)
        return c.train_epochs(step, st, d["train"], epochs=cfg["epochs"], batch_size=50,
                              key=jax.random.fold_in(key, 1), evaluate=evaluate)[1]

    return c.host(c.jit(jax.vmap(one))(penalty, keys))


def averaged(d, cfg, seed, splits, averaging):
    step = jt.train.make_step(c.stateless_loss(apply), jt.adam(1e-3), averaging=averaging)
    st = step.init(c.mlp_init(jax.random.key(seed), SIZES)[0], jax.random.key(seed))
    fn = c.jit(lambda st: c.train_epochs(
        step, st, d["train"], epochs=cfg["epochs"], batch_size=50,
        key=jax.random.fold_in(jax.random.key(seed), 1),
        evaluate=c.eval_stateless(apply, splits))[1])
    return c.host(fn(st))


def early_stopped(d, cfg, seed):
    step = jt.train.make_step(c.stateless_loss(apply), jt.adam(1e-3))
    st = step.init(c.mlp_init(jax.random.key(seed), SIZES)[0], jax.random.key(seed))
    ev = lambda p, ms, data: {"accuracy": c.accuracy(apply(p, data[0]), data[1])}
    st, hist = jt.train.fit(step, st, d["train"], batch_size=50, epochs=cfg["epochs"],
                            key=jax.random.fold_in(jax.random.key(seed), 1),
                            eval_data=d["val"], eval_fn=ev, monitor="accuracy",
                            early_stopping=jt.train.EarlyStopping(10, mode="max"))
    test = float(c.accuracy(apply(st.params, d["test"][0]), d["test"][1]))
    return test, hist


def run(size, out, seed):
    cfg = SIZE[size]
    d = c.mnist1d(n_train=1000, val=1000)
    splits = {"val": d["val"], "test": d["test"]}
    h = members(d, cfg, seed, splits)
    per_epoch = len(d["train"][0]) // 50
    swa = averaged(d, cfg, seed, splits,
                   jt.averaging.swa(max(1, 3 * cfg["epochs"] * per_epoch // 4), per_epoch))
    stop_test, stop_hist = early_stopped(d, cfg, seed)
    yt = d["test"][1]
    ens = (h["test_probs"][:MEMBERS].mean(0).argmax(-1) == yt).mean(-1)  # per epoch
    plain = h["test_raw_accuracy"][0]
    res = {"plain (last epoch)": plain[-1], "early stopping": stop_test,
           f"L2 penalty {L2:g}": h["test_raw_accuracy"][MEMBERS, -1],
           "EMA 0.99": h["test_accuracy"][0, -1], "SWA (last quarter)": swa["test_accuracy"][-1],
           f"ensemble of {MEMBERS}": ens[-1]}
    res = {k: float(v) for k, v in res.items()}

    fig, (a1, a2) = c.figure()
    epochs = np.arange(1, cfg["epochs"] + 1)
    a1.plot(epochs, h["train_loss"][0], label="train (plain)")
    a1.plot(epochs, h["val_loss"][0], label="validation (EMA)")
    a1.axvline(stop_hist["best_epoch"] + 1, color="gray", ls="--", label="early-stopping pick")
    a1.set(title="loss: overfitting after the minimum", xlabel="epoch", yscale="log")
    for label, curve in [("plain", plain), ("EMA", h["test_accuracy"][0]),
                         (f"L2 {L2:g}", h["test_raw_accuracy"][MEMBERS]),
                         ("SWA", swa["test_accuracy"]), (f"ensemble of {MEMBERS}", ens)]:
        a2.plot(epochs, curve, label=label)
    a2.set(title="test accuracy", xlabel="epoch")
    plot = c.save(fig, out, "overfitting.png")
    tricks = [k for k in res if k != "plain (last epoch)"]
    return [c.row(
        "6. preventing overfitting", f"2x256 MLP, 1,000 MNIST-1D signals, {cfg['epochs']} "
        "epochs of Adam: test accuracy", "; ".join(f"{k}: {res[k]:.3f}" for k in tricks),
        f"plain (last epoch): {res['plain (last epoch)']:.3f}",
        sum(res[k] > res["plain (last epoch)"] for k in tricks) >= len(tricks) - 1, plot,
        test_accuracy=res, best_epoch=stop_hist["best_epoch"], epochs_run=stop_hist["epochs"])]


if __name__ == "__main__":
    c.main_for(run, "overfitting", __doc__)
