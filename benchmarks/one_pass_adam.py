"""Can a 1-leaf Adam step be made one pass over memory on XLA's CPU backend?

The default step (``jt.adam`` or ``optax.adam``, then apply) compiles to three loop
kernels: new ``mu``, new ``nu``, then the params reading both back, about 40 bytes
per fp32 parameter instead of the 28 of one pass. This script times, on one array of
``--size`` floats, donated, alternating, median:

* ``three kernels``: the plain elementwise step (what both libraries compile to);
* ``scan chunks C``: the same step as a ``lax.scan`` over chunks of ``C`` floats, so
  each chunk's moments could stay in cache between the three computations.

Usage: ``python benchmarks/one_pass_adam.py [--size 16M] [--rounds 6]``
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
from jax import lax
from run import SIZES, build, loadavg, mirrored, timed_rounds

B1, B2, EPS, LR = 0.9, 0.999, 1e-8, 1e-3


def adam_update(p, mu, nu, g, t):
    mu = B1 * mu + (1 - B1) * g
    nu = B2 * nu + (1 - B2) * g * g
    step = LR * (mu / (1 - B1 ** t)) / (jnp.sqrt(nu / (1 - B2 ** t)) + EPS)
    return p - step, mu, nu


def three_kernels(args, g, t):
    return (*adam_update(*args, g, t),)


def scan_chunks(chunk: int):
    def step(args, g, t):
        n = g.shape[0]

        def body(_, xs):
            return None, adam_update(*xs, t)

        blocks = [x.reshape(n // chunk, chunk) for x in (*args, g)]
        _, out = lax.scan(body, None, tuple(blocks))
        return tuple(x.reshape(n) for x in out)
    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="16M", choices=sorted(SIZES))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    n = SIZES[args.size]
    key = jax.random.key(0)
    g = 1e-3 * jax.random.normal(key, (n,), jnp.float32)
    t = jnp.float32(1.0)

    def maker(name, step):
        def make():
            state = (0.1 * jax.random.normal(jax.random.fold_in(key, 1), (n,), jnp.float32),
                     jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32))
            return build(name, lambda a, g, t: (step(a, g, t),), (state,), (g, t), donate=(0,))
        return make

    steps = {"three kernels": three_kernels}
    steps.update({f"scan chunks {c}": scan_chunks(c) for c in (1 << 16, 1 << 20)})
    runs = mirrored({name: maker(name, f) for name, f in steps.items()})
    order = [r for copies in runs.values() for r in copies]
    timed_rounds(order, args.rounds, args.steps, warmup=2)
    print(f"Adam on one array of {n} floats; load {loadavg()}")
    for name, copies in runs.items():
        ms = 1e3 * statistics.median(t for r in copies for t in r.times)
        print(f"{name:22s} {ms:8.2f} ms  ({28 * n / ms / 1e6:.1f} GB/s at 28 B/param)")


if __name__ == "__main__":
    main()
