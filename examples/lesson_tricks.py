"""The first half of the training-tricks lesson, measured on real data.

On scikit-learn's handwritten digits (1,797 8x8 images, offline), this script shows:

1. Initialisation: through a 10-layer linear stack, N(0, 1) weights multiply the
   spread by ~sqrt(n) per layer (``jt.diagnostics.report`` flags the layers as
   exploding) and in a tanh stack they saturate most units, while lecun / glorot
   keep the spread in range.
2. Input scaling: the digits as 8-bit intensities (0..255) saturate a sigmoid layer
   at initialisation; scaled into [0, 1] or standardised they do not.
3. Batch normalisation: a deep (8-layer) sigmoid network with and without batch
   norm before each activation, after the same short training.
4. Dropout: a wide network on a small training set, with and without dropout:
   the gap between training and test accuracy.

Each training is short (full-batch Adam, a few hundred steps), so the whole script
runs in under a minute on a laptop CPU. Numbers vary a little with the seed.

Usage: ``python examples/lesson_tricks.py [--seed 0] [--steps 300]``
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

import jtricks as jt


def split(seed: int, n_train: int | None = None):
    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(x))
    x, y = x[perm].astype(np.float32), y[perm].astype(np.int32)
    cut = int(0.7 * len(x))
    train, test = (x[:cut], y[:cut]), (x[cut:], y[cut:])
    if n_train is not None:
        train = (train[0][:n_train], train[1][:n_train])
    return train, test


# --- a small configurable MLP -------------------------------------------------------


def init_mlp(key, sizes, kernel_init, batch_norm=False):
    params, state = [], []
    for k, n_in, n_out in zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:]):
        layer, bn_state = {"w": kernel_init(k, (n_in, n_out)), "b": jnp.zeros(n_out)}, {}
        if batch_norm and n_out != sizes[-1]:
            layer["bn"], bn_state = jt.layers.batch_norm_init(n_out)
        params.append(layer)
        state.append(bn_state)
    return params, state


def mlp(params, state, x, key, *, act, training, rate=0.0):
    """Logits, the new batch-norm state and every hidden pre-activation."""
    pre_acts, new_state = [], []
    keys = jax.random.split(key, len(params))
    for i, (layer, s) in enumerate(zip(params, state)):
        x = x @ layer["w"] + layer["b"]
        if i == len(params) - 1:
            new_state.append(s)
            break
        if "bn" in layer:  # the lesson: after the weights, before the activation
            # momentum 0.9 (flax: 0.99) so the running statistics settle in a short run.
            x, s = jt.layers.batch_norm(layer["bn"], s, x, training=training, momentum=0.9)
        new_state.append(s)
        pre_acts.append(x)
        x = jt.layers.dropout(keys[i], act(x), rate, training=training)
    return x, new_state, pre_acts


def train(params, state, data, test, *, act, steps, lr=3e-3, rate=0.0, seed=0):
    """Full-batch Adam; returns (train accuracy, test accuracy)."""
    tx = jt.adam(lr)
    opt = tx.init(params)
    (x, y), (xt, yt) = data, test

    def loss_fn(p, s, key):
        logits, s, _ = mlp(p, s, x, key, act=act, training=True, rate=rate)
        onehot = jax.nn.one_hot(y, 10)
        return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1)), s

    @jax.jit
    def run(params, state, opt):
        def step(carry, key):
            p, s, o = carry
            (_, s), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, key)
            u, o = tx.update(g, o, p)
            return (jt.apply_updates(p, u), s, o), None

        keys = jax.random.split(jax.random.key(seed), steps)
        (params, state, opt), _ = jax.lax.scan(step, (params, state, opt), keys)
        return params, state

    params, state = run(params, state, opt)

    def accuracy(xs, ys):
        logits, _, _ = mlp(params, state, xs, jax.random.key(0), act=act, training=False)
        return float(jnp.mean(jnp.argmax(logits, -1) == ys))

    return accuracy(x, y), accuracy(xt, yt)


# --- the four demonstrations --------------------------------------------------------


def demo_init(seed):
    print("1. initialisation: 10 layers of width 256 on standardised digits")
    (x, y), _ = split(seed)
    x = jt.data.fit_standardize(x).apply(x)  # unit spread per pixel: a fair start
    sizes = (64,) + (256,) * 10 + (10,)

    def loss(params, act):
        logits, _, _ = mlp(params, [{}] * len(params), x, jax.random.key(0), act=act,
                           training=False)
        return -jnp.mean(jnp.sum(jax.nn.one_hot(y, 10) * jax.nn.log_softmax(logits), -1))

    for name, init in [("N(0, 1)", jt.init.normal(1.0)),
                       ("lecun_normal", jt.init.lecun_normal()),
                       ("glorot_normal", jt.init.glorot_normal())]:
        params, state = init_mlp(jax.random.key(seed), sizes, init)
        # Linear stack: the spread multiplies by sqrt(n * var(w)) per layer.
        _, _, pre = mlp(params, state, x, jax.random.key(0), act=lambda h: h, training=False)
        growth = float(jnp.std(pre[-1]) / jnp.std(x))
        rep = jt.diagnostics.report(activations={f"layer_{i + 1}": h for i, h in enumerate(pre)})
        # tanh stack: saturated units pass almost no gradient back.
        _, _, pre = mlp(params, state, x, jax.random.key(0), act=jnp.tanh, training=False)
        saturated = float(jnp.mean(jnp.abs(jnp.tanh(pre[-1])) > 0.99))
        grads = jax.grad(loss)(params, jnp.tanh)
        norms = jt.diagnostics.leaf_norms([g["w"] for g in grads])
        print(f"   {name:<14} linear: std x{growth:<9.3g} exploding layers flagged: "
              f"{len(rep.exploding):>2} | tanh: {100 * saturated:5.1f}% saturated, "
              f"grad norm layer 1 / layer 11 = {float(norms['0'] / norms['10']):.2g}")


def demo_scaling(seed, steps):
    print("2. input scaling: digits as 8-bit intensities 0..255, 3 sigmoid layers, Adam")
    train_set, test_set = split(seed)
    raw = ((train_set[0] * 255 / 16, train_set[1]), (test_set[0] * 255 / 16, test_set[1]))
    mm = jt.data.fit_minmax(raw[0][0], axis=None)
    st = jt.data.fit_standardize(raw[0][0])
    for name, scaler in [("raw 0..255", None), ("min-max into [0, 1]", mm),
                         ("standardised", st)]:
        tr, te = raw
        if scaler is not None:
            tr, te = (scaler.apply(tr[0]), tr[1]), (scaler.apply(te[0]), te[1])
        params, state = init_mlp(jax.random.key(seed), (64, 64, 64, 64, 10),
                                 jt.init.glorot_normal())
        _, _, pre = mlp(params, state, tr[0], jax.random.key(0), act=jax.nn.sigmoid,
                        training=False)
        saturated = float(jnp.mean(jnp.abs(pre[0]) > 5))  # sigmoid' < 0.007
        acc = train(params, state, tr, te, act=jax.nn.sigmoid, steps=steps, seed=seed)
        print(f"   {name:<22} saturated at init {100 * saturated:5.1f}%  "
              f"train {acc[0]:.3f}  test {acc[1]:.3f}")


def demo_batch_norm(seed, steps):
    print("3. batch norm: 8 sigmoid layers of width 64, inputs in [0, 1]")
    train_set, test_set = split(seed)
    mm = jt.data.fit_minmax(train_set[0], axis=None)
    tr, te = (mm.apply(train_set[0]), train_set[1]), (mm.apply(test_set[0]), test_set[1])
    for bn in (False, True):
        params, state = init_mlp(jax.random.key(seed), (64,) + (64,) * 8 + (10,),
                                 jt.init.glorot_normal(), batch_norm=bn)
        acc = train(params, state, tr, te, act=jax.nn.sigmoid, steps=steps // 3, seed=seed)
        print(f"   {'with' if bn else 'without':<7} batch norm  train {acc[0]:.3f}  "
              f"test {acc[1]:.3f}")


def demo_dropout(seed, steps):
    print("4. dropout: 2 ReLU layers of width 512 trained on 200 digits")
    train_set, test_set = split(seed, n_train=200)
    mm = jt.data.fit_minmax(train_set[0], axis=None)
    tr, te = (mm.apply(train_set[0]), train_set[1]), (mm.apply(test_set[0]), test_set[1])
    for rate in (0.0, 0.5):
        params, state = init_mlp(jax.random.key(seed), (64, 512, 512, 10), jt.init.he_normal())
        acc = train(params, state, tr, te, act=jax.nn.relu, steps=steps, rate=rate, seed=seed)
        print(f"   dropout {rate:.1f}  train {acc[0]:.3f}  test {acc[1]:.3f}  "
              f"gap {acc[0] - acc[1]:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    demo_init(args.seed)
    demo_scaling(args.seed, args.steps)
    demo_batch_norm(args.seed, args.steps)
    demo_dropout(args.seed, args.steps)


if __name__ == "__main__":
    main()
