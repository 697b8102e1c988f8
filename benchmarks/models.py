"""Whole train steps (forward, backward, update) of real models: jtricks against flax + optax.

    python benchmarks/models.py            # every model, more rounds
    python benchmarks/models.py --quick    # smaller models, fewer rounds (< 4 min)

Three models, each with Adam (lr 1e-3) on a fixed synthetic batch:

* ``resnet``: a flax linen ResNet for 32x32x3 inputs (CIFAR-style: a stem, three
  stages of residual blocks at 16/32/64 channels, batch norm everywhere);
* ``transformer``: a flax nnx decoder-only transformer (pre-norm blocks of causal
  attention and a GELU MLP) on next-token prediction;
* ``mlp2000``: the 2000-array model of ``flat_params.py`` (1000 dense layers of
  (rows, 32) kernels and (32,) biases, 1M floats).

Set-ups, side by side in one process:

* ``optax_loop``: the idiomatic flax + optax step: ``flax.training.train_state``'s
  ``TrainState`` (plus the model state), ``optax.adam``, ``apply_gradients``; jitted
  with the state donated, called once per batch from Python;
* ``jt_tree``: ``jt.train.make_step(loss_fn, jt.adam(lr))``'s program (``step.apply``
  jitted with the state donated, as ``step(state, batch)`` runs it);
* ``jt_flat``: the same with ``make_step(..., flat_params=True)``; it runs only
  when ``make_step`` accepts ``flat_params`` (reported as missing otherwise);
* ``jt_fit``: ``jt.train.fit`` for one epoch per call (an on-device shuffle and a
  ``lax.scan`` over the epoch's batches); ms is the call's time over its steps and
  compile s is the first call's time less a later call's;
* ``noop`` (the bound): forward and backward, the gradient consumed only by its
  norm, params and optimizer state returned untouched (donated). What no optimizer
  can go below: ``1 - noop / optax_loop`` is the share of the step that is the
  update itself.

Every step set-up is compiled twice in mirrored order and both copies timed in
alternating rounds (``run.py``'s helpers: later-compiled executables run slower on XLA
CPU); the no-op and ``jt_fit`` are built once, in the middle. ``--quick`` compiles
every set-up once (the 2000-array programs take tens of seconds each to compile on
CPU) on smaller models (``QUICK``: a ResNet of one block per stage, a 4-layer
transformer, the MLP with 200 arrays; the tables' arrays/params columns show the
sizes). The 2000-array targets need the full run. Peak memory comes from the
compiled executable's ``memory_analysis`` (arguments + outputs - aliased +
temporaries). Results go to
``benchmarks/results/models-<platform>[-quick].json`` and, as markdown, to
``benchmarks/RESULTS.md`` (a section per platform and mode);
``--json PATH`` writes
``{model: {setup: {"ms": median, "compile_s": s}}}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flat_params import BATCH as MLP_BATCH
from flat_params import forward_loss
from flax import nnx
from flax.training import train_state
from results_md import replace_section, targets_table
from run import Runner, build, loadavg, machine, make_tree, mirrored, timed_rounds, tiny_2000

import jtricks as jt

HERE = Path(__file__).resolve().parent
LR = 1e-3
STEPS_PER_EPOCH = 4  # jt_fit's epoch: this many batches


def xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# ---------------------------------------------------------------------------------------
# (a) a linen ResNet with batch norm


class ResBlock(nn.Module):
    channels: int
    stride: int

    @nn.compact
    def __call__(self, x, train: bool):
        def bn(h):
            return nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)

        y = nn.Conv(self.channels, (3, 3), self.stride, use_bias=False)(x)
        y = nn.relu(bn(y))
        y = bn(nn.Conv(self.channels, (3, 3), use_bias=False)(y))
        if x.shape[-1] != self.channels or self.stride != 1:
            x = bn(nn.Conv(self.channels, (1, 1), self.stride, use_bias=False)(x))
        return nn.relu(x + y)


QUICK = {"resnet": {"blocks": 1}, "transformer": {"layers": 4}, "mlp2000": {"layers": 100}}
"""``--quick``'s sizes: the full models take minutes each to compile on 2 CPU cores."""


