"""An optimizer bake-off at equal step budgets, each optimizer's learning rate tuned alike.

    python benchmarks/bakeoff.py            # the full run (both tasks side by side took 31 minutes
                                            # on 2 cores shared with other work)
    python benchmarks/bakeoff.py --quick    # tiny models, few steps, 3 rates (about 9 minutes
                                            # at load 9; compile-bound)

Two tasks, both on data that ships offline:

* ``char transformer``: a small causal, pre-LayerNorm transformer predicting the next
  byte of a fixed, sorted list of the Python standard library's own source files (read
  from ``Path(os.__file__).parent``; the first 90% trains, the last 10% validates);
* ``mnist1d CNN``: the MNIST-1D paper's CNN on ``mnist1d``'s ``make_dataset`` (4,000
  train / 1,000 validation signals), batch 100.

Nine jtricks optimizers: AdamW, Lion, Adafactor, Muon, SOAP, Shampoo, MARS, cautious
AdamW (``jt.cautious(jt.adamw(...))``) and schedule-free AdamW (evaluated at its
averaged point, ``jt.schedule_free_eval_params``). Each gets the same number of steps
and a grid of ``--rates`` (6) log-spaced learning rates over 2.5 decades (half a decade
apart), starting at the low end of its usual range (the same width for every
optimizer). The rate scales one shared schedule shape: a linear warmup over the first
tenth of the steps, then a cosine decay to a tenth of the peak; schedule-free AdamW takes
its own rule (the same warmup, then constant). Other hyperparameters are the library
defaults, except where stated in ``OPTIMIZERS``.

Every optimizer's whole grid trains as ONE jitted program: a jtricks transform is a pytree
whose leaves are its hyperparameters, so the K transforms stack into one and ``jax.vmap``
maps the training over it (hyperparameters equal across the grid and the step counters
stay unmapped, so a ``lax.cond`` on the step, e.g. Shampoo's root refresh, stays a branch
instead of both branches on every step). The program takes the
transform, the params and the optimizer state as arguments (compiled once, params and
state donated); inside, a ``lax.scan`` over evaluation chunks of a ``lax.scan`` over
steps, evaluating every ``eval_every`` steps on fixed batches.

The best rate of an optimizer is the one with the lowest final validation loss. Reported
per optimizer: best rate, final train / validation loss (and accuracy for the CNN), the
first evaluated step at which validation loss reaches AdamW's final one ("never" if it
does not), the wall time per step of the tuned single-rate program (compiled on its own,
median of a few timed runs after the compile) and the optimizer state's bytes for one
model. Results go to ``benchmarks/results/bakeoff.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jtricks as jt

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "examples"))

import common  # noqa: E402  (examples/common.py: the MNIST-1D loader and its CNN)
from run import loadavg  # noqa: E402  (benchmarks/run.py: one load-average reader)

RESULTS = HERE / "results"

# A fixed, sorted list of standard-library modules: the same corpus on every machine that
# runs the same Python. Files a Python version lacks are left out (the JSON lists the ones
# read, with their byte count).
CORPUS_FILES = (
    "argparse.py", "collections/__init__.py", "contextlib.py", "dataclasses.py",
    "enum.py", "fractions.py", "functools.py", "heapq.py", "inspect.py", "pathlib.py",
    "random.py", "statistics.py", "textwrap.py", "typing.py",
)
VOCAB = 128  # bytes; the few non-ASCII ones all map to 0 (NUL never occurs in source)


# ---------------------------------------------------------------------------------------
# configurations


@dataclass(frozen=True)
class Config:
    """The size of one task's run."""

    steps: int
    eval_every: int
    batch: int
    timed_steps: int  # steps of the single-rate timing program
    model: dict = field(default_factory=dict)

    @property
    def warmup(self) -> int:
        return max(1, self.steps // 10)


CONFIGS: dict[str, dict[str, Config]] = {
    "full": {
        "char transformer": Config(steps=200, eval_every=20, batch=8, timed_steps=30,
                                   model={"d": 32, "layers": 2, "heads": 2, "ctx": 32,
                                          "eval_batch": 32}),
        "mnist1d CNN": Config(steps=600, eval_every=50, batch=100, timed_steps=100),
    },
    "quick": {
        "char transformer": Config(steps=60, eval_every=20, batch=8, timed_steps=10,
                                   model={"d": 32, "layers": 1, "heads": 2, "ctx": 32,
                                          "eval_batch": 8}),
        "mnist1d CNN": Config(steps=150, eval_every=50, batch=100, timed_steps=20),
    },
}


# ---------------------------------------------------------------------------------------
# tasks: params, a loss, a batch gatherer and an evaluation, all pure


@dataclass(frozen=True)
class Task:
    """One model on one data set, with a fixed batch order.

    ``loss(params, batch) -> scalar``; ``batch(data, rows) -> batch`` gathers the batch of
    one step from ``rows`` (one row of ``data["idx"]``); ``evaluate(params, data) ->
    {name: scalar}`` on fixed evaluation batches. ``data`` lives on the device and holds
    the batch order ``idx`` of shape ``(steps, batch)``.
    """

    name: str
    config: Config
    params: Any
    loss: Callable
    batch: Callable
    evaluate: Callable
    data: dict
    info: dict


def corpus(files: tuple[str, ...] = CORPUS_FILES) -> tuple[np.ndarray, list[str]]:
    """The standard-library files in ``files`` that exist, concatenated, as byte ids."""
    lib = Path(os.__file__).parent
    found = [f for f in sorted(files) if (lib / f).is_file()]
    if not found:
        raise FileNotFoundError(f"corpus: none of {sorted(files)} is in {lib}; pass files "
                                "that this Python's standard library has.")
    raw = b"".join((lib / f).read_bytes() for f in found)
    ids = np.frombuffer(raw, np.uint8).astype(np.int32)
    return np.where(ids < VOCAB, ids, 0), found


def transformer_init(key, d: int, layers: int, ctx: int, vocab: int = VOCAB) -> dict:
    """GPT-2's layout: token and position embeddings, pre-LN blocks (attention, a 4x MLP
    with GELU), a final LayerNorm and an untied head; normal(0.02) weights, the residual
    projections scaled by 1/sqrt(2 * layers)."""
    keys = iter(jax.random.split(key, 3 + 4 * layers))
    w = jt.init.normal(0.02)
    w_out = jt.init.normal(0.02 / math.sqrt(2 * layers))
    blocks = [{"ln1": jt.layers.layer_norm_init(d), "qkv": w(next(keys), (d, 3 * d)),
               "proj": w_out(next(keys), (d, d)), "ln2": jt.layers.layer_norm_init(d),
               "up": w(next(keys), (d, 4 * d)), "down": w_out(next(keys), (4 * d, d))}
              for _ in range(layers)]
    return {"embed": w(next(keys), (vocab, d)), "pos": w(next(keys), (ctx, d)),
            "blocks": blocks, "ln_f": jt.layers.layer_norm_init(d),
            "head": w(next(keys), (d, vocab))}


def transformer_apply(params: dict, tokens: jax.Array, heads: int) -> jax.Array:
    """Next-token logits ``(batch, time, vocab)`` for ``tokens`` ``(batch, time)``."""
    b, t = tokens.shape
    x = params["embed"][tokens] + params["pos"][:t]
    d = x.shape[-1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    for blk in params["blocks"]:
        h = jt.layers.layer_norm(blk["ln1"], x)
        q, k, v = jnp.split((h @ blk["qkv"]).reshape(b, t, 3 * heads, d // heads), 3, 2)
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // heads)
        a = jax.nn.softmax(jnp.where(causal, s, -1e9), axis=-1)
        x = x + jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, t, d) @ blk["proj"]
        h = jt.layers.layer_norm(blk["ln2"], x)
        x = x + jax.nn.gelu(h @ blk["up"]) @ blk["down"]
    return jt.layers.layer_norm(params["ln_f"], x) @ params["head"]


def batch_order(n: int, batch: int, steps: int, seed: int) -> np.ndarray:
    """Shuffled epochs of ``n`` examples cut into ``steps`` batches: ``(steps, batch)``."""
    rng = np.random.default_rng(seed)
    per_epoch = n // batch
    epochs = -(-steps // per_epoch)
    rows = np.concatenate([rng.permutation(n)[: per_epoch * batch].reshape(per_epoch, batch)
                           for _ in range(epochs)])
    return rows[:steps].astype(np.int32)


def transformer_task(config: Config, seed: int = 0) -> Task:
    """The character-level transformer on the standard library's source."""
    m = config.model
    ids, files = corpus()
    split = int(0.9 * len(ids))
    train, val = ids[:split], ids[split:]
    ctx = m["ctx"]
    rng = np.random.default_rng(seed)
    # A window starting at s predicts tokens s+1 .. s+ctx from s .. s+ctx-1.
    idx = rng.integers(0, len(train) - ctx - 1, (config.steps, config.batch), dtype=np.int32)
    n_eval = m["eval_batch"]
    starts = {"train": rng.integers(0, len(train) - ctx - 1, n_eval),
              "val": np.linspace(0, len(val) - ctx - 1, n_eval).astype(np.int64)}
    windows = np.arange(ctx + 1)
    eval_sets = {"train": train[starts["train"][:, None] + windows],
                 "val": val[starts["val"][:, None] + windows]}
    params = transformer_init(jax.random.key(seed), m["d"], m["layers"], ctx)
    heads = m["heads"]

    def xent(params, seqs):
        logits = transformer_apply(params, seqs[:, :-1], heads)
        return common.cross_entropy(logits.reshape(-1, VOCAB), seqs[:, 1:].reshape(-1))

    def gather(data, rows):
        return data["train"][rows[:, None] + jnp.arange(ctx + 1)]

    def evaluate(params, data):
        return {"train_loss": xent(params, data["eval_train"]),
                "val_loss": xent(params, data["eval_val"])}

    data = jax.device_put({"train": train, "eval_train": eval_sets["train"],
                           "eval_val": eval_sets["val"], "idx": idx})
    info = {"corpus_files": files, "corpus_bytes": len(ids), "train_tokens": len(train),
            "val_tokens": len(val), "eval_sequences": n_eval, **m}
    return Task("char transformer", config, params, xent, gather, evaluate, data, info)


def cnn_task(config: Config, seed: int = 0) -> Task:
    """The MNIST-1D CNN (examples/common.py's), its default 4000 / 1000 split."""
    d = common.mnist1d()
    (x, y), (xv, yv) = d["train"], d["test"]
    params = common.cnn_init(jax.random.key(seed))

    def xent(params, batch):
        return common.cross_entropy(common.cnn_apply(params, batch[0]), batch[1])

    def gather(data, rows):
        return data["x"][rows], data["y"][rows]

    def evaluate(params, data):
        out = {}
        for split, (xs, ys) in (("train", (data["x"], data["y"])),
                                ("val", (data["xv"], data["yv"]))):
            logits = common.cnn_apply(params, xs)
            out[f"{split}_loss"] = common.cross_entropy(logits, ys)
            out[f"{split}_accuracy"] = common.accuracy(logits, ys)
        return out

    data = jax.device_put({"x": x, "y": y, "xv": xv, "yv": yv,
                           "idx": batch_order(len(x), config.batch, config.steps, seed)})
    info = {"train_examples": len(x), "val_examples": len(xv)}
    return Task("mnist1d CNN", config, params, xent, gather, evaluate, data, info)


TASKS: dict[str, Callable[[Config], Task]] = {"char transformer": transformer_task,
                                              "mnist1d CNN": cnn_task}


# ---------------------------------------------------------------------------------------
# optimizers: each a function of (peak rate, config) -> transform


def warmup_cosine(peak: float, config: Config) -> Any:
    """The shared schedule shape: linear warmup from 0, cosine decay to peak / 10."""
    return jt.schedules.warmup_cosine_decay(0.0, peak, config.warmup, config.steps,
                                            end_value=0.1 * peak)


def muon_dims(params: Any) -> Any:
    """Muon for the hidden weights (a conv kernel is a (width * in, out) matrix); AdamW
    for embeddings, the output layer and every vector. Module level: a transform keeps it
    as a static field, so it must hash and compare equal across the grid."""
    def spec(path, p):
        top = getattr(path[0], "key", None)
        if p.ndim < 2 or top in ("embed", "pos", "head", "out"):
            return None
        return jt.MuonDimensionNumbers(tuple(range(p.ndim - 1)), p.ndim - 1)
    return jax.tree_util.tree_map_with_path(spec, params)


MUON_ADAM_RATIO = 0.1  # the AdamW part of Muon runs at a tenth of Muon's rate


@dataclass(frozen=True)
class Optimizer:
    """``make(peak rate, config)`` and the low end of the rate grid."""

    make: Callable[[float, Config], Any]
    low: float
    note: str = ""
    schedule_free: bool = False
    # Rates one after the other inside the one program (lax.map) instead of vmapped:
    # jaxlib's CPU eigh on a batch of matrices splits the batch over the intra-op thread
    # pool and waits inside a pool thread; two such waits at once (a vmapped Shampoo's
    # factors) leave no thread to do the work, and the program hangs on 2 cores.
    sequential_rates: bool = False


OPTIMIZERS: dict[str, Optimizer] = {
    "adamw": Optimizer(lambda lr, c: jt.adamw(warmup_cosine(lr, c)), 3e-4,
                       "weight_decay 1e-4"),
    "lion": Optimizer(lambda lr, c: jt.lion(warmup_cosine(lr, c)), 3e-5,
                      "b 0.9/0.99, weight_decay 1e-3"),
    "adafactor": Optimizer(lambda lr, c: jt.adafactor(warmup_cosine(lr, c)), 3e-3,
                           "relative to each parameter's RMS, clipping 1"),
    "muon": Optimizer(
        lambda lr, c: jt.muon(warmup_cosine(lr, c),
                              adam_learning_rate=warmup_cosine(MUON_ADAM_RATIO * lr, c),
                              muon_weight_dimension_numbers=muon_dims), 3e-3,
        f"hidden matrices and conv kernels; AdamW at {MUON_ADAM_RATIO} x the rate for "
        "the rest"),
    "soap": Optimizer(lambda lr, c: jt.soap(warmup_cosine(lr, c)), 3e-4,
                      "b 0.95/0.95, bases every 10 steps, weight_decay 0.01; rates lax.mapped",
                      sequential_rates=True),
    "shampoo": Optimizer(lambda lr, c: jt.shampoo(warmup_cosine(lr, c),
                                                  precondition_frequency=10), 3e-4,
                         "Adam-grafted, roots every 10 steps (as SOAP's bases); rates lax.mapped",
                         sequential_rates=True),
    "mars": Optimizer(lambda lr, c: jt.mars(warmup_cosine(lr, c)), 3e-4,
                      "b 0.95/0.99, gamma 0.025"),
    "cautious_adamw": Optimizer(lambda lr, c: jt.cautious(jt.adamw(warmup_cosine(lr, c))),
                                3e-4, "jt.cautious(jt.adamw), weight_decay 1e-4"),
    "schedule_free_adamw": Optimizer(
        lambda lr, c: jt.schedule_free_adamw(lr, warmup_steps=c.warmup), 3e-4,
        "warmup then constant, evaluated at the average", schedule_free=True),
}

GRID_DECADES = 2.5  # every optimizer's grid spans 10**2.5 from its low end


def rate_grid(low: float, k: int) -> np.ndarray:
    """``k`` log-spaced rates from ``low`` to ``low * 10**2.5`` (6 rates: half a decade
    apart). The same width for every optimizer."""
    return low * 10 ** (GRID_DECADES * np.linspace(0.0, 1.0, k))


# ---------------------------------------------------------------------------------------
# the training program


def eval_params(opt: Optimizer, opt_state: Any, params: Any) -> Any:
    return jt.schedule_free_eval_params(opt_state, params) if opt.schedule_free else params


def train_fn(task: Task, opt: Optimizer) -> Callable:
    """``run(tx, params, opt_state, data) -> (params, opt_state, history)``: the task's
    batch order in chunks of ``eval_every`` steps, evaluating after each chunk (and
    before the first step). ``history[name]`` has one entry per evaluation."""
    cfg = task.config

    def step(tx, data, carry, rows):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(task.loss)(params, task.batch(data, rows))
        updates, opt_state = tx.update(grads, opt_state, params)
        return (jt.apply_updates(params, updates), opt_state), loss

    def run(tx, params, opt_state, data):
        def chunk(carry, rows):
            carry, losses = jax.lax.scan(lambda c, r: step(tx, data, c, r), carry, rows)
            out = task.evaluate(eval_params(opt, carry[1], carry[0]), data)
            return carry, {**out, "batch_loss": jnp.mean(losses)}

        first = task.evaluate(eval_params(opt, opt_state, params), data)
        first["batch_loss"] = first["train_loss"]
        idx = data["idx"].reshape(cfg.steps // cfg.eval_every, cfg.eval_every, -1)
        (params, opt_state), hist = jax.lax.scan(chunk, (params, opt_state), idx)
        hist = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, hist)
        return params, opt_state, hist

    return run


def steps_fn(task: Task) -> Callable:
    """``run(tx, params, opt_state, data)``: ``timed_steps`` steps, no evaluation (the
    program whose wall time per step the table reports)."""

    def run(tx, params, opt_state, data):
        def step(carry, rows):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(task.loss)(params, task.batch(data, rows))
            updates, opt_state = tx.update(grads, opt_state, params)
            return (jt.apply_updates(params, updates), opt_state), loss

        rows = data["idx"][: task.config.timed_steps]
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), rows)
        return params, opt_state, losses

    return run


def stack(trees: list[Any], shared: Callable[[np.ndarray], bool]) -> tuple[Any, Any]:
    """One tree from ``trees`` (same structure): a leaf kept once (``vmap`` axis ``None``)
    where it is equal in all of them and ``shared(leaf)`` holds, else stacked on a new
    leading axis (axis 0). Returns ``(tree, axes)``."""
    leaves = [jax.tree.leaves(t) for t in trees]
    treedef = jax.tree.structure(trees[0])
    out, axes = [], []
    for column in zip(*leaves):
        arrays = [np.asarray(x) for x in column]
        if shared(arrays[0]) and all(a.shape == arrays[0].shape
                                     and np.array_equal(a, arrays[0]) for a in arrays):
            out.append(column[0])
            axes.append(None)
        else:
            out.append(jnp.stack([jnp.asarray(x) for x in column]))
            axes.append(0)
    return jax.tree.unflatten(treedef, out), jax.tree.unflatten(treedef, axes)


def is_counter(x: np.ndarray) -> bool:
    """Integer state leaves (step counts) stay unmapped when equal across the grid, so
    a ``lax.cond`` on the step stays one branch; moments are mapped (and donated)."""
    return not np.issubdtype(x.dtype, np.inexact)


def state_bytes(tree: Any) -> int:
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


def sweep(task: Task, name: str, lrs: np.ndarray) -> dict:
    """Every rate of ``lrs`` for optimizer ``name``, as one jitted program over the
    stacked transform: ``jax.vmap`` over the rates, or for ``sequential_rates``
    optimizers ``lax.map`` (the rates one after the other, in the same one program).

    Returns ``{"history": {metric: (rates, evals)}, "compile_s", "run_s"}``.
    """
    opt = OPTIMIZERS[name]
    txs = [opt.make(float(lr), task.config) for lr in lrs]
    k = len(lrs)
    params = jax.tree.map(lambda p: jnp.broadcast_to(p, (k, *p.shape)), task.params)
    train = train_fn(task, opt)
    if opt.sequential_rates:
        tx, _ = stack(txs, lambda x: False)
        opt_state, _ = stack([t.init(task.params) for t in txs], lambda x: False)
        run = jax.jit(lambda tx, params, opt_state, data: jax.lax.map(
            lambda a: train(*a, data), (tx, params, opt_state)), donate_argnums=(1, 2))
    else:
        tx, tx_axes = stack(txs, lambda x: True)
        opt_state, state_axes = stack([t.init(task.params) for t in txs], is_counter)
        # The counters leave the program unmapped as they came in: every donated buffer
        # is reused for the output of its shape.
        run = jax.jit(jax.vmap(train, in_axes=(tx_axes, 0, state_axes, None),
                               out_axes=(0, state_axes, 0)), donate_argnums=(1, 2))
    t0 = time.perf_counter()
    compiled = run.lower(tx, params, opt_state, task.data).compile()
    t1 = time.perf_counter()
    _, _, hist = compiled(tx, params, opt_state, task.data)
    hist = jax.tree.map(np.asarray, jax.device_get(hist))
    return {"history": hist, "compile_s": t1 - t0, "run_s": time.perf_counter() - t1}


def single(task: Task, name: str, lrs: Any) -> list[dict]:
    """Each rate of ``lrs`` alone: the same training, not vmapped; one compile for all
    (the transform is an argument)."""
    opt = OPTIMIZERS[name]
    run = jax.jit(train_fn(task, opt), donate_argnums=(1, 2))
    out = []
    for lr in np.atleast_1d(lrs):
        tx = opt.make(float(lr), task.config)
        params = jax.tree.map(jnp.array, task.params)  # a copy: the donated one is consumed
        _, _, hist = run(tx, params, tx.init(task.params), task.data)
        out.append(jax.tree.map(np.asarray, jax.device_get(hist)))
    return out


def time_steps(task: Task, name: str, lr: float, repeats: int = 3) -> dict:
    """Wall time per step of the single-rate program (``timed_steps`` steps, no
    evaluation), median of ``repeats`` runs after the compile; and its state bytes."""
    opt = OPTIMIZERS[name]
    tx = opt.make(float(lr), task.config)
    run = jax.jit(steps_fn(task), donate_argnums=(1, 2))
    fresh = lambda: (jax.tree.map(jnp.array, task.params), tx.init(task.params))
    compiled = run.lower(tx, *fresh(), task.data).compile()
    jax.block_until_ready(compiled(tx, *fresh(), task.data))  # first run: not timed
    times = []
    for _ in range(repeats):
        params, opt_state = jax.block_until_ready(fresh())
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(tx, params, opt_state, task.data))
        times.append((time.perf_counter() - t0) / task.config.timed_steps)
    return {"step_ms": 1e3 * statistics.median(times), "step_ms_all": [1e3 * t for t in times],
            "state_bytes": state_bytes(tx.init(task.params))}


# ---------------------------------------------------------------------------------------
# the bake-off


def best_index(final_val: np.ndarray) -> int:
    """The rate with the lowest final validation loss (a diverged, non-finite one never)."""
    v = np.where(np.isfinite(final_val), final_val, np.inf)
    return int(np.argmin(v))


def steps_to_reach(steps: np.ndarray, val: np.ndarray, target: float) -> int | None:
    """The first evaluated step with validation loss <= ``target``, or None."""
    hit = np.nonzero(val <= target)[0]
    return int(steps[hit[0]]) if len(hit) else None


def run_task(task: Task, names: list[str], k: int, repeats: int, log=print) -> dict:
    """The sweep of every optimizer in ``names`` (AdamW first: the others are compared to
    it), its best rate's numbers and timing. A JSON-ready dict."""
    cfg = task.config
    steps = np.arange(0, cfg.steps + 1, cfg.eval_every)
    out: dict[str, Any] = {"config": {"steps": cfg.steps, "eval_every": cfg.eval_every,
                                      "batch": cfg.batch, "warmup": cfg.warmup,
                                      "timed_steps": cfg.timed_steps, **task.info},
                           "params": int(sum(p.size for p in jax.tree.leaves(task.params))),
                           "params_bytes": state_bytes(task.params), "optimizers": {}}
    for name in names:
        lrs = rate_grid(OPTIMIZERS[name].low, k)
        r = sweep(task, name, lrs)
        h = r["history"]
        final = {m: h[m][:, -1].astype(float).tolist() for m in h}
        i = best_index(h["val_loss"][:, -1])
        timing = time_steps(task, name, lrs[i], repeats)
        entry = {"lrs": lrs.tolist(), "final": final, "best_index": i,
                 "best_lr": float(lrs[i]), "edge_of_grid": i in (0, len(lrs) - 1),
                 "curve": {"step": steps.tolist(),
                           **{m: h[m][i].astype(float).tolist() for m in h}},
                 "sweep_compile_s": r["compile_s"], "sweep_run_s": r["run_s"],
                 "note": OPTIMIZERS[name].note, **timing,
                 **{f"best_{m}": final[m][i] for m in final}}
        out["optimizers"][name] = entry
        log(f"  {name:20s} best lr {lrs[i]:.2g}{' (edge)' if entry['edge_of_grid'] else ''}"
            f"  val {entry['best_val_loss']:.4f}  train {entry['best_train_loss']:.4f}  "
            f"{timing['step_ms']:.2f} ms/step  sweep {r['compile_s']:.1f}+{r['run_s']:.1f} s"
            f"  load {loadavg()}")
    if "adamw" in out["optimizers"]:
        target = out["optimizers"]["adamw"]["best_val_loss"]
        out["adamw_final_val_loss"] = target
        for entry in out["optimizers"].values():
            entry["steps_to_adamw"] = steps_to_reach(steps, np.asarray(entry["curve"]["val_loss"]),
                                                     target)
            entry["vs_adamw"] = entry["best_val_loss"] - target
    return out


def machine() -> dict:
    import platform

    dev = jax.devices()[0]
    return {"platform": dev.platform, "device": getattr(dev, "device_kind", str(dev)),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "jtricks": jt.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


# ---------------------------------------------------------------------------------------
# reporting


def fmt_bytes(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.2f} MiB"


def markdown(report: dict) -> str:
    """The bake-off's tables (one per task) and what beat AdamW, as markdown."""
    m = report["machine"]
    lines = [
        "## Optimizer bake-off: equal steps, every learning rate grid as one vmapped "
        "program", "",
        f"`{report['command']}`: {m['platform']} ({m['device']}), {m['cores']} cores, "
        f"jax {m['jax']}, jtricks {m['jtricks']}, Python {m['python']}, {m['date']}; load "
        f"average {report['load_before']} before, {report['load_after']} after; "
        f"{report['wall_s'] / 60:.1f} min in all.", "",
        f"Each optimizer: {report['rates']} log-spaced learning rates over a "
        f"{10 ** GRID_DECADES:.0f}x span from the low end of its usual range (the same "
        "width for all), trained as one `jax.vmap`ped program over the "
        "stacked transform; best rate: lowest final validation loss. Schedule: linear "
        "warmup over the first tenth of the steps, cosine decay to a tenth of the peak "
        "(schedule-free AdamW: the same warmup, then constant; evaluated at its average). "
        "Steps to AdamW: the first evaluated step whose validation loss is at or below "
        "AdamW's final one. ms / step: the tuned single-rate program (no evaluation), "
        f"median of {report['repeats']} runs after its compile. State: the optimizer "
        "state's bytes for one model. Other hyperparameters: the library defaults (see "
        "notes).", "",
    ]
    for task, t in report["tasks"].items():
        c = t["config"]
        cnn = "best_val_accuracy" in next(iter(t["optimizers"].values()))
        lines += [f"### {task}", "", task_line(task, t), ""]
        head = "| optimizer | best lr | train loss | val loss |"
        rule = "|---|---:|---:|---:|"
        if cnn:
            head += " train acc | val acc |"
            rule += "---:|---:|"
        head += " vs AdamW | steps to AdamW | ms / step | state |"
        rule += "---:|---:|---:|---:|"
        lines += [head, rule]
        for name, e in sorted(t["optimizers"].items(), key=lambda kv: kv[1]["best_val_loss"]):
            lr = f"{e['best_lr']:.2g}" + (" (edge)" if e["edge_of_grid"] else "")
            row = f"| {name} | {lr} | {e['best_train_loss']:.4f} | {e['best_val_loss']:.4f} |"
            if cnn:
                row += f" {e['best_train_accuracy']:.3f} | {e['best_val_accuracy']:.3f} |"
            vs = e.get("vs_adamw")
            reach = e.get("steps_to_adamw")
            row += (f" {'' if vs is None else f'{vs:+.4f}'} | "
                    f"{'never' if reach is None else reach} | {e['step_ms']:.2f} | "
                    f"{fmt_bytes(e['state_bytes'])} |")
            lines.append(row)
        lines += ["", verdict(t, c["steps"]), ""]
    lines += ["Notes per optimizer (besides the rate): " + "; ".join(
        f"{n}: {o.note}" for n, o in OPTIMIZERS.items() if o.note) + ".", ""]
    if report.get("plot"):
        lines += [f"![validation loss per step]({report['plot']})", ""]
    return "\n".join(lines)


def task_line(task: str, t: dict) -> str:
    c = t["config"]
    if task == "char transformer":
        what = (f"{c['layers']} layers, width {c['d']}, {c['heads']} heads, context "
                f"{c['ctx']}, {t['params']:,} params; bytes of {len(c['corpus_files'])} "
                f"standard-library files ({c['corpus_bytes']:,} bytes, 90% train / 10% "
                f"validation); validation loss on {c['eval_sequences']} fixed windows")
    else:
        what = (f"the MNIST-1D paper's CNN, {t['params']:,} params; {c['train_examples']} "
                f"train / {c['val_examples']} validation signals, losses on all of each")
    return (f"{what}. {c['steps']} steps of batch {c['batch']}, warmup {c['warmup']}, "
            f"evaluated every {c['eval_every']} steps; AdamW's final validation loss "
            f"{t.get('adamw_final_val_loss', float('nan')):.4f}.")


def verdict(t: dict, steps: int) -> str:
    """Which optimizers beat AdamW's final validation loss at equal steps, by how much."""
    if "adamw_final_val_loss" not in t:
        return "(AdamW was not run: no comparison.)"
    target = t["adamw_final_val_loss"]
    better = [(n, e) for n, e in t["optimizers"].items()
              if n != "adamw" and e["best_val_loss"] < target]
    if not better:
        return (f"At {steps} steps no optimizer beat AdamW's final validation loss "
                f"({target:.4f}).")
    parts = [f"{n} by {target - e['best_val_loss']:.4f} "
             f"({100 * (target - e['best_val_loss']) / target:.1f}%)"
             for n, e in sorted(better, key=lambda kv: kv[1]["best_val_loss"])]
    worse = sorted(n for n, e in t["optimizers"].items()
                   if n != "adamw" and e["best_val_loss"] >= target)
    return (f"At {steps} steps, beat AdamW's final validation loss ({target:.4f}): "
            + ", ".join(parts) + "; did not: " + (", ".join(worse) or "none") + ".")


def plot(report: dict, path: Path) -> None:
    """Validation loss per step at each optimizer's best rate, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = report["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 3.8), squeeze=False)
    for ax, (task, t) in zip(axes[0], tasks.items()):
        finals = [e["best_val_loss"] for e in t["optimizers"].values()]
        for name, e in t["optimizers"].items():
            style = {"color": "k", "lw": 2.0} if name == "adamw" else {"lw": 1.2}
            ax.plot(e["curve"]["step"], e["curve"]["val_loss"],
                    label=f"{name} ({e['best_lr']:.2g})", **style)
        # Zoom on the end of the race: from the start the curves overlap.
        lo, hi = min(finals), max(finals)
        ax.set_ylim(lo - 0.1 * (hi - lo + 0.05), hi + 1.5 * (hi - lo + 0.05))
        ax.set(title=task, xlabel="step", ylabel="validation loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="tiny models, few steps, 3 rates (< 3 minutes on 2 cores)")
    ap.add_argument("--rates", type=int, default=None, help="rates per optimizer (6; quick 3)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per optimizer")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                    help="comma-separated names (AdamW is the reference)")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    ap.add_argument("--out", type=Path, default=RESULTS,
                    help="folder for bakeoff[-quick].{md,json,png}")
    ap.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                    help="write one report from saved ones (e.g. one task each, run side "
                         "by side); runs nothing")
    args = ap.parse_args(argv)
    if args.merge:
        return write(merge([json.loads(p.read_text()) for p in args.merge]), args.out,
                     "bakeoff" + ("-quick" if args.quick else ""))
    size = "quick" if args.quick else "full"
    k = args.rates or (3 if args.quick else 6)
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        raise SystemExit(f"--optimizers: unknown {unknown}; choose from {list(OPTIMIZERS)}.")
    names = sorted(names, key=lambda n: n != "adamw")  # the reference first
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if any(t not in TASKS for t in tasks):
        raise SystemExit(f"--tasks: choose from {list(TASKS)}, got {tasks}.")
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"]
    command = shlex.join(["python", "benchmarks/bakeoff.py",
                          *(["--quick"] if args.quick else []), *given])
    report: dict[str, Any] = {"command": command, "machine": machine(), "quick": args.quick,
                              "rates": k, "repeats": args.repeats,
                              "load_before": loadavg(), "tasks": {}}
    t0 = time.perf_counter()
    for tname in tasks:
        task = TASKS[tname](CONFIGS[size][tname])
        print(f"{tname}: {task.config.steps} steps, {k} rates per optimizer", flush=True)
        report["tasks"][tname] = run_task(task, names, k, args.repeats,
                                          log=lambda s: print(s, flush=True))
    report["wall_s"] = time.perf_counter() - t0
    report["load_after"] = loadavg()
    return write(report, args.out, "bakeoff" + ("-quick" if args.quick else ""))


def write(report: dict, out: Path, stem: str) -> dict:
    """``stem``.json, .md and .png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    report["plot"] = f"{stem}.png"
    plot(report, out / report["plot"])
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return report


def merge(reports: list[dict]) -> dict:
    """One report from several runs of the same settings (e.g. one task each, side by
    side): their tasks together, every command, the first load before and the last after,
    the longest wall time."""
    first = reports[0]
    for r in reports[1:]:
        if (r["rates"], r["quick"]) != (first["rates"], first["quick"]):
            raise ValueError("merge: the reports were made with different --rates or "
                             "--quick; merge runs of the same settings.")
    return {**first, "command": " & ".join(r["command"] for r in reports),
            "tasks": {k: v for r in reports for k, v in r["tasks"].items()},
            "load_before": first["load_before"], "load_after": reports[-1]["load_after"],
            "wall_s": max(r["wall_s"] for r in reports), "merged": len(reports)}


if __name__ == "__main__":
    main()
