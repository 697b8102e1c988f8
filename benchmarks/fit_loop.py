"""jt.train.fit against the idiomatic flax + optax loop (one jitted step per batch).

Both sides train the same flax MLP with Adam on scikit-learn's digits (ships offline)
from the same initial params for the same number of epochs, evaluate the test set
after every epoch and keep early-stopping bookkeeping:

* baseline: host-side NumPy shuffling, one ``jax.jit`` step per batch dispatched from
  Python, ``flax.training.train_state.TrainState`` + ``optax.adam``, a jitted
  evaluation per epoch and early stopping in Python;
* jtricks: ``jt.train.fit`` with ``jt.adam``, ``EarlyStopping`` and the tqdm
  progress bar (output discarded): one compiled program per epoch (on-device
  shuffle, ``lax.scan`` over the batches, evaluation, early stopping);
* for reference, the floor: the same steps as a bare ``lax.scan`` per epoch.

Timings exclude compilation (each side runs once before timing), rotate the order
of the sides and report medians over repeats. Results go to
``benchmarks/results/fit_loop.json`` and to the ``fit-loop`` block of
``benchmarks/RESULTS.md``.

Usage: ``python benchmarks/fit_loop.py [--repeats 7] [--epochs 20]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from results_md import replace_section
from sklearn.datasets import load_digits

import jtricks as jt

HERE = Path(__file__).resolve().parent
CASES = [
    {"name": "digits MLP 64-256-256-10, batch 128", "sizes": (256, 256, 10), "batch": 128},
    {"name": "MLP 64-32-10, batch 32", "sizes": (32, 10), "batch": 32},
]
LR, PATIENCE = 1e-3, 1000  # patience above the epoch count: both sides run every epoch


class MLP(nn.Module):
    sizes: tuple[int, ...]

    @nn.compact
    def __call__(self, x):
        for size in self.sizes[:-1]:
            x = nn.relu(nn.Dense(size)(x))
        return nn.Dense(self.sizes[-1])(x)


def load():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    n_train = int(0.8 * len(x))
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# --------------------------------------------------------------------- baseline


def make_baseline(model):
    @jax.jit
    def train_step(state, x, y):
        def loss(params):
            return xent(state.apply_fn({"params": params}, x), y)

        value, grads = jax.value_and_grad(loss)(state.params)
        return state.apply_gradients(grads=grads), value

    @jax.jit
    def evaluate(params, x, y):
        logits = model.apply({"params": params}, x)
        return xent(logits, y), jnp.mean(logits.argmax(-1) == y)

    def run(params, train, test, batch, epochs, seed):
        state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                              tx=optax.adam(LR))
        x, y = train
        rng = np.random.default_rng(seed)
        best, wait, acc = -np.inf, 0, 0.0
        for _ in range(epochs):
            perm = rng.permutation(len(x))
            for i in range(len(x) // batch):
                idx = perm[i * batch:(i + 1) * batch]
                state, _ = train_step(state, x[idx], y[idx])
            _, acc = evaluate(state.params, *test)
            acc = float(acc)
            best, wait = (acc, 0) if acc > best else (best, wait + 1)
            if wait >= PATIENCE:
                break
        return acc

    return run


# --------------------------------------------------------------------- jtricks


def make_jtricks(model):
    def loss_fn(params, model_state, batch, key):
        x, y = batch
        return xent(model.apply({"params": params}, x), y), (model_state, {})

    def eval_fn(params, model_state, data):
        x, y = data
        logits = model.apply({"params": params}, x)
        return {"loss": xent(logits, y), "accuracy": jnp.mean(logits.argmax(-1) == y)}

    step = jt.train.make_step(loss_fn, jt.adam(LR))

    def run(params, train, test, batch, epochs, seed):
        state = step.init(params, jax.random.key(seed))
        with contextlib.redirect_stderr(io.StringIO()):  # the bar's output is not timed
            state, hist = jt.train.fit(
                step, state, train, batch_size=batch, epochs=epochs,
                key=jax.random.key(seed + 1), eval_data=test, eval_fn=eval_fn,
                early_stopping=jt.train.EarlyStopping(PATIENCE, mode="max",
                                                      restore_best=False),
                monitor="accuracy", progress=True)
        return float(hist["eval"]["accuracy"][-1])

    return run


# --------------------------------------------------------------------- bare scan


def make_bare_scan(model):
    """The floor: an epoch as a bare lax.scan (on-device shuffle, no eval, no stopping)."""
    tx = optax.adam(LR)

    @jax.jit
    def epoch(params, opt_state, x, y, key, batch):
        n = x.shape[0] // batch.shape[0]
        idx = jax.random.permutation(key, x.shape[0])[: n * batch.shape[0]]
        idx = idx.reshape(n, batch.shape[0])

        def body(carry, i):
            params, opt_state = carry
            grads = jax.grad(lambda p: xent(model.apply({"params": p}, x[i]), y[i]))(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(body, (params, opt_state), idx)[0]

    @jax.jit
    def accuracy(params, x, y):
        return jnp.mean(model.apply({"params": params}, x).argmax(-1) == y)

    def run(params, train, test, batch, epochs, seed):
        x, y = jax.device_put(train)
        opt_state = tx.init(params)
        shape = jnp.zeros(batch)
        for e in range(epochs):
            key = jax.random.fold_in(jax.random.key(seed), e)
            params, opt_state = epoch(params, opt_state, x, y, key, shape)
        return float(accuracy(params, *test))

    return run


def measure(case, train, test, epochs, repeats):
    model = MLP(case["sizes"])
    params = model.init(jax.random.key(0), jnp.zeros((1, 64)))["params"]
    runners = {"flax+optax loop": make_baseline(model), "jt.train.fit": make_jtricks(model),
               "bare lax.scan": make_bare_scan(model)}
    steps = epochs * (len(train[0]) // case["batch"])
    for run in runners.values():  # compile both
        run(params, train, test, case["batch"], 1, 0)
    times = {name: [] for name in runners}
    accs = {name: [] for name in runners}
    for r in range(repeats):
        order = list(runners)
        order = order[r % len(order):] + order[: r % len(order)]  # rotate the order
        for name in order:
            t0 = time.perf_counter()
            acc = runners[name](params, train, test, case["batch"], epochs, r)
            times[name].append(time.perf_counter() - t0)
            accs[name].append(acc)
    out = {"case": case["name"], "epochs": epochs, "steps": steps, "results": {}}
    for name in runners:
        out["results"][name] = {
            "ms_per_step_median": 1e3 * statistics.median(times[name]) / steps,
            "ms_per_step_all": [1e3 * t / steps for t in times[name]],
            "final_test_accuracy_median": statistics.median(accs[name]),
        }
    base = out["results"]["flax+optax loop"]["ms_per_step_median"]
    out["speedup"] = base / out["results"]["jt.train.fit"]["ms_per_step_median"]
    return out


def table(results, meta):
    lines = [
        "### `jt.train.fit` vs the flax + optax per-batch loop",
        "",
        f"`python benchmarks/fit_loop.py` on {meta['cpus']} CPU cores, jax "
        f"{meta['jax']}, {meta['epochs']} epochs, median of {meta['repeats']} repeats "
        f"in rotating order, compilation excluded; load average {meta['load_before']} before, "
        f"{meta['load_after']} after. Both sides evaluate the test set and do early-stopping "
        "bookkeeping every epoch; `fit` also drives a tqdm bar.",
        "",
        "| case | flax+optax loop ms/step | fit ms/step | speedup | bare scan ms/step "
        "| test acc loop / fit |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        b, f = r["results"]["flax+optax loop"], r["results"]["jt.train.fit"]
        bare = r["results"]["bare lax.scan"]
        lines.append(
            f"| {r['case']} | {b['ms_per_step_median']:.3f} | {f['ms_per_step_median']:.3f} "
            f"| {r['speedup']:.1f}x | {bare['ms_per_step_median']:.3f} "
            f"| {b['final_test_accuracy_median']:.3f} / "
            f"{f['final_test_accuracy_median']:.3f} |"
        )
    lines += [
        "",
        "The bare-scan column is the floor (the same steps as one `lax.scan` per epoch with "
        "nothing else); `fit` adds the evaluation, early stopping, history and progress bar.",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--no-write", action="store_true",
                        help="print only; do not touch results/ or RESULTS.md")
    args = parser.parse_args(argv)
    train, test = load()
    load_before = os.getloadavg()[0]
    results = []
    for case in CASES:
        r = measure(case, train, test, args.epochs, args.repeats)
        results.append(r)
        f = r["results"]
        print(f"{r['case']}: loop {f['flax+optax loop']['ms_per_step_median']:.3f} ms/step, "
              f"fit {f['jt.train.fit']['ms_per_step_median']:.3f} ms/step "
              f"({r['speedup']:.1f}x), bare scan "
              f"{f['bare lax.scan']['ms_per_step_median']:.3f} ms/step; test acc "
              f"{f['flax+optax loop']['final_test_accuracy_median']:.3f} / "
              f"{f['jt.train.fit']['final_test_accuracy_median']:.3f}")
    meta = {"jax": jax.__version__, "cpus": os.cpu_count(), "machine": platform.machine(),
            "device": str(jax.devices()[0]), "epochs": args.epochs, "repeats": args.repeats,
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"load average: {meta['load_before']} before, {meta['load_after']} after")
    if not args.no_write:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "fit_loop.json").write_text(
            json.dumps({"meta": meta, "cases": results}, indent=2) + "\n")
        replace_section(HERE / "RESULTS.md", "fit-loop", table(results, meta))


if __name__ == "__main__":
    main()
