"""Reproduces the MNIST-1D paper's table: logistic regression, MLP and CNN accuracy.

Greydanus & Kobak ("Scaling down deep learning with MNIST-1D") report test accuracy
of about 32% (logistic regression), 68% (MLP) and 94% (CNN) on the default data set
(4,000 training / 1,000 test signals, generator seed 42). Their protocol, followed
here: Adam at learning rate 1e-2, no weight decay, batches of 100, 6,000 steps; the
MLP has two hidden ReLU layers of 100; the CNN three ReLU conv layers of 25 channels
(kernels 5, 3, 3, stride 2) and a dense layer; weights drawn like PyTorch's default
(uniform, variance 1/(3 fan_in): ``jt.init.variance_scaling(1/3, "fan_in",
"uniform")``). Three seeds (initialisation and batch order) per model, vmapped into
one program per model. Prints ours beside the paper's and writes
``runs/mnist1d_table.json`` as ``{model: {"paper", "ours" (the mean), "seeds"}}``.

Usage: ``python examples/mnist1d_table.py [--seeds 3] [--steps 6000]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common as c
import jax
import numpy as np

import jtricks as jt

PAPER = {"logistic": 0.32, "mlp": 0.68, "cnn": 0.94}
TORCH_LIKE = jt.init.variance_scaling(1 / 3, "fan_in", "uniform")


def mlp_apply(params, x):
    return c.mlp_apply(params, [{}] * len(params), x)[0]


MODELS = {
    "logistic": (lambda k: c.mlp_init(k, (40, 10), TORCH_LIKE)[0], mlp_apply),
    "mlp": (lambda k: c.mlp_init(k, (40, 100, 100, 10), TORCH_LIKE)[0], mlp_apply),
    "cnn": (lambda k: c.cnn_init(k, kernel_init=TORCH_LIKE), c.cnn_apply),
}


def train(name, data, seeds, steps):
    """Test accuracy after ``steps`` steps for each seed (one vmapped program)."""
    init, apply = MODELS[name]
    per_epoch = len(data["train"][0]) // 100
    epochs = max(1, steps // per_epoch)
    ev = c.eval_stateless(apply, {"test": data["test"]})

    def one(key):
        step = jt.train.make_step(c.stateless_loss(apply), jt.adam(1e-2))
        state = step.init(init(key), key)
        return c.train_epochs(step, state, data["train"], epochs=epochs, batch_size=100,
                              key=jax.random.fold_in(key, 1), evaluate=ev)[1]

    keys = jax.vmap(jax.random.key)(np.arange(seeds))
    return c.host(jax.jit(jax.vmap(one))(keys))["test_accuracy"][:, -1].tolist()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds per model (3)")
    p.add_argument("--steps", type=int, default=6000, help="Adam steps (6000, the paper's)")
    p.add_argument("--models", default=",".join(MODELS), help="subset of logistic,mlp,cnn")
    p.add_argument("--out", type=Path, default=c.ROOT / "runs" / "mnist1d_table.json")
    args = p.parse_args(argv)
    data = c.mnist1d()  # the paper's data set: generator seed 42
    table = {}
    print(f"MNIST-1D test accuracy, {args.steps} steps of Adam(1e-2), batch 100, "
          f"{args.seeds} seeds")
    print(f"{'model':<9} {'paper':>6} {'ours':>6} {'spread':>7}  seeds")
    for name in args.models.split(","):
        t0 = time.perf_counter()
        accs = train(name, data, args.seeds, args.steps)
        table[name] = {"paper": PAPER[name], "ours": float(np.mean(accs)), "seeds": accs}
        print(f"{name:<9} {PAPER[name]:6.3f} {np.mean(accs):6.3f} {np.std(accs):7.3f}  "
              f"{', '.join(f'{a:.3f}' for a in accs)}  ({time.perf_counter() - t0:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1))
    print(f"written: {args.out}")
    return table


if __name__ == "__main__":
    main()
