"""Optimizer step time of jtricks against optax, side by side in one process.

    python benchmarks/run.py            # every case (minutes; compiles of 2000-leaf trees)
    python benchmarks/run.py --quick    # a representative subset (no optax.flatten), < 2 min

For every case (a parameter tree x an optimizer) each library's full step

    updates, state = tx.update(grads, state, params)
    params = apply_updates(params, updates)

is jitted with params and state donated, compiled with ``lower(...).compile()``
(timed), warmed up, then timed step by step (``block_until_ready`` on every
output) in rounds that alternate the libraries, so both see the same machine
load; the reported time is the median over all timed steps. In the same rounds
an in-place triad ``a = a + s * c`` over the same number of floats (jitted,
``a`` donated) measures what the memory system gives right now: the *floor*.
An optimizer that must read and write ``B`` bytes per parameter (sgd 12,
momentum/adagrad/rmsprop 20, adam 28 for fp32) reaches the fraction

    floor% = (B * n / t_step) / (12 * n / t_triad)

of that floor. Peak memory comes from the compiled executable's
``memory_analysis`` (arguments + outputs - aliased + temporaries) and is set
against params + grads + state.

Two more columns bound what any optimizer can do on a tree: *no-op* is a donated
step that takes jtricks' params, state and grads and returns params and state
unchanged (what moving those arrays in and out of a compiled program costs), and
*flat_params* runs the jtricks optimizer on the same numbers stored as
``jt.flat_params`` (params and grads one vector per dtype, as a model reading
``flat.tree()`` gets them).

Build order matters on XLA CPU: of identical executables compiled one after
another, later ones run measurably slower (up to ~15% for 2000-array steps here).
Each library's step is therefore compiled twice, in mirrored order
(A B C ... C B A), and both copies are timed; every library's times then come from
the same average position.

Results go to ``benchmarks/results/<platform>[-quick].json`` and to the section of
``benchmarks/RESULTS.md`` between the ``optimizers`` markers (the rest of that file
is left alone).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
from results_md import replace_section, targets_table

import jtricks as jt

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------------------
# parameter trees


def one_leaf(n: int) -> list[tuple[int, ...]]:
    """A single square-ish matrix of ``n`` floats."""
    rows = 1 << (int(np.log2(n)) // 2)
    return [(rows, n // rows)]


def mixed_200(n: int) -> list[tuple[int, ...]]:
    """20 transformer blocks of 10 arrays (qkv, proj, two MLP kernels, their biases,
    a norm's scale and bias): a mix of matrices and vectors, about ``n`` floats."""
    d = 8 * max(1, round(np.sqrt(n / 240) / 8))
    block = [(d, 3 * d), (3 * d,), (d, d), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,),
             (d,), (d,)]
    return block * 20


def tiny_2000(n: int) -> list[tuple[int, ...]]:
    """1000 (rows, 32) kernels and 1000 (32,) biases: 2000 small arrays, about ``n``."""
    rows = max(1, round(n / 32000) - 1)
    return [(rows, 32), (32,)] * 1000


TREES: dict[str, Callable[[int], list[tuple[int, ...]]]] = {
    "1 leaf": one_leaf,
    "200 mixed": mixed_200,
    "2000 tiny": tiny_2000,
}
SIZES = {"1M": 1 << 20, "16M": 1 << 24}


def make_tree(shapes: list[tuple[int, ...]], key: jax.Array, scale: float) -> dict:
    keys = jax.random.split(key, len(shapes))
    return {f"p{i:04d}": scale * jax.random.normal(k, s, jnp.float32)
            for i, (k, s) in enumerate(zip(keys, shapes))}


# ---------------------------------------------------------------------------------------
# optimizers: name -> (bytes per fp32 param of one ideal pass, jtricks, optax)


def _jt_chain_clip_adam():
    sched = jt.schedules.exponential_decay(1e-3, decay_rate=0.98, transition_steps=100)
    return jt.chain(jt.clip_by_global_norm(1.0), jt.adam(sched))


def _ox_chain_clip_adam():
    sched = optax.exponential_decay(1e-3, transition_steps=100, decay_rate=0.98)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched))