class ResNet(nn.Module):
    blocks: int = 5
    widths: tuple[int, ...] = (16, 32, 64)

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(self.widths[0], (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        for i, width in enumerate(self.widths):
            for j in range(self.blocks):
                x = ResBlock(width, 2 if i > 0 and j == 0 else 1)(x, train)
        return nn.Dense(10)(x.mean(axis=(1, 2)))


@dataclasses.dataclass
class Model:
    """Initial params and model state, a loss in make_step's signature, data."""

    name: str
    params: Any
    model_state: Any
    loss_fn: Callable
    data: Callable[[int], Any]  # examples -> a batch-like pytree with that many
    batch: int
    about: str

    def arrays(self) -> int:
        return len(jax.tree.leaves(self.params))


def resnet_model(blocks: int = 5) -> Model:
    module, batch = ResNet(blocks=blocks), 16
    key = jax.random.key(0)
    variables = module.init(key, jnp.zeros((1, 32, 32, 3)))

    def loss_fn(params, model_state, data, key):
        x, y = data
        logits, new = module.apply({"params": params, "batch_stats": model_state}, x,
                                   mutable=["batch_stats"])
        return xent(logits, y), (new["batch_stats"], {})

    def data(n):
        k1, k2 = jax.random.split(jax.random.key(1))
        return (jax.random.normal(k1, (n, 32, 32, 3)), jax.random.randint(k2, (n,), 0, 10))

    return Model("resnet", variables["params"], variables["batch_stats"], loss_fn, data,
                 batch, f"linen ResNet 3x{module.blocks} blocks, 16/32/64 ch, batch norm, "
                 f"32x32x3, batch {batch}")


# ---------------------------------------------------------------------------------------
# (b) an nnx transformer


class Block(nnx.Module):
    def __init__(self, d: int, heads: int, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, d, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.fc1 = nnx.Linear(d, 4 * d, rngs=rngs)
        self.fc2 = nnx.Linear(4 * d, d, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))


class Transformer(nnx.Module):
    def __init__(self, vocab: int, seq: int, d: int, heads: int, layers: int,
                 rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (seq, d)))
        self.blocks = nnx.List([Block(d, heads, rngs) for _ in range(layers)])
        self.ln = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens) + self.pos[...][: tokens.shape[1]]
        mask = nnx.make_causal_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln(x))


def transformer_model(layers: int = 8) -> Model:
    vocab, seq, d, heads, batch = 128, 32, 64, 4, 8
    graphdef, params = nnx.split(Transformer(vocab, seq, d, heads, layers, nnx.Rngs(0)))

    def loss_fn(params, model_state, tokens, key):
        logits = nnx.merge(graphdef, params)(tokens[:, :-1])
        return xent(logits, tokens[:, 1:]), (model_state, {})

    def data(n):
        return jax.random.randint(jax.random.key(1), (n, seq + 1), 0, vocab)

    return Model("transformer", params, None, loss_fn, data, batch,
                 f"nnx decoder, {layers} layers, d {d}, {heads} heads, seq {seq}, "
                 f"vocab {vocab}, batch {batch}")


# ---------------------------------------------------------------------------------------
# (c) flat_params.py's 2000-array model


def mlp2000_model(layers: int = 1000) -> Model:
    shapes = tiny_2000(1 << 20)[:2 * layers]  # run.py's "1M" (1000 layers)
    params = make_tree(shapes, jax.random.key(0), 0.1)
    rows = shapes[0][0]

    def loss_fn(params, model_state, xs, key):
        return forward_loss(params, xs), (model_state, {})

    def data(n):
        key = jax.random.key(1)
        return [jax.random.normal(jax.random.fold_in(key, i), (n, rows))
                for i in range(layers)]

    floats = sum(int(np.prod(s)) for s in shapes)
    return Model("mlp2000", params, None, loss_fn, data, MLP_BATCH,
                 f"flat_params.py's {layers} dense layers ({rows}, 32) + (32,), "
                 f"{floats / 1e6:.2g}M floats, batch {MLP_BATCH}")


MODELS: dict[str, Callable[[], Model]] = {"resnet": resnet_model,
                                          "transformer": transformer_model,
                                          "mlp2000": mlp2000_model}


# ---------------------------------------------------------------------------------------
# set-ups

KEY = jax.random.key(0)
FLAT = "flat_params" in inspect.signature(jt.train.make_step).parameters
MISSING_FLAT = "not measured: jt.train.make_step has no flat_params option yet"


class StepRunner(Runner):
    """A runner whose program maps ``(state, batch)`` to ``(state, metrics)``."""

    def run(self, steps: int) -> None:
        state = self.args[0]
        for _ in range(steps):
            t0 = time.perf_counter()
            state, metrics = self.compiled(state, *self.extra)
            jax.block_until_ready((state, metrics))
            self.times.append(time.perf_counter() - t0)
        self.args = (state,)


