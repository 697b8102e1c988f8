"""Gradient clipping: a deep plain tanh MLP, with and without it.

The lesson: when ||grad|| exceeds a threshold theta (typically 1 or 10), rescale the
gradient to norm theta; below it, leave it alone. A 16-layer tanh MLP (width 64) on
MNIST-1D, its weights drawn with variance 4/n_in (gain 2: the chaotic regime, where
gradients grow with depth), trains with SGD + momentum. The runs differ only in theta
(``jt.clip_by_global_norm``), vmapped in one program; "without" is theta = inf, which
never rescales (min(1, inf / ||g||) = 1). ``jt.diagnostics.report`` measures the
gradients at initialisation. Measured: the largest gradient norm seen, the share of
steps above 10, and test accuracy. (A vanilla tanh RNN was tried first: at the
recurrent gains where its gradients explode, it learned nothing with or without
clipping in this budget.)

Usage: ``python examples/trick_clipping.py [--quick]``
"""

from __future__ import annotations

import common as c
import jax
import jax.numpy as jnp
import numpy as np

import jtricks as jt

SIZE = {"tiny": dict(epochs=1), "quick": dict(epochs=6), "full": dict(epochs=40)}
THETAS = (np.inf, 10.0, 1.0)
GAIN, LR = 2.0, 0.05
SIZES = (40,) + (64,) * 16 + (10,)


def run(size, out, seed):
    cfg = SIZE[size]
    d = c.mnist1d(val=1000)
    init = jt.init.variance_scaling(GAIN**2, "fan_in", "normal")
    params, model_state = c.mlp_init(jax.random.key(seed), SIZES, init)
    x, y = d["train"]
    grads = c.jit(jax.grad(lambda p: c.cross_entropy(
        c.mlp_apply(p, model_state, x[:500], act=jnp.tanh)[0], y[:500])))(params)
    rep = jt.diagnostics.report(grads, params=params,
                                thresholds=jt.diagnostics.Thresholds(grad_explode=10.0))
    ev = c.eval_mlp({"test": d["test"]}, act=jnp.tanh)

    def one(theta):
        tx = jt.chain(jt.clip_by_global_norm(theta), jt.sgd(LR, momentum=0.9))
        step = jt.train.make_step(c.mlp_loss(jnp.tanh), tx)
        st = step.init(params, jax.random.key(seed + 1), model_state)
        return c.train_epochs(step, st, d["train"], epochs=cfg["epochs"], batch_size=100,
                              key=jax.random.key(seed + 2), evaluate=ev)[1]

    h = c.host(c.jit(jax.vmap(one))(jnp.array(THETAS)))
    norms = h["steps"]["grad_norm"].reshape(len(THETAS), -1)
    labels = [f"theta {t:g}" if np.isfinite(t) else "no clipping" for t in THETAS]
    fig, (a1, a2) = c.figure()
    for i, label in enumerate(labels):
        a1.semilogy(norms[i], lw=0.7, label=label)
        a2.plot(np.arange(1, cfg["epochs"] + 1), h["test_accuracy"][i], label=label)
    a1.set(title="‖grad‖ before clipping, per step", xlabel="step")
    a2.set(title="test accuracy", xlabel="epoch")
    plot = c.save(fig, out, "clipping.png")
    acc = np.nan_to_num(h["test_accuracy"][:, -1])
    peak, above = np.nanmax(norms, 1), np.mean(norms > 10, 1)
    fmt = lambda i: (f"{labels[i]}: max ‖g‖ {peak[i]:.3g}, {100 * above[i]:.0f}% of steps "
                     f"> 10, test {acc[i]:.3f}")
    return [c.row(
        "8. gradient clipping", f"16-layer tanh MLP (gain 2) on MNIST-1D, {cfg['epochs']} "
        "epochs of SGD+momentum"
        f"; jt.diagnostics at init: global ‖g‖ {rep.global_grad_norm:.3g}, "
        f"{len(rep.exploding)} leaves flagged exploding (threshold 10)",
        f"{fmt(1)}; {fmt(2)}", fmt(0), max(acc[1:]) > acc[0], plot,
        test_accuracy=dict(zip(labels, acc.tolist())), max_grad_norm=peak.tolist(),
        flagged=list(rep.exploding))]


if __name__ == "__main__":
    c.main_for(run, "clipping", __doc__)
