"""What hyperparameters-as-data buys a user who tunes: a learning-rate sweep as one program.

    python benchmarks/sweep.py            # K = 4, 16, 64 (minutes)
    python benchmarks/sweep.py --quick    # K = 4, 16, few epochs (a few minutes)

A K-point sweep of Adam's learning rate (log-spaced, 1e-4 to 1e-1) trains each model
for a fixed number of epochs from the same initial params over the same batch order
and keeps every rate's test accuracy, three ways:

* ``jt_vmap``: ONE jitted program, ``jax.vmap`` over a stacked ``jt.adam(lr)`` (a
  jtricks transform is a pytree whose leaves are its hyperparameters); inside, the
  training is a ``lax.scan`` of ``jt.train.make_step``'s step;
* ``jt_map``: the same one program with the rates ``lax.map``ped (one after the
  other inside it): what a CPU, which gains nothing from running the K trainings
  side by side, should run;
* ``optax_seq``: K trainings one after the other, each building ``optax.adam(lr)``
  and jitting its own training program (a compile per rate: the rate is a constant
  baked into the program), as optax users do today;
* ``optax_inject``: ``optax.inject_hyperparams(optax.adam)`` (the rate lives in the
  optimizer state), its training compiled once and run K times one after the other.

For reference, ``optax_inject_vmap`` maps that injected program over the rates too:
optax can sweep in one program when every rate is put into its state by hand.

Each training is the same ``lax.scan`` over the same precomputed batch indices, so the
programs differ only in how the rate reaches them (on CPU every scan body gets
``fit``'s convolution-layout fix, ``jtricks.train.convs``). Wall times include tracing and
compilation (each measurement builds fresh jitted functions) and end when the
accuracies are on the host. Both libraries must find the same best rate (highest test
accuracy, then lowest test loss) with the same accuracy.

Results go to ``benchmarks/results/sweep-<platform>[-quick].json`` and to the section
of ``benchmarks/RESULTS.md`` between the ``sweep`` markers; ``--json PATH`` also writes
``{model: {K: {"jt_vmap_s": ..., "optax_seq_s": ..., "optax_inject_s": ...}}}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from fit_loop import MLP
from fit_loop import load as load_digits
from results_md import replace_section, targets_table
from run import loadavg, machine

import jtricks as jt
from jtricks.train.convs import canonical_convs

HERE = Path(__file__).resolve().parent
ACC_TOL = 0.005  # best accuracies this close count as the same
SECTION = "Learning-rate sweeps: one vmapped program against K optax trainings"


# ---------------------------------------------------------------------------------------
# tasks


@dataclass(frozen=True)
class Task:
    """A model, its data and a fixed batch order (``idx``: steps x batch indices)."""

    name: str
    module: nn.Module
    params: Any
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    idx: np.ndarray


def batch_order(n: int, batch: int, epochs: int, seed: int = 0) -> np.ndarray:
    """Every epoch's shuffled full batches, one row per step: ``(epochs * steps, batch)``."""
    rng = np.random.default_rng(seed)
    steps = n // batch
    return np.concatenate([rng.permutation(n)[: steps * batch].reshape(steps, batch)
                           for _ in range(epochs)])


class CNN1D(nn.Module):
    """The MNIST-1D paper's CNN: three ReLU convs (kernels 5, 3, 3; stride 2; 25
    channels), then a dense layer on the flattened features."""

    channels: int = 25

    @nn.compact
    def __call__(self, x):
        h = x[..., None]
        for k in (5, 3, 3):
            h = nn.relu(nn.Conv(self.channels, (k,), strides=2, padding=[(1, 1)])(h))
        return nn.Dense(10)(h.reshape(h.shape[0], -1))


def make_task(name: str, module: nn.Module, train, test, batch: int, epochs: int) -> Task:
    params = module.init(jax.random.key(0), jnp.asarray(train[0][:1]))["params"]
    return Task(name, module, params, train, test, batch_order(len(train[0]), batch, epochs))