class FitRunner(Runner):
    """``compiled`` is one epoch of ``fit``; ``times`` holds its time per step."""

    steps_per_call: int = STEPS_PER_EPOCH

    def run(self, steps: int) -> None:
        state = self.args[0]
        for _ in range(max(1, round(steps / self.steps_per_call))):
            t0 = time.perf_counter()
            state = jax.block_until_ready(self.compiled(state))
            self.times.append((time.perf_counter() - t0) / self.steps_per_call)
        self.args = (state,)


def _as(cls: type, runner: Runner) -> Runner:
    return cls(**{f.name: getattr(runner, f.name) for f in dataclasses.fields(runner)})


def _copy(tree: Any) -> Any:
    return jax.tree.map(jnp.copy, tree)


class LoopState(train_state.TrainState):
    """flax's TrainState with the model's non-trained variables (batch statistics)."""

    model_state: Any = None


def optax_loop(model: Model, batch: Any) -> Runner:
    def step(state, batch):
        (loss, (ms, _)), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
            state.params, state.model_state, batch, KEY)
        return state.apply_gradients(grads=grads, model_state=ms), {"loss": loss}

    state = LoopState.create(apply_fn=None, params=_copy(model.params),
                             tx=optax.adam(LR), model_state=_copy(model.model_state))
    return _as(StepRunner, build("optax_loop", step, (state,), (batch,), donate=(0,)))


def jt_step(model: Model, batch: Any, name: str = "jt_tree", **options: Any) -> Runner:
    step = jt.train.make_step(model.loss_fn, jt.adam(LR), **options)
    state = step.init(_copy(model.params), KEY, _copy(model.model_state))
    return _as(StepRunner, build(name, lambda s, b: step.apply(s, b), (state,), (batch,),
                                 donate=(0,)))