OPTIMIZERS: dict[str, tuple[int, Callable[[], Any], Callable[[], Any]]] = {
    "sgd": (12, lambda: jt.sgd(1e-2), lambda: optax.sgd(1e-2)),
    "sgd+momentum": (20, lambda: jt.sgd(1e-2, momentum=0.9),
                     lambda: optax.sgd(1e-2, momentum=0.9)),
    "adagrad": (20, lambda: jt.adagrad(1e-2), lambda: optax.adagrad(1e-2)),
    "rmsprop": (20, lambda: jt.rmsprop(1e-3), lambda: optax.rmsprop(1e-3)),
    "adam": (28, lambda: jt.adam(1e-3), lambda: optax.adam(1e-3)),
    "adamw": (28, lambda: jt.adamw(1e-3), lambda: optax.adamw(1e-3)),
    "clip+adam+sched": (28, _jt_chain_clip_adam, _ox_chain_clip_adam),
    # One pass of the ideal update; adafactor's factored moments and lamb's trust ratio
    # need more passes in both libraries, muon's Newton-Schulz is matmul-bound.
    "lion": (20, lambda: jt.lion(1e-4), lambda: optax.lion(1e-4)),
    "adafactor": (12, lambda: jt.adafactor(1e-3), lambda: optax.adafactor(1e-3)),
    "lamb": (28, lambda: jt.lamb(1e-3), lambda: optax.lamb(1e-3)),
    "muon": (20, lambda: jt.muon(1e-3), lambda: optax.contrib.muon(1e-3)),
}

# Muon's five Newton-Schulz iterations on a 4096x4096 leaf are ~2 TFLOP a step: the
# 16M sizes would time the matmul, not the optimizer; it runs at 1M only.
SIZES_OF = {"muon": ("1M",)}

OPTAX_FLATTEN = ("sgd", "adam")

QUICK_CASES = [  # (tree, size, optimizer)
    ("1 leaf", "16M", "adam"),
    ("1 leaf", "16M", "clip+adam+sched"),
    ("200 mixed", "16M", "adam"),
    ("200 mixed", "16M", "sgd"),
    ("2000 tiny", "1M", "adam"),
]


# ---------------------------------------------------------------------------------------
# timing


@dataclass
class Runner:
    """A compiled, donated step and its own copy of params and state."""

    name: str
    compiled: Any
    args: tuple
    extra: tuple
    lower_s: float
    compile_s: float
    memory: dict
    kernels: int
    times: list

    def run(self, steps: int) -> None:
        args = self.args
        for _ in range(steps):
            t0 = time.perf_counter()
            args = self.compiled(*args, *self.extra)
            jax.block_until_ready(args)
            self.times.append(time.perf_counter() - t0)
        self.args = args


def count_kernels(hlo_text: str) -> int:
    """Top-level operations of the optimized program that run code (not plumbing)."""
    entry = hlo_text.split("\nENTRY ", 1)[-1].split("\n}\n", 1)[0]
    skip = ("parameter(", "tuple(", "get-tuple-element(", "bitcast(", "constant(")
    return sum(1 for line in entry.splitlines()[1:]
               if " = " in line and not any(s in line for s in skip))


def build(name: str, step: Callable, args: tuple, extra: tuple,
          donate: tuple[int, ...]) -> Runner:
    fn = jax.jit(step, donate_argnums=donate)
    t0 = time.perf_counter()
    lowered = fn.lower(*args, *extra)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    ma = compiled.memory_analysis()
    memory = {} if ma is None else {
        "argument": int(ma.argument_size_in_bytes),
        "output": int(ma.output_size_in_bytes),
        "alias": int(ma.alias_size_in_bytes),
        "temp": int(ma.temp_size_in_bytes),
    }
    return Runner(name, compiled, args, extra, t1 - t0, t2 - t1, memory,
                  count_kernels(compiled.as_text()), [])


def tree_bytes(tree: Any) -> int:
    return sum(int(np.prod(np.shape(x))) * jnp.result_type(x).itemsize
               for x in jax.tree.leaves(tree))


def optimizer_runner(lib: str, tx: Any, params: Any, grads: Any,
                     noop: bool = False) -> tuple[Runner, int]:
    """A donated ``update + apply`` step of ``tx`` (or, with ``noop``, one that
    returns its params and state untouched), with its own copy of params and state."""
    apply = jt.apply_updates if lib.startswith("jtricks") else optax.apply_updates

    def step(p, s, g):
        if noop:
            return p, s
        u, s = tx.update(g, s, p)
        return apply(p, u), s

    params = jax.tree.map(jnp.copy, params)
    state = tx.init(params)
    runner = build(lib, step, (params, state), (grads,), donate=(0, 1))
    return runner, tree_bytes(state)


