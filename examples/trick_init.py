"""Weight initialisation, and the vanishing / exploding gradients it causes or cures.

A 10-layer ReLU MLP (width 64) on MNIST-1D, initialised six ways: N(0, 1); a small
fixed gaussian N(0, 0.01^2); ``lecun_normal`` (variance 1/n_in: the lesson's "std
1/sqrt(n_in)"); ``glorot_normal`` (2/(n_in + n_out)); ``he_normal`` (2/n_in, for
ReLU); ``orthogonal``. At initialisation it measures, per layer, the activations'
standard deviation and the gradient norm, and asks ``jt.diagnostics.report`` to flag
exploding or vanishing layers; then it trains all six with Adam in one vmapped
program (the six parameter trees share a structure, only their values differ).

Usage: ``python examples/trick_init.py [--quick]``
"""

from __future__ import annotations

import common as c
import jax
import jax.numpy as jnp
import numpy as np

import jtricks as jt

INITS = {"N(0, 1)": jt.init.normal(1.0), "N(0, 0.01^2)": jt.init.normal(0.01),
         "lecun": jt.init.lecun_normal(), "glorot": jt.init.glorot_normal(),
         "he": jt.init.he_normal(), "orthogonal": jt.init.orthogonal()}
SIZES = (40,) + (64,) * 10 + (10,)
SIZE = {"tiny": dict(epochs=2, names=("N(0, 1)", "N(0, 0.01^2)", "he")),
        "quick": dict(epochs=10, names=tuple(INITS)), "full": dict(epochs=60, names=tuple(INITS))}


def _forward_backward(params, x, y):
    state = [{}] * len(params)
    _, _, pre = c.mlp_apply(params, state, x)
    grads = jax.grad(lambda p: c.cross_entropy(c.mlp_apply(p, state, x)[0], y))(params)
    return pre, [g["w"] for g in grads]


def at_init(stacked, x, y):
    """Per-layer activation std, gradient norm and the diagnostics report of each tree
    (the trees stacked on a leading axis: one vmapped program for all)."""
    pre, grads = c.host(c.jit(jax.vmap(_forward_backward, (0, None, None)))(stacked, x, y))
    out = []
    for i in range(len(pre[0])):
        acts = {f"layer {j + 1}": h[i] for j, h in enumerate(pre)}
        rep = jt.diagnostics.report([g[i] for g in grads], activations=acts)
        out.append(([float(np.std(h[i])) for h in pre],
                    [float(np.linalg.norm(g[i])) for g in grads], rep))
    return out


def run(size, out, seed):
    cfg = SIZE[size]
    d = c.mnist1d(val=1000)
    x, y = d["train"]
    key = jax.random.key(seed)
    names = list(cfg["names"])
    # All six trees drawn by one compiled program (stacked on a leading axis).
    stacked = c.jit(lambda key: jax.tree.map(lambda *a: jnp.stack(a), *[
        c.mlp_init(key, SIZES, INITS[name])[0] for name in names]))(key)
    stats = dict(zip(names, at_init(stacked, x[:500], y[:500])))
    loss, ev = c.mlp_loss(), c.eval_mlp({"val": d["val"], "test": d["test"]})

    def one(params):
        step = jt.train.make_step(loss, jt.adam(1e-3))
        state = step.init(params, jax.random.key(seed + 1), [{}] * len(params))
        return c.train_epochs(step, state, d["train"], epochs=cfg["epochs"], batch_size=100,
                              key=jax.random.key(seed + 2), evaluate=ev)[1]

    hist = c.host(c.jit(jax.vmap(one))(stacked))
    acc = dict(zip(names, hist["test_accuracy"][:, -1].tolist()))
    fig, axes = c.figure(3, width=4.0)
    layers = np.arange(1, len(SIZES) - 1)
    for i, name in enumerate(names):
        stds, norms, _ = stats[name]
        axes[0].semilogy(layers, stds, "o-", label=name)
        axes[1].semilogy(np.arange(1, len(norms) + 1), norms, "o-", label=name)
        axes[2].plot(np.arange(1, cfg["epochs"] + 1), hist["val_accuracy"][i], label=name)
    axes[0].set(title="activation std at init", xlabel="hidden layer")
    axes[1].set(title="‖grad‖ per layer at init", xlabel="layer")
    axes[2].set(title="validation accuracy (Adam)", xlabel="epoch")
    plot = c.save(fig, out, "init.png")

    flags = {n: (len(s[2].exploding), len(s[2].vanishing)) for n, s in stats.items()}
    growth = {n: s[0][-1] / s[0][0] for n, s in stats.items()}
    fmt = lambda n: f"{n}: std x{growth[n]:.2g} over 10 layers, test {acc[n]:.3f}"
    good = [n for n in names[2:]]
    return [
        c.row("1. vanishing and exploding gradients",
              "jt.diagnostics.report at init on a 10-layer ReLU MLP: flagged layers "
              "(exploding, vanishing); gradient norm of layer 1 / layer 11",
              f"he: {flags['he']} flagged, ratio "
              f"{stats['he'][1][0] / stats['he'][1][-1]:.2g}",
              f"N(0, 1): {flags['N(0, 1)']} flagged, ratio "
              f"{stats['N(0, 1)'][1][0] / stats['N(0, 1)'][1][-1]:.2g}; N(0, 0.01^2): "
              f"{flags['N(0, 0.01^2)']} flagged",
              sum(flags["N(0, 1)"]) > 0 and sum(flags["N(0, 0.01^2)"]) > 0
              and sum(flags["he"]) == 0, plot, flags=flags),
        c.row("3. weight initialisation",
              f"activation spread through 10 ReLU layers and test accuracy after "
              f"{cfg['epochs']} epochs of Adam on MNIST-1D",
              "; ".join(fmt(n) for n in good), "; ".join(fmt(n) for n in names[:2]),
              min(acc[n] for n in good if n in ("he", "orthogonal"))
              > max(acc[n] for n in names[:2]),
              plot, test_accuracy=acc, std_growth=growth,
              grad_norms={n: s[1] for n, s in stats.items()})]


if __name__ == "__main__":
    c.main_for(run, "init", __doc__)