def noop(model: Model, batch: Any, flat: bool = False) -> Runner:
    """Forward + backward; the gradient feeds only its norm; params and Adam's state
    go through untouched (donated): every cost of the step but the update's. With
    ``flat`` the same on ``make_step(flat_params=True)``'s state: jt_flat's bound."""
    maker = jt.train.make_step(model.loss_fn, jt.adam(LR), flat_params=flat)
    loss_fn = maker.adapt(model.loss_fn)  # the flat state's loss: reads flat.tree()

    def step(state, batch):
        (loss, (ms, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.model_state, batch, KEY)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
        return dataclasses.replace(state, model_state=ms), metrics

    state = maker.init(_copy(model.params), KEY, _copy(model.model_state))
    name = "noop_flat" if flat else "noop"
    return _as(StepRunner, build(name, step, (state,), (batch,), donate=(0,)))


def jt_fit(model: Model) -> Runner:
    """``fit`` for one epoch of STEPS_PER_EPOCH batches per call."""
    step = jt.train.make_step(model.loss_fn, jt.adam(LR))
    state = step.init(_copy(model.params), KEY, _copy(model.model_state))
    data = jax.device_put(model.data(model.batch * STEPS_PER_EPOCH))

    def epoch(state):
        return jt.train.fit(step, state, data, batch_size=model.batch, epochs=1,
                            key=KEY, progress=False)[0]

    t0 = time.perf_counter()
    state = jax.block_until_ready(epoch(state))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    state = jax.block_until_ready(epoch(state))
    compile_s = max(0.0, first - (time.perf_counter() - t0))
    return FitRunner("jt_fit", epoch, (state,), (), 0.0, compile_s, {}, 0, [])


def makers(model: Model, batch: Any) -> dict[str, Callable[[], Runner]]:
    out = {"optax_loop": lambda: optax_loop(model, batch),
           "jt_tree": lambda: jt_step(model, batch)}
    if FLAT:  # filled in once make_step stores the params flat
        out["jt_flat"] = lambda: jt_step(model, batch, "jt_flat", flat_params=True)
    out["noop"] = lambda: noop(model, batch)
    if FLAT:
        out["noop_flat"] = lambda: noop(model, batch, flat=True)
    out["jt_fit"] = lambda: jt_fit(model)
    return out


# ---------------------------------------------------------------------------------------
# measuring


def peak_mib(r: Runner) -> float | None:
    m = r.memory
    if not m:
        return None
    return (m["argument"] + m["output"] - m["alias"] + m["temp"]) / 2**20


def run_model(model: Model, rounds: int, steps: int, warmup: int, mirror: bool) -> dict:
    batch = jax.device_put(model.data(model.batch))
    built = makers(model, batch)
    once = tuple(built) if not mirror else ("noop", "noop_flat", "jt_fit")
    runs = mirrored(built, once=once)
    for name, copies in runs.items():
        print(f"  {model.name}: built {name} x{len(copies)}, compile "
              f"{statistics.mean(c.lower_s + c.compile_s for c in copies):.1f} s", flush=True)
    order = [r for copies in runs.values() for r in copies]
    for r in order:
        r.run(warmup)
    # Short steps are noisy: at least ~50 ms of timed steps per round and runner.
    slowest = max(statistics.median(r.times) for r in order)
    steps = max(steps, min(50, math.ceil(0.05 / slowest)))
    timed_rounds(order, rounds, steps, warmup=0)
    out: dict[str, Any] = {"about": model.about, "arrays": model.arrays(),
                           "n_params": sum(int(np.size(x)) for x in jax.tree.leaves(
                               model.params)), "load": loadavg(), "setups": {}}
    for name, copies in runs.items():
        times = [t for c in copies for t in c.times]
        out["setups"][name] = {
            "ms": 1e3 * statistics.median(times),
            "compile_s": statistics.mean(c.lower_s + c.compile_s for c in copies),
            "ms_copies": [1e3 * statistics.median(c.times) for c in copies],
            "peak_MiB": peak_mib(copies[0]), "timed_steps": len(times)}
    if not FLAT:
        out["setups"]["jt_flat"] = {"ms": None, "compile_s": None, "missing": MISSING_FLAT}
    for copies in runs.values():  # free memory before the next model
        for r in copies:
            r.args = r.extra = r.compiled = None
    return out


# ---------------------------------------------------------------------------------------
# reporting

SETUPS = ("optax_loop", "jt_tree", "jt_flat", "jt_fit", "noop", "noop_flat")
GOALS = {"resnet": 0.95, "transformer": 0.85, "mlp2000": 0.2}  # jt_flat / optax_loop


def _ms(s: dict) -> str:
    return "-" if s.get("ms") is None else (f"{s['ms']:.3g}" if s["ms"] < 10
                                            else f"{s['ms']:.1f}")


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def markdown(report: dict) -> str:
    m = report["machine"]
    dev = m["cpu"] if m["platform"] == "cpu" else m["device"]
    quick = " --quick" if report["quick"] else ""
    lines = [
        f"### {m['platform']}: {dev}{' (--quick)' if report['quick'] else ''}", "",
        f"`python benchmarks/models.py{quick}`: {m['cores']} cores, jax {m['jax']}, "
        f"optax {m['optax']}, jtricks {m['jtricks']}, {m['date']}; load average "
        f"{report['load_before']} before, {report['load_after']} after; Adam 1e-3; "
        f"{report['rounds']} alternating rounds, median step; step set-ups "
        f"{'compiled twice in mirrored order' if report['mirror'] else 'compiled once'}.",
        "",
        "ms: median whole step (forward, backward, update; state donated); jt_fit: "
        f"`fit` epochs of {STEPS_PER_EPOCH} batches, per step; noop: the bound (the step "
        "without the update); noop_flat: jt_flat's bound (the same on the flat state); "
        "update share: 1 - noop / optax_loop; compile: lower + "
        "compile s (jt_fit: first call less a later one); peak: the compiled step's "
        "memory (arguments + outputs - aliased + temporaries), MiB.",
        "",
        "| model | arrays | params | optax_loop ms | jt_tree ms | jt_flat ms | jt_fit ms "
        "| noop ms | noop_flat ms | jt_tree / optax | jt_flat / optax | update share "
        "| compile s optax "
        "/ jt_tree / jt_flat / jt_fit | peak MiB optax / jt_tree | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for name, r in report["models"].items():
        s = r["setups"]
        o = s["optax_loop"]["ms"]
        flat = s["jt_flat"]["ms"]
        comp = " / ".join(_num(s[k]["compile_s"]) for k in ("optax_loop", "jt_tree",
                                                             "jt_flat", "jt_fit"))
        lines.append(
            f"| {name} | {r['arrays']} | {r['n_params'] / 1e6:.2f}M | "
            + " | ".join(_ms(s.get(k, {})) for k in SETUPS)
            + f" | {s['jt_tree']['ms'] / o:.2f} | {_num(flat and flat / o, '.2f')} | "
            f"{100 * (1 - s['noop']['ms'] / o):.0f}% | {comp} | "
            f"{_num(s['optax_loop']['peak_MiB'])} / {_num(s['jt_tree']['peak_MiB'])} | "
            f"{r['load']} |")
    lines += ["", "Models: " + "; ".join(f"{n}: {r['about']}"
                                          for n, r in report["models"].items()) + "."]
    if not FLAT:
        lines += ["", f"jt_flat: {MISSING_FLAT} (the column fills in when it has)."]
    return "\n".join(lines) + "\n" + targets(report)


def targets(report: dict) -> str:
    rows = []
    for name, r in report["models"].items():
        s, goal = r["setups"], GOALS.get(name)
        o, flat = s["optax_loop"]["ms"], s["jt_flat"]
        bound = f"bound (noop / optax) {s['noop']['ms'] / o:.2f}"
        if s.get("noop_flat", {}).get("ms"):
            bound += f", flat bound (noop_flat / optax) {s['noop_flat']['ms'] / o:.2f}"
        if flat["ms"] is None:
            rows.append(f"| {name}: jt_flat / optax_loop | not measured (jt_tree "
                        f"{s['jt_tree']['ms'] / o:.2f}; {bound}) | <= {goal} | - |")
            continue
        ratio = flat["ms"] / o
        comp = flat["compile_s"] / s["jt_tree"]["compile_s"]
        # --quick measures smaller models: no verdict on targets set for the full ones.
        small = report["quick"] and name in QUICK

        def verdict(ok: bool, small: bool = small, n: int = r["arrays"]) -> str:
            return (f"quick size ({n} arrays): see the full run" if small
                    else "met" if ok else "**not met**")

        rows.append(f"| {name}: jt_flat / optax_loop | {ratio:.2f} ({bound}) | <= {goal} | "
                    f"{verdict(ratio <= goal)} |")
        rows.append(f"| {name}: compile jt_flat / jt_tree | {comp:.2f} | <= 1.1 | "
                    f"{verdict(comp <= 1.1)} |")
    return targets_table(rows)


def compact(report: dict) -> dict:
    return {name: {k: {"ms": v["ms"], "compile_s": v["compile_s"]}
                   for k, v in r["setups"].items()} for name, r in report["models"].items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smaller models (QUICK), fewer rounds, under 4 minutes")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round (min)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated model names")
    ap.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                    help="compile each step set-up twice, mirrored (default: not with --quick)")
    ap.add_argument("--json", default=None, help="{model: {setup: {ms, compile_s}}} here")
    ap.add_argument("--out", default=None, help="full report (default: results/models-...)")
    ap.add_argument("--no-markdown", action="store_true",
                    help="leave RESULTS.md alone")
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 8)
    steps = args.steps or (2 if args.quick else 5)
    mirror = (not args.quick) if args.mirror is None else args.mirror
    names = args.only.split(",") if args.only else list(MODELS)
    if args.quick:
        print("--quick: smaller models (" + "; ".join(
            f"{n}: {', '.join(f'{k} {v}' for k, v in QUICK[n].items())}" for n in names)
            + "), each set-up compiled once: the 2000-array targets need the full run.",
            flush=True)
    report: dict[str, Any] = {"machine": machine(), "quick": args.quick, "rounds": rounds,
                              "mirror": mirror, "load_before": loadavg(), "models": {}}
    t_start = time.perf_counter()
    for name in names:
        r = run_model(MODELS[name](**(QUICK[name] if args.quick else {})), rounds, steps,
                      args.warmup, mirror)
        report["models"][name] = r
        print(f"{name:12s} " + "  ".join(f"{k} {_ms(r['setups'][k])}" for k in SETUPS)
              + f" ms  load {r['load']}", flush=True)
        report["load_after"] = loadavg()
        report["wall_s"] = time.perf_counter() - t_start
        out = write(report, args)  # after every model: a run cut short keeps the rest
    print(f"wrote {out} ({report['wall_s']:.0f} s)")
    return report


def write(report: dict, args: argparse.Namespace) -> Path:
    plat = report["machine"]["platform"]
    out = Path(args.out) if args.out else (
        HERE / "results" / f"models-{plat}{'-quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(compact(report), indent=1))
    if not args.no_markdown:
        section = f"models-{plat}{'-quick' if args.quick else ''}"
        replace_section(HERE / "RESULTS.md", section, markdown(report),
                        "Whole train steps of real models: jtricks vs flax + optax"
                        + (" (--quick)" if args.quick else ""))
    return out


if __name__ == "__main__":
    main()