def mirrored(makers: dict[str, Callable[[], Runner]],
             once: tuple[str, ...] = ()) -> dict[str, list[Runner]]:
    """Builds every runner twice in mirrored order (A B C C B A); names in ``once``
    are built a single time in the middle. On XLA CPU an executable compiled later
    runs slower than an identical one compiled earlier, so each library's two
    copies together sit at the same average position."""
    twice = [name for name in makers if name not in once]
    order = twice + [name for name in makers if name in once] + twice[::-1]
    built: dict[str, list[Runner]] = {name: [] for name in makers}
    for name in order:
        built[name].append(makers[name]())
    return built


def timed_rounds(order: list[Runner], rounds: int, steps: int, warmup: int = 3) -> None:
    """Warms every runner up, then times ``steps`` steps of each per round, rotating
    who goes first, so drifts in machine load hit all of them alike."""
    for r in order:
        r.run(warmup)
        r.times.clear()
    for i in range(rounds):
        k = i % len(order)
        for r in order[k:] + order[:k]:
            r.run(steps)


_TRIADS: dict[int, Any] = {}


def triad_runner(n: int, key: jax.Array) -> Runner:
    """``a <- a + s * c`` over ``n`` floats, ``a`` donated: 12 bytes per float."""
    a = jax.random.normal(key, (n,), jnp.float32)
    c = jax.random.normal(jax.random.fold_in(key, 1), (n,), jnp.float32)
    s = jnp.float32(1e-3)

    def triad(a, c, s):
        return (a + s * c,)

    if n not in _TRIADS:
        _TRIADS[n] = build("floor", triad, (a,), (c, s), donate=(0,))
    r = _TRIADS[n]
    r.args, r.extra, r.times = (a,), (c, s), []
    return r


def median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def run_case(tree: str, size: str, opt: str, *, rounds: int, steps: int, warmup: int,
             flat_variants: bool, optax_flatten: bool = True, seed: int = 0) -> dict | None:
    nbytes, make_jt, make_ox = OPTIMIZERS[opt]
    try:
        jt_tx, ox_tx = make_jt(), make_ox()
    except AttributeError as e:  # an optimizer the package does not have yet
        print(f"  skip {tree} {size} {opt}: {e}", file=sys.stderr)
        return None
    shapes = TREES[tree](SIZES[size])
    key = jax.random.key(seed)
    params = make_tree(shapes, key, 0.1)
    grads = make_tree(shapes, jax.random.fold_in(key, 1), 1e-3)
    n = sum(int(np.prod(s)) for s in shapes)
    txs = {"jtricks": jt_tx, "optax": ox_tx}
    once: tuple[str, ...] = ("jtricks no-op",)
    if flat_variants:
        txs["jtricks flatten"] = jt.flatten(make_jt())
        txs["jtricks flat_params"] = make_jt()
        if optax_flatten and opt in OPTAX_FLATTEN:  # ~15-40 s to compile at 2000 leaves
            txs["optax.flatten"] = optax.flatten(make_ox())
            once += ("optax.flatten",)  # informative only: one copy, in the middle
        # The same optimizer on ONE array of the same size, timed in the same window:
        # leaf-count independence compares against it (not against another case's run).
        txs["jtricks 1 leaf"] = make_jt()
    txs["jtricks no-op"] = jt_tx
    flat_p, flat_g = jt.flat_params(params), jt.flat_params(grads)  # all float32
    inputs = {"flat_params": (flat_p, flat_g),
              "1 leaf": ({"w": flat_p.vectors["float32"]}, {"w": flat_g.vectors["float32"]})}

    def maker(lib: str, tx: Any) -> Callable[[], Runner]:
        def make() -> Runner:
            p, g = next((v for k, v in inputs.items() if lib.endswith(k)), (params, grads))
            runner, state_bytes[lib] = optimizer_runner(lib, tx, p, g,
                                                        noop=lib.endswith("no-op"))
            return runner
        return make

    state_bytes: dict[str, int] = {}
    runners = mirrored({lib: maker(lib, tx) for lib, tx in txs.items()}, once=once)
    floor = triad_runner(n, jax.random.fold_in(key, 2))
    order = [floor, *(r for copies in runners.values() for r in copies)]
    for r in order:
        r.run(warmup)
    # Sub-millisecond steps are noisy: give each round of each library at least ~20 ms
    # of timed steps (at most 200), judged by the slowest library's warm-up.
    slowest = max(statistics.median(r.times) for r in order)
    steps = max(steps, min(200, math.ceil(0.02 / slowest)))
    timed_rounds(order, rounds, steps, warmup=0)
    floor_ms = median_ms(floor.times)
    floor_gbs = 12 * n / floor_ms / 1e6
    base = 2 * tree_bytes(params)  # params + grads
    out = {"tree": tree, "size": size, "optimizer": opt, "n_params": n,
           "n_leaves": len(shapes), "bytes_per_param": nbytes, "floor_ms": floor_ms,
           "floor_GBps": floor_gbs, "timed_steps": rounds * steps, "libs": {}}
    for lib, copies in runners.items():
        times = [t for r in copies for t in r.times]
        ms = median_ms(times)
        gbs = nbytes * n / ms / 1e6
        r = copies[0]
        mem = r.memory
        peak = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"] if mem else None
        need = base + state_bytes[lib]
        out["libs"][lib] = {
            "ms": ms, "ms_p10": 1e3 * float(np.percentile(times, 10)),
            "ms_p90": 1e3 * float(np.percentile(times, 90)),
            "ms_copies": [median_ms(c.times) for c in copies],
            "GBps": gbs, "floor_frac": gbs / floor_gbs,
            "lower_s": statistics.mean(c.lower_s for c in copies),
            "compile_s": statistics.mean(c.compile_s for c in copies),
            "kernels": r.kernels,
            "memory": mem, "peak_bytes": peak, "params_grads_state_bytes": need,
            "peak_over_needed": None if peak is None else peak / need,
        }
    jt_ms, ox_ms = out["libs"]["jtricks"]["ms"], out["libs"]["optax"]["ms"]
    out["ratio"] = jt_ms / ox_ms
    for copies in runners.values():  # free device memory before the next case
        for r in copies:
            r.args = r.extra = r.compiled = None
    del runners
    gc.collect()
    return out