def digits_task(epochs: int) -> Task:
    """scikit-learn's digits (1437 train / 360 test), MLP 64-256-256-10, batch 128."""
    train, test = load_digits()
    return make_task("digits MLP", MLP((256, 256, 10)), train, test, 128, epochs)


def mnist1d_task(epochs: int) -> Task:
    """MNIST-1D (4000 train / 1000 test, 40 samples per signal), its CNN, batch 100."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    d = make_dataset(args)
    train = (d["x"].astype(np.float32), d["y"].astype(np.int32))
    test = (d["x_test"].astype(np.float32), d["y_test"].astype(np.int32))
    return make_task("mnist1d CNN", CNN1D(), train, test, 100, epochs)


TASKS: dict[str, Callable[[int], Task]] = {"digits MLP": digits_task,
                                           "mnist1d CNN": mnist1d_task}


# ---------------------------------------------------------------------------------------
# one training, written once, driven by each library


def xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def training(task: Task, init: Callable, step: Callable, params_of: Callable) -> Callable:
    """``run(*hyper, data) -> (test accuracy, test loss)``: ``init(params, *hyper)``,
    then ``step(carry, batch, *hyper)`` over the task's batch order in one ``lax.scan``."""

    def run(*hyper_and_data):
        *hyper, (x, y, xt, yt, idx) = hyper_and_data

        def body(carry, i):
            return step(carry, (x[i], y[i]), *hyper), None

        # Both libraries' scans get fit's CPU fix (XLA CPU runs a loop body's
        # permuted convolutions, the backward pass's, as naive loops).
        body = canonical_convs(body) if jax.default_backend() == "cpu" else body
        carry, _ = jax.lax.scan(body, init(task.params, *hyper), idx)
        logits = task.module.apply({"params": params_of(carry)}, xt)
        return jnp.mean(logits.argmax(-1) == yt), xent(logits, yt)

    return run


def jt_training(task: Task) -> Callable:
    """``run(tx, data)`` with jtricks: ``make_step``'s step; ``tx`` is an argument."""

    def loss_fn(params, model_state, batch, key):
        x, y = batch
        return xent(task.module.apply({"params": params}, x), y), (model_state, {})

    def init(params, tx):
        return jt.train.make_step(loss_fn, tx).init(params, jax.random.key(0))

    def step(state, batch, tx):
        return jt.train.make_step(loss_fn, tx).apply(state, batch)[0]

    return training(task, init, step, lambda state: state.params)


def optax_training(task: Task, tx: Any = None) -> Callable:
    """``run(data)`` for a fixed optax ``tx``, or ``run(lr, data)`` with
    ``inject_hyperparams(adam)`` when ``tx`` is None (the rate set in the state)."""
    inject = tx is None
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3) if inject else tx

    def init(params, *lr):
        state = tx.init(params)
        if inject:
            state.hyperparams["learning_rate"] = jnp.asarray(lr[0], jnp.float32)
        return params, state

    def step(carry, batch, *lr):
        params, state = carry
        x, y = batch
        grads = jax.grad(lambda p: xent(task.module.apply({"params": p}, x), y))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return training(task, init, step, lambda carry: carry[0])


# ---------------------------------------------------------------------------------------
# the three sweeps


def data_of(task: Task) -> tuple:
    return jax.device_put((*task.train, *task.test, task.idx))


COMPILE_S: dict[str, float] = {}  # the last lower + compile time of each one-program sweep


def compiled(fn: Callable, name: str, *args: Any) -> Callable:
    """``fn`` compiled for ``args``, its lower + compile time kept in COMPILE_S."""
    t0 = time.perf_counter()
    executable = fn.lower(*args).compile()
    COMPILE_S[name] = time.perf_counter() - t0
    return executable


def stacked_adam(lrs: np.ndarray) -> Any:
    """One ``jt.adam`` whose every hyperparameter leaf is stacked over the rates."""
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]),
                        *[jt.adam(float(lr)) for lr in lrs])


