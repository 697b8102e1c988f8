"""Keep values in a sane range: the same sigmoid MLP on raw vs scaled inputs.

The lesson: floating point loses a small addend next to a large one (in float32,
1e-10 + 1e10 == 1e10), and most activations are non-linear only around [-1, 1], so
inputs belong in [0, 1] or [-1, 1]. Here the digits arrive as 8-bit intensities
(0..255); a 3-layer sigmoid MLP is trained with SGD + momentum on the raw values,
on values min-max scaled into [0, 1] (``jt.data.fit_minmax``) and on standardised
values (``jt.data.fit_standardize``). The three runs are one vmapped program: only
the inputs differ. Measured: the share of saturated first-layer units at
initialisation (|pre-activation| > 5, where sigmoid' < 0.007) and test accuracy.

Usage: ``python examples/trick_scaling.py [--quick] [--mnist-dir DIR]``
"""

from __future__ import annotations

import common as c
import jax
import jax.numpy as jnp
import numpy as np

import jtricks as jt

SIZE = {"tiny": dict(epochs=2), "quick": dict(epochs=20), "full": dict(epochs=100)}
NAMES = ("raw 0..255", "min-max [0, 1]", "standardised")


def run(size, out, seed, mnist_dir=None):
    cfg = SIZE[size]
    d = c.digits(seed, mnist_dir=mnist_dir)
    (x, y), (xv, yv), (xt, yt) = d["train"], d["val"], d["test"]
    scalers = [None, jt.data.fit_minmax(x, axis=None), jt.data.fit_standardize(x)]
    pick = lambda s, a: a if s is None else np.asarray(s.apply(a))
    xs, xvs, xts = (jnp.stack([pick(s, a) for s in scalers]) for a in (x, xv, xt))
    sizes = (x.shape[1], 64, 64, 64, 10)
    params, _ = c.mlp_init(jax.random.key(seed), sizes, jt.init.glorot_normal())
    act, loss = jax.nn.sigmoid, c.mlp_loss(jax.nn.sigmoid)
    model_state = [{}] * len(params)

    def one(x, xv, xt):
        step = jt.train.make_step(loss, jt.sgd(0.05, momentum=0.9))
        state = step.init(params, jax.random.key(seed + 1), model_state)
        ev = c.eval_mlp({"val": (xv, yv), "test": (xt, yt)}, act=act)
        _, hist = c.train_epochs(step, state, (x, y), epochs=cfg["epochs"], batch_size=32,
                                 key=jax.random.key(seed + 2), evaluate=ev)
        pre = c.mlp_apply(params, model_state, x)[2][0]
        return hist, jnp.mean(jnp.abs(pre) > 5), pre[:256].ravel()

    hist, saturated, pre = c.host(c.jit(jax.vmap(one))(xs, xvs, xts))
    acc = hist["test_accuracy"][:, -1]

    fig, (a1, a2) = c.figure()
    for i, name in enumerate(NAMES):
        a1.hist(np.clip(pre[i], -60, 60), bins=60, alpha=0.5, label=name)
        a2.plot(np.arange(1, cfg["epochs"] + 1), hist["val_accuracy"][i], label=name)
    a1.axvspan(-5, 5, color="green", alpha=0.1, label="sigmoid not saturated")
    a1.set(title="first-layer pre-activations at init", xlabel="value (clipped to +-60)")
    a2.set(title="validation accuracy", xlabel="epoch", ylabel="accuracy")
    plot = c.save(fig, out, "scaling.png")
    tiny = np.float32(1e-10) + np.float32(1e10) == np.float32(1e10)
    return [c.row(
        "2. keep values in a sane range",
        f"float32 1e-10 + 1e10 == 1e10: {bool(tiny)}; sigmoid MLP on digits, "
        f"{cfg['epochs']} epochs of SGD+momentum; saturated units at init, test accuracy",
        f"[0, 1]: {100 * saturated[1]:.0f}% saturated, test {acc[1]:.3f}; standardised: "
        f"{100 * saturated[2]:.0f}%, test {acc[2]:.3f}",
        f"raw 0..255: {100 * saturated[0]:.0f}% saturated, test {acc[0]:.3f}",
        min(acc[1], acc[2]) > acc[0] + 0.02, plot,
        test_accuracy=dict(zip(NAMES, acc.tolist())),
        saturated=dict(zip(NAMES, saturated.tolist())))]


if __name__ == "__main__":
    c.main_for(run, "scaling", __doc__, images=True)
