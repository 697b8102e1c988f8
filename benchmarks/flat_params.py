"""Does storing the parameters flat pay, for a model of 2000 small arrays?

A whole train step (forward, backward, Adam, apply; params and state donated) on a
model of 1000 independent dense layers, (rows, 32) kernels and (32,) biases (the
"2000 tiny" tree of ``run.py``), in four set-ups, side by side in one process:

* ``tree + optax.adam`` / ``tree + jt.adam``: the params are a dict of 2000 arrays;
* ``tree + jt.flatten(jt.adam)``: the same, Adam's state kept flat;
* ``flat + jt.adam`` / ``flat + optax.adam``: the params are ONE vector
  (``jt.flat_params``) and the model reads its layers as pieces of it
  (``flat.tree()``), so the gradient arrives as one vector and Adam runs on a
  single array;
* ``ravel_pytree + jt.adam``: the same with ``jax.flatten_util.ravel_pytree``, whose
  static slices compile one kernel per piece.

Each set-up is compiled twice in mirrored order (A B ... B A) and both copies are
timed, since on XLA CPU a later-compiled executable runs slower than an identical
earlier one. Prints the median step time and the mean compile time of each;
``--json`` writes them.
Usage: ``python benchmarks/flat_params.py [--size 1M] [--rounds 8] [--steps 10]``
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from run import SIZES, build, loadavg, make_tree, mirrored, timed_rounds, tiny_2000

import jtricks as jt

BATCH = 8


def forward_loss(params: dict, xs: list[jax.Array]) -> jax.Array:
    """Each layer i maps its own input batch: sum_i mean(tanh(x_i @ W_i + b_i) ** 2)."""
    names = sorted(params)
    total = jnp.zeros((), jnp.float32)
    for i, x in enumerate(xs):
        w, b = params[names[2 * i]], params[names[2 * i + 1]]
        total = total + jnp.mean(jnp.tanh(x @ w + b) ** 2)
    return total


def tree_step(tx, apply):
    def step(params, state, xs):
        grads = jax.grad(forward_loss)(params, xs)
        updates, state = tx.update(grads, state, params)
        return apply(params, updates), state
    return step


def flat_step(tx, unravel, apply=jt.apply_updates):
    def step(flat, state, xs):
        grads = jax.grad(lambda f: forward_loss(unravel(f), xs))(flat)
        updates, state = tx.update(grads, state, flat)
        return apply(flat, updates), state
    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1M", choices=sorted(SIZES))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    shapes = tiny_2000(SIZES[args.size])
    key = jax.random.key(0)
    params = make_tree(shapes, key, 0.1)
    rows = shapes[0][0]
    xs = [jax.random.normal(jax.random.fold_in(key, i), (BATCH, rows)) for i in range(1000)]
    raveled, unravel = ravel_pytree(params)
    flat = jt.flat_params(params)

    # name -> (a fresh step function, params, optimizer). Each build needs its own
    # function object: jit would hand a second build of the same function its cache.
    setups = {
        "tree + optax.adam": (lambda: tree_step(optax.adam(1e-3), optax.apply_updates),
                              params, optax.adam(1e-3)),
        "tree + jt.adam": (lambda: tree_step(jt.adam(1e-3), jt.apply_updates), params,
                           jt.adam(1e-3)),
        "tree + jt.flatten(adam)": (lambda: tree_step(jt.flatten(jt.adam(1e-3)),
                                                      jt.apply_updates),
                                    params, jt.flatten(jt.adam(1e-3))),
        "flat + jt.adam": (lambda: flat_step(jt.adam(1e-3), jt.FlatParams.tree), flat,
                           jt.adam(1e-3)),
        "flat + optax.adam": (lambda: flat_step(optax.adam(1e-3), jt.FlatParams.tree,
                                                optax.apply_updates), flat, optax.adam(1e-3)),
        "ravel_pytree + jt.adam": (lambda: flat_step(jt.adam(1e-3), unravel), raveled,
                                   jt.adam(1e-3)),
    }

    def maker(name: str, make_step, p, tx):
        def make():
            p_copy = jax.tree.map(jnp.copy, p)
            runner = build(name, make_step(), (p_copy, tx.init(p_copy)), (xs,),
                           donate=(0, 1))
            print(f"compiled {name} in {runner.lower_s + runner.compile_s:.1f} s", flush=True)
            return runner
        return make

    # Each set-up compiled twice in mirrored order: later executables run slower.
    runs = mirrored({name: maker(name, *setup) for name, setup in setups.items()})
    order = [r for copies in runs.values() for r in copies]
    timed_rounds(order, args.rounds, args.steps, warmup=3)

    def times(name):
        return [t for r in runs[name] for t in r.times]

    def compile_s(name):
        return statistics.mean(r.lower_s + r.compile_s for r in runs[name])

    base = statistics.median(times("tree + optax.adam"))
    print(f"\n2000 arrays ({args.size}), batch {BATCH}; load {loadavg()}")
    print(f"{'set-up':28s} {'ms/step':>8s} {'vs optax':>9s} {'compile s':>10s}")
    out = {}
    for name in runs:
        ms = 1e3 * statistics.median(times(name))
        out[name] = {"ms": ms, "compile_s": compile_s(name), "vs_optax": ms / (1e3 * base),
                     "ms_copies": [1e3 * statistics.median(r.times) for r in runs[name]]}
        print(f"{name:28s} {ms:8.2f} {ms / (1e3 * base):9.2f} {compile_s(name):10.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