def sweep_jt_vmap(task: Task, lrs: np.ndarray) -> np.ndarray:
    """One program: the training vmapped over a stacked ``jt.adam``."""
    stacked = stacked_adam(lrs)
    run = jax.jit(jax.vmap(jt_training(task), in_axes=(0, None)))
    data = data_of(task)
    return np.stack(jax.device_get(compiled(run, "jt_vmap", stacked, data)(stacked, data)),
                    axis=1)


def sweep_jt_map(task: Task, lrs: np.ndarray) -> np.ndarray:
    """One program: the training ``lax.map``ped over a stacked ``jt.adam``."""
    stacked = stacked_adam(lrs)
    train = jt_training(task)
    run = jax.jit(lambda tx, data: jax.lax.map(lambda one: train(one, data), tx))
    data = data_of(task)
    return np.stack(jax.device_get(compiled(run, "jt_map", stacked, data)(stacked, data)),
                    axis=1)


def sweep_jt_separate(task: Task, lrs: np.ndarray) -> np.ndarray:
    """The same jtricks training, one rate at a time (one compile: tx is data)."""
    run = jax.jit(jt_training(task))
    data = data_of(task)
    return np.array([jax.device_get(run(jt.adam(float(lr)), data)) for lr in lrs])


def sweep_optax_seq(task: Task, lrs: np.ndarray) -> np.ndarray:
    """K trainings, each ``optax.adam(lr)`` with its own jitted program."""
    data = data_of(task)
    return np.array([jax.device_get(jax.jit(optax_training(task, optax.adam(float(lr))))(data))
                     for lr in lrs])


def sweep_optax_inject(task: Task, lrs: np.ndarray) -> np.ndarray:
    """``inject_hyperparams(adam)``: compiled once, run K times one after the other."""
    run = jax.jit(optax_training(task))
    data = data_of(task)
    run = compiled(run, "optax_inject", jnp.float32(lrs[0]), data)
    return np.array([jax.device_get(run(jnp.float32(lr), data)) for lr in lrs])


def sweep_optax_inject_vmap(task: Task, lrs: np.ndarray) -> np.ndarray:
    """For reference: the injected optax training vmapped over the rates."""
    run = jax.jit(jax.vmap(optax_training(task), in_axes=(0, None)))
    return np.stack(jax.device_get(run(jnp.asarray(lrs, jnp.float32), data_of(task))), axis=1)


SWEEPS: dict[str, Callable[[Task, np.ndarray], np.ndarray]] = {
    "jt_vmap": sweep_jt_vmap,
    "jt_map": sweep_jt_map,
    "optax_seq": sweep_optax_seq,
    "optax_inject": sweep_optax_inject,
    "optax_inject_vmap": sweep_optax_inject_vmap,
}


def best(lrs: np.ndarray, results: np.ndarray) -> tuple[float, float]:
    """The rate with the highest test accuracy (ties: the lowest test loss)."""
    i = min(range(len(lrs)), key=lambda j: (-results[j, 0], results[j, 1]))
    return float(lrs[i]), float(results[i, 0])


def measure(task: Task, k: int, repeats: int) -> dict:
    """Wall time (compiles included) of every sweep of ``k`` rates, in rotating order."""
    lrs = np.logspace(-4, -1, k)
    times: dict[str, list[float]] = {name: [] for name in SWEEPS}
    results: dict[str, np.ndarray] = {}
    for r in range(repeats):
        names = list(SWEEPS)
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            results[name] = SWEEPS[name](task, lrs)
            times[name].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"lrs": lrs.tolist(), "load": loadavg()}
    for name in SWEEPS:
        lr, acc = best(lrs, results[name])
        out[f"{name}_s"] = statistics.median(times[name])
        if name in COMPILE_S:
            out[f"{name}_compile_s"] = COMPILE_S[name]
        out[name] = {"all_s": times[name], "best_lr": lr, "best_acc": acc,
                     "acc": results[name][:, 0].tolist()}
    def max_diff(a, b):
        return float(np.abs(results[a][:, 0] - results[b][:, 0]).max())

    out["max_acc_diff_jt_optax"] = max_diff("jt_vmap", "optax_seq")
    # The noise floor: optax against itself, the rate a constant against the rate data.
    out["max_acc_diff_optax_seq_inject"] = max_diff("optax_seq", "optax_inject")
    # The libraries round differently (and a vmapped conv is a batched one): a test
    # example or two may flip, so "the same accuracy" allows ACC_TOL.
    out["same_best"] = bool(
        out["jt_vmap"]["best_lr"] == out["optax_seq"]["best_lr"]
        and abs(out["jt_vmap"]["best_acc"] - out["optax_seq"]["best_acc"]) <= ACC_TOL)
    return out