# ---------------------------------------------------------------------------------------
# reporting


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            cpu = m.group(1) if m else cpu
    except OSError:
        pass
    dev = jax.devices()[0]
    return {
        "platform": dev.platform, "device": getattr(dev, "device_kind", str(dev)),
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax, "lib") else "",
        "optax": optax.__version__, "jtricks": jt.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def fmt_ms(x: float) -> str:
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"### {m['platform']}: {m['cpu'] if m['platform'] == 'cpu' else m['device']}"
        f"{' (--quick)' if report['quick'] else ''}",
        "",
        f"{m['cores']} cores, jax {m['jax']}, optax {m['optax']}, jtricks {m['jtricks']}, "
        f"{m['date']}; load average {report['load_before']} before, "
        f"{report['load_after']} after; at least {report['timed_steps']} timed steps per "
        "library and case (more for sub-millisecond steps: each round times >= 20 ms), "
        "median, libraries alternating.",
        "",
        "ms: median step (update + apply, params and state donated); ratio: jtricks / optax; "
        "floor%: achieved GB/s (ideal bytes per param: sgd 12, momentum/adagrad/rmsprop 20, "
        "adam 28) over the in-place triad's GB/s measured in the same window; compile: "
        "lower + compile in s; kernels: top-level operations in the compiled step; peak: "
        "step memory (args + outputs - aliased + temporaries) over params + grads + state; "
        "no-op: a donated step returning jtricks' params and state untouched (the cost of "
        "moving the arrays alone); flat_params: the jtricks optimizer on the same numbers "
        "stored as `jt.flat_params` (one vector per dtype); 1 leaf: the jtricks optimizer "
        "on one array of the same size, in the same window. Each library is compiled twice "
        "in mirrored order and both copies timed (later-compiled executables run slower "
        "on XLA CPU).",
        "",
        "| tree | size | optimizer | jtricks ms | optax ms | ratio | jt floor% | optax floor% "
        "| floor GB/s | jt compile s | optax compile s | jt kernels | optax kernels "
        "| jt peak | optax peak | no-op ms | jt flatten ms | jt flat_params ms "
        "| optax.flatten ms | jt 1 leaf ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["cases"]:
        j, o = c["libs"]["jtricks"], c["libs"]["optax"]
        def ms(lib, libs=c["libs"]):
            return fmt_ms(libs[lib]["ms"]) if lib in libs else "-"

        def peak(x):
            return "n/a" if x["peak_over_needed"] is None else f"{x['peak_over_needed']:.2f}x"

        lines.append(
            f"| {c['tree']} | {c['size']} | {c['optimizer']} | {fmt_ms(j['ms'])} | "
            f"{fmt_ms(o['ms'])} | {c['ratio']:.2f} | {100 * j['floor_frac']:.0f}% | "
            f"{100 * o['floor_frac']:.0f}% | {c['floor_GBps']:.1f} | "
            f"{j['lower_s'] + j['compile_s']:.2f} | {o['lower_s'] + o['compile_s']:.2f} | "
            f"{j['kernels']} | {o['kernels']} | {peak(j)} | {peak(o)} | "
            f"{ms('jtricks no-op')} | {ms('jtricks flatten')} | "
            f"{ms('jtricks flat_params')} | {ms('optax.flatten')} | {ms('jtricks 1 leaf')} |"
        )
    return "\n".join(lines) + "\n" + targets(report)


