"""Train an MLP on scikit-learn's handwritten digits with the lesson's tricks.

Every trick is one line below: inputs scaled into [0, 1]; He initialisation for
ReLU layers; batch normalisation after each dense layer, before the activation;
dropout; Adam with the learning rate multiplied by 0.98 after every epoch;
an exponential moving average of the weights (evaluated instead of the raw
weights); early stopping on the validation accuracy that restores the best epoch.
Training runs with ``jt.train.fit``: one compiled program per epoch (shuffle, all
the steps in a ``lax.scan``, evaluation, early stopping).

The digits (1,797 8x8 images) ship with scikit-learn, so this runs offline in a few
seconds on a laptop CPU. It prints one line per epoch and the final test accuracy,
and writes a loss/accuracy plot to ``runs/digits_mlp.png``.

Usage: ``python examples/digits_mlp.py [--epochs 100] [--dropout 0.2] [--no-plot]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

import jtricks as jt


def load_data(seed: int):
    """Digits split 60/20/20 into train/validation/test, pixels scaled into [0, 1]."""
    x, y = load_digits(return_X_y=True)
    # Trick: keep values in a sane range. Pixels are 0..16; scale them into [0, 1].
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(x))
    x, y = x[perm], y[perm]
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return (x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:])


def init_model(key: jax.Array, sizes: tuple[int, ...]):
    """Dense layers with He-normal kernels; batch norm on every hidden layer."""
    params, model_state = [], []
    kernel_init = jt.init.he_normal()  # trick: variance 2/fan_in keeps ReLU signals in range
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        layer = {"w": kernel_init(k, (n_in, n_out)), "b": jnp.zeros(n_out)}
        bn_state = {}
        if i < len(sizes) - 2:  # hidden layer: batch norm before the ReLU
            layer["bn"], bn_state = jt.layers.batch_norm_init(n_out)
        params.append(layer)
        model_state.append(bn_state)
    return params, model_state


def forward(params, model_state, x, key, *, training: bool, dropout: float):
    """Logits and the new batch-norm statistics."""
    new_state = []
    keys = jax.random.split(key, len(params)) if training else [None] * len(params)
    for layer, bn_state, k in zip(params[:-1], model_state[:-1], keys):
        x = x @ layer["w"] + layer["b"]
        x, bn_state = jt.layers.batch_norm(layer["bn"], bn_state, x, training=training)
        x = jax.nn.relu(x)
        x = jt.layers.dropout(k, x, dropout, training=training)
        new_state.append(bn_state)
    last = params[-1]
    return x @ last["w"] + last["b"], [*new_state, model_state[-1]]


def cross_entropy(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Train an MLP on scikit-learn's digits with jtricks (batch norm, "
        "dropout, Adam with per-epoch decay, EMA, early stopping).")
    parser.add_argument("--epochs", type=int, default=100, help="maximum epochs (100)")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per step (64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="initial learning rate (3e-3)")
    parser.add_argument("--decay", type=float, default=0.98,
                        help="learning-rate factor applied after every epoch (0.98)")
    parser.add_argument("--dropout", type=float, default=0.2, help="dropout rate (0.2)")
    parser.add_argument("--ema", type=float, default=0.99, help="weight EMA decay (0.99)")
    parser.add_argument("--patience", type=int, default=15,
                        help="epochs without validation improvement before stopping (15)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 128],
                        help="hidden layer sizes (256 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show a tqdm progress bar")
    parser.add_argument("--out", type=Path, default=Path("runs"),
                        help="folder for the plot (runs/)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = parser.parse_args(argv)

    train, val, test = load_data(args.seed)
    steps_per_epoch = len(train[0]) // args.batch_size
    sizes = (train[0].shape[1], *args.hidden, 10)
    params, model_state = init_model(jax.random.key(args.seed), sizes)

    def loss_fn(params, model_state, batch, key):
        x, y = batch
        logits, model_state = forward(params, model_state, x, key, training=True,
                                      dropout=args.dropout)
        accuracy = jnp.mean(logits.argmax(-1) == y)
        return cross_entropy(logits, y), (model_state, {"accuracy": accuracy})

    def eval_fn(params, model_state, data):
        x, y = data
        logits, _ = forward(params, model_state, x, None, training=False, dropout=0.0)
        return {"loss": cross_entropy(logits, y), "accuracy": jnp.mean(logits.argmax(-1) == y)}

    # Trick: learning-rate decay, x0.98 after every epoch (a staircase per epoch).
    schedule = jt.schedules.exponential_decay(args.lr, steps_per_epoch, args.decay,
                                              staircase=True)
    step = jt.train.make_step(loss_fn, jt.adam(schedule),
                              averaging=jt.averaging.ema(args.ema))
    state = step.init(params, jax.random.key(args.seed + 1), model_state)

    t0 = time.perf_counter()
    state, hist = jt.train.fit(
        step, state, train, batch_size=args.batch_size, epochs=args.epochs,
        key=jax.random.key(args.seed + 2), eval_data=val, eval_fn=eval_fn,
        early_stopping=jt.train.EarlyStopping(args.patience, mode="max"),
        monitor="accuracy", progress=args.progress)
    seconds = time.perf_counter() - t0

    tr, va = hist["train"], hist["eval"]
    print("epoch  train_loss  train_acc  val_loss  val_acc        lr")
    for e in range(hist["epochs"]):
        mark = " *" if e == hist["best_epoch"] else ""
        print(f"{e + 1:5d}  {tr['loss'][e]:10.4f}  {tr['accuracy'][e]:9.4f}  "
              f"{va['loss'][e]:8.4f}  {va['accuracy'][e]:7.4f}  {tr['learning_rate'][e]:.2e}"
              f"{mark}")
    how = "early stopping" if hist["stopped"] else "the epoch limit"
    print(f"stopped by {how} after {hist['epochs']} epochs ({int(state.step)} steps) in "
          f"{seconds:.1f} s; best validation epoch {hist['best_epoch'] + 1} (*), restored")

    test_metrics = eval_fn(step.eval_params(state), state.model_state, test)
    print(f"test accuracy (EMA weights of the best epoch): "
          f"{float(test_metrics['accuracy']):.4f}  test loss "
          f"{float(test_metrics['loss']):.4f}")

    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = np.arange(1, hist["epochs"] + 1)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.plot(epochs, tr["loss"], label="train")
        ax1.plot(epochs, va["loss"], label="validation (EMA)")
        ax1.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
        ax2.plot(epochs, tr["accuracy"], label="train (with dropout)")
        ax2.plot(epochs, va["accuracy"], label="validation (EMA)")
        ax2.axvline(hist["best_epoch"] + 1, color="gray", ls="--", label="best epoch")
        ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0.8, 1.0))
        for ax in (ax1, ax2):
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "digits_mlp.png"
        fig.savefig(path, dpi=100)
        print(f"plot written to {path}")


if __name__ == "__main__":
    main()