# ---------------------------------------------------------------------------------------
# reporting


def with_compile(r: dict, name: str) -> str:
    c = r.get(f"{name}_compile_s")
    return f"{r[f'{name}_s']:.2f}" + ("" if c is None else f" ({c:.2f})")


def markdown(report: dict) -> str:
    m = report["machine"]
    dev = m["cpu"] if m["platform"] == "cpu" else m["device"]
    quick = " --quick" if report["quick"] else ""
    lines = [
        f"### {m['platform']}: {dev}{' (--quick)' if report['quick'] else ''}",
        "",
        f"`python benchmarks/sweep.py{quick}`: {m['cores']} cores, jax {m['jax']}, "
        f"optax {m['optax']}, {m['date']}; load average {report['load_before']} before, "
        f"{report['load_after']} after; {report['epochs']} epochs per training, Adam's rate "
        f"log-spaced in [1e-4, 1e-1]; wall time of the whole sweep including every "
        f"compile, median of {report['repeats']} in rotating order.",
        "",
        "jt_vmap: one program, `jax.vmap` over a stacked `jt.adam` (make_step's step in a "
        "`lax.scan`); jt_map: the same program with the rates `lax.map`ped (one after the "
        "other inside it); optax_seq: K trainings each building `optax.adam(lr)` (a compile per "
        "rate); optax_inject: `inject_hyperparams(adam)` compiled once, run K times; "
        "optax_inject_vmap (reference): that program vmapped over the rates; in brackets: "
        "the one compile's share of a one-program sweep. Best: the rate "
        "with the highest test accuracy (then lowest test loss), jt_vmap / optax_seq / "
        "optax_inject; max acc diff: the largest difference of one rate's test accuracy "
        "between jt_vmap and optax_seq, and in brackets between optax_seq and optax_inject "
        "(optax against itself: a rate compiled in as a constant rounds differently from "
        "a rate passed as data, and a few epochs at a high rate amplify that).",
        "",
        "| model | K | jt_vmap s | jt_map s | optax_seq s | optax_inject s "
        "| optax_inject_vmap s | jt / seq | jt / inject | jt_map / inject "
        "| best lr jt / seq / inject | best acc jt / seq / inject "
        "| max acc diff jt-seq (seq-inject) | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for model, by_k in report["results"].items():
        for k, r in by_k.items():
            j, s, i = r["jt_vmap"], r["optax_seq"], r["optax_inject"]
            lines.append(
                f"| {model} | {k} | {with_compile(r, 'jt_vmap')} | "
                f"{with_compile(r, 'jt_map')} | {r['optax_seq_s']:.2f} | "
                f"{with_compile(r, 'optax_inject')} | {r['optax_inject_vmap_s']:.2f} | "
                f"{r['jt_vmap_s'] / r['optax_seq_s']:.2f} | "
                f"{r['jt_vmap_s'] / r['optax_inject_s']:.2f} | "
                f"{r['jt_map_s'] / r['optax_inject_s']:.2f} | "
                f"{j['best_lr']:.2g} / {s['best_lr']:.2g} / {i['best_lr']:.2g} | "
                f"{j['best_acc']:.3f} / {s['best_acc']:.3f} / {i['best_acc']:.3f} | "
                f"{r['max_acc_diff_jt_optax']:.3f} "
                f"({r.get('max_acc_diff_optax_seq_inject', float('nan')):.3f}) | {r['load']} |")
    return "\n".join(lines) + "\n" + targets(report)


def targets(report: dict) -> str:
    rows = []
    for model, by_k in report["results"].items():
        r = by_k.get("16") or by_k.get(16)
        if r is None:
            continue
        seq = r["jt_vmap_s"] / r["optax_seq_s"]
        inj = r["jt_vmap_s"] / r["optax_inject_s"]
        goal = 0.3 if report["machine"]["platform"] != "cpu" else 1.0
        mapped = r["jt_map_s"] / r["optax_inject_s"]
        for what, value, limit in ((f"{model}, K=16: jt_vmap / optax_seq", seq, 0.2),
                                   (f"{model}, K=16: jt_vmap / optax_inject", inj, goal),
                                   (f"{model}, K=16: jt_map / optax_inject", mapped, goal)):
            rows.append(f"| {what} | {value:.2f} | <= {limit} | "
                        f"{'met' if value <= limit else '**not met**'} |")
        j, o = r["jt_vmap"], r["optax_seq"]
        same = j["best_lr"] == o["best_lr"] and abs(j["best_acc"] - o["best_acc"]) <= ACC_TOL
        rows.append(f"| {model}, K=16: same best rate and accuracy (within {ACC_TOL}) | "
                    f"{j['best_lr']:.2g} / {o['best_lr']:.2g}, {j['best_acc']:.3f} / "
                    f"{o['best_acc']:.3f} | same | {'met' if same else '**not met**'} |")
    return targets_table(rows)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="K = 4, 16 and few epochs")
    ap.add_argument("--ks", default=None, help="comma-separated K values")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--only", default="", help="substring of a model name")
    ap.add_argument("--json", default=None, help="{model: {K: {..._s}}} to this path")
    ap.add_argument("--out", default=None, help="full report (default: results/sweep-...)")
    ap.add_argument("--no-markdown", action="store_true", help="leave RESULTS.md alone")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="write RESULTS.md's section from a saved report; run nothing")
    args = ap.parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text())
        replace_section(HERE / "RESULTS.md", "sweep", markdown(report), SECTION)
        return report
    ks = [int(k) for k in args.ks.split(",")] if args.ks else (
        [4, 16] if args.quick else [4, 16, 64])
    epochs = args.epochs or (3 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)
    report: dict[str, Any] = {"machine": machine(), "quick": args.quick, "epochs": epochs,
                              "repeats": repeats, "load_before": loadavg(), "results": {}}
    jax.block_until_ready(jax.jit(lambda x: x + 1)(1.0))  # backend start-up, not timed
    for name, make in TASKS.items():
        if args.only and args.only not in name:
            continue
        task = make(epochs)
        report["results"][name] = {}
        for k in ks:
            r = measure(task, k, repeats)
            report["results"][name][str(k)] = r
            print(f"{name:12s} K={k:3d}  jt_vmap {r['jt_vmap_s']:6.2f} s  jt_map "
                  f"{r['jt_map_s']:6.2f} s  optax_seq "
                  f"{r['optax_seq_s']:6.2f} s  optax_inject {r['optax_inject_s']:6.2f} s  "
                  f"inject_vmap {r['optax_inject_vmap_s']:6.2f} s  best "
                  f"{r['jt_vmap']['best_lr']:.2g}/{r['optax_seq']['best_lr']:.2g} acc "
                  f"{r['jt_vmap']['best_acc']:.3f}/{r['optax_seq']['best_acc']:.3f}  "
                  f"load {r['load']}", flush=True)
    report["load_after"] = loadavg()
    plat = report["machine"]["platform"]
    out = Path(args.out) if args.out else (
        HERE / "results" / f"sweep-{plat}{'-quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    if args.json:
        keys = ("jt_vmap_s", "jt_map_s", "optax_seq_s", "optax_inject_s",
                "optax_inject_vmap_s")
        Path(args.json).write_text(json.dumps(
            {m: {k: {key: r[key] for key in keys} for k, r in by_k.items()}
             for m, by_k in report["results"].items()}, indent=1))
    if not args.no_markdown:
        replace_section(HERE / "RESULTS.md", "sweep", markdown(report), SECTION)
    return report


if __name__ == "__main__":
    main()