def _find(report: dict, tree: str, size: str, opt: str) -> dict | None:
    for c in report["cases"]:
        if (c["tree"], c["size"], c["optimizer"]) == (tree, size, opt):
            return c
    return None


def _extra_bytes(case: dict) -> float:
    """Bytes of a jtricks step's peak beyond params + grads + state."""
    v = case["libs"]["jtricks"]
    return v["peak_bytes"] - v["params_grads_state_bytes"]


def _spread(times: list[float]) -> float:
    """Slowest over fastest of one library's copies (1.0 for a single copy)."""
    return max(times) / min(times)


def targets(report: dict) -> str:
    """The issue's targets, checked against this run (rows whose cases ran)."""
    rows = []

    def add(what, value, goal, ok):
        rows.append(f"| {what} | {value} | {goal} | {'met' if ok else '**not met**'} |")

    c = _find(report, "1 leaf", "16M", "adam")
    if c:
        add("16M, 1 leaf, adam: jtricks / optax", f"{c['ratio']:.2f} "
            f"(floor {100 * c['libs']['jtricks']['floor_frac']:.0f}%)", "<= 0.90",
            c["ratio"] <= 0.90)
    c = _find(report, "1 leaf", "16M", "clip+adam+sched")
    if c:
        add("16M, 1 leaf, clip+adam+sched: jtricks / optax", f"{c['ratio']:.2f}", "<= 0.50",
            c["ratio"] <= 0.50)
    for opt in OPTIMIZERS:
        many = _find(report, "200 mixed", "16M", opt)
        if many and "jtricks 1 leaf" in many["libs"]:
            libs = many["libs"]
            base = libs["jtricks 1 leaf"]["ms"]
            r = libs["jtricks"]["ms"] / base
            flat = libs.get("jtricks flat_params")
            more = f"; flat_params {flat['ms'] / base:.2f}" if flat else ""
            add(f"16M, {opt}: jtricks 200 leaves / 1 leaf (same window)",
                f"{r:.2f} (no-op step on the 200 leaves: {libs['jtricks no-op']['ms'] / base:.2f}"
                f"{more})", "<= 1.10", r <= 1.10)
    c = _find(report, "2000 tiny", "1M", "adam")
    if c:
        for name in ("jtricks flatten", "jtricks flat_params"):
            if name in c["libs"]:
                r = c["libs"][name]["ms"] / c["libs"]["optax"]["ms"]
                add(f"1M, 2000 leaves, adam: {name} / optax", f"{r:.2f} (no-op "
                    f"{c['libs']['jtricks no-op']['ms'] / c['libs']['optax']['ms']:.2f})",
                    "<= 0.33", r <= 1 / 3)
    c = _find(report, "2000 tiny", "1M", "clip+adam+sched")
    if c:
        o = c["libs"]["optax"]
        for name, v in c["libs"].items():
            if name in ("jtricks", "jtricks flatten", "jtricks flat_params"):
                r = (v["lower_s"] + v["compile_s"]) / (o["lower_s"] + o["compile_s"])
                add(f"compile, clip+adam+sched, 2000 leaves, 1M: {name} / optax",
                    f"{r:.2f}", "<= 0.10", r <= 0.10)
    if report["cases"]:
        worst = max(report["cases"], key=lambda c: c["ratio"])
        slower = [c for c in report["cases"] if c["ratio"] > 1.05]
        add("every case: jtricks / optax", f"max {worst['ratio']:.2f} ({worst['tree']}, "
            f"{worst['size']}, {worst['optimizer']}); {len(slower)} of "
            f"{len(report['cases'])} above 1.05", "<= 1.05", not slower)
        # The noise is optax against itself: its two mirrored copies, timed in the same
        # rounds, run the same executable, so their spread is what timing alone moves.
        noise = {id(c): _spread(c["libs"]["optax"]["ms_copies"]) for c in report["cases"]}
        beyond = [c for c in report["cases"] if c["ratio"] > 1.05 * noise[id(c)]]
        spreads = sorted(noise.values())
        named = ", ".join(f"{c['tree']} {c['size']} {c['optimizer']} {c['ratio']:.2f} "
                          f"(noise {noise[id(c)]:.3f})" for c in beyond)
        add("every case: jtricks / optax beyond the noise (optax copy / optax copy, same "
            "rounds)", f"{len(beyond)} of {len(report['cases'])}{': ' + named if named else ''};"
            f" noise median {statistics.median(spreads):.3f}, max {spreads[-1]:.3f}",
            "<= 1.05 x noise", not beyond)
        peaks = [(c["libs"]["jtricks"]["peak_over_needed"], _extra_bytes(c))
                 for c in report["cases"] if c["libs"]["jtricks"]["peak_bytes"] is not None]
        if peaks:
            ratio, extra = max(peaks)
            add("peak memory of a jtricks step / (params + grads + state)",
                f"max {ratio:.3f} ({extra / 1024:.0f} KiB beyond: output pointer table, "
                "partial sums of norms)", "no params-sized temporary (<= 1.02)", ratio <= 1.02)
    return targets_table(rows)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a subset, under 2 minutes")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", default="", help="regex on 'tree/size/optimizer'")
    ap.add_argument("--no-flat", action="store_true", help="skip the flatten variants")
    ap.add_argument("--out", default=None, help="JSON path (default: results/<platform>)")
    ap.add_argument("--no-markdown", action="store_true", help="leave RESULTS.md alone")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="write RESULTS.md's section from a saved report; run nothing")
    args = ap.parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text())
        replace_section(HERE / "RESULTS.md", "optimizers", markdown(report),
                        "Optimizer step: jtricks vs optax")
        return report
    rounds = args.rounds or (4 if args.quick else 6)
    steps = args.steps or 5
    if args.quick:
        cases = QUICK_CASES
    else:
        cases = [(t, s, o) for s in SIZES for t in TREES for o in OPTIMIZERS
                 if s in SIZES_OF.get(o, SIZES)]
    if args.only:
        cases = [c for c in cases if re.search(args.only, "/".join(c))]
    report = {"machine": machine(), "quick": args.quick, "load_before": loadavg(),
              "timed_steps": rounds * steps, "cases": []}
    t_start = time.perf_counter()
    for tree, size, opt in cases:
        flat = not args.no_flat and tree != "1 leaf"
        res = run_case(tree, size, opt, rounds=rounds, steps=steps, warmup=args.warmup,
                       flat_variants=flat, optax_flatten=not args.quick)
        if res is None:
            continue
        report["cases"].append(res)
        j, o = res["libs"]["jtricks"], res["libs"]["optax"]
        extra = "".join(f"  {lib} {v['ms']:.2f}" for lib, v in res["libs"].items()
                        if lib not in ("jtricks", "optax"))
        print(f"{tree:>9} {size:>3} {opt:<15} jt {j['ms']:7.2f} ms  optax {o['ms']:7.2f} ms"
              f"  ratio {res['ratio']:.2f}  floor {res['floor_ms']:.2f} ms"
              f"  compile {j['lower_s'] + j['compile_s']:.1f}/"
              f"{o['lower_s'] + o['compile_s']:.1f} s{extra}  load {loadavg()}", flush=True)
    report["load_after"] = loadavg()
    report["wall_s"] = time.perf_counter() - t_start
    platform_name = report["machine"]["platform"]
    out = Path(args.out) if args.out else (
        HERE / "results" / f"{platform_name}{'-quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    if not args.no_markdown:
        replace_section(HERE / "RESULTS.md", "optimizers", markdown(report),
                        "Optimizer step: jtricks vs optax")
    print(f"wrote {out} ({report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
