"""Optimizer-state bytes per device and step time: replicated, ZeRO-1 and FSDP.

    python benchmarks/sharding.py                 # 1, 2, 4 and 8 fake CPU devices
    python benchmarks/sharding.py --devices 8     # one count (runs in this process)

Each device count runs in its own process (JAX fixes the device count at start-up;
``XLA_FLAGS=--xla_force_host_platform_device_count=N``). The model is an MLP of
``--width`` wide layers trained with Adam on ``--batch`` examples. The memory
column is the claim: the largest number of optimizer-state bytes any one device
holds (from ``addressable_shards``). Times on fake CPU devices share the same cores,
so they are for the record only; on GPUs run it with ``--devices`` set to the GPU
count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def run_one(devices: int, width: int, depth: int, batch: int, steps: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jtricks as jt

    rng = np.random.default_rng(0)
    params = {f"w{i}": jnp.asarray(rng.standard_normal((width, width)) / np.sqrt(width),
                                   jnp.float32) for i in range(depth)}
    x = jnp.asarray(rng.standard_normal((batch, width)), jnp.float32)

    def loss_fn(p, ms, b, key):
        h = b
        for i in range(depth):
            h = jnp.tanh(h @ p[f"w{i}"])
        return jnp.mean(h ** 2), (ms, {})

    mesh = jax.make_mesh((devices,), ("data",), devices=jax.devices()[:devices])
    rows = []
    for mode, kwargs in [("replicated", {}), ("zero1", {"zero": True}),
                         ("fsdp", {"param_sharding": "fsdp"})]:
        step = jt.train.make_step(loss_fn, jt.adam(1e-3), mesh=mesh, **kwargs)
        state = step.init(params, jax.random.key(0))
        state, m = step(state, x)  # compile
        jax.block_until_ready(m["loss"])
        start = time.perf_counter()
        for _ in range(steps):
            state, m = step(state, x)
        jax.block_until_ready(m["loss"])
        per = {}
        for leaf in jax.tree.leaves(state.opt_state):
            for shard in leaf.addressable_shards:
                per[shard.device.id] = per.get(shard.device.id, 0) + shard.data.nbytes
        params_per = {}
        for leaf in jax.tree.leaves(state.params):
            for shard in leaf.addressable_shards:
                params_per[shard.device.id] = params_per.get(shard.device.id, 0) \
                    + shard.data.nbytes
        rows.append({"devices": devices, "mode": mode,
                     "state_bytes_per_device": max(per.values()),
                     "state_bytes_total": sum(x.nbytes for x in jax.tree.leaves(
                         state.opt_state)),
                     "param_bytes_per_device": max(params_per.values()),
                     "step_ms": 1e3 * (time.perf_counter() - start) / steps})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=None)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    sizes = (args.width, args.depth, args.batch, args.steps)
    if args.devices is not None:
        rows = run_one(args.devices, *sizes)
    else:
        rows = []
        for n in (1, 2, 4, 8):
            env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
                       JAX_PLATFORMS="cpu")
            cmd = [sys.executable, __file__, "--devices", str(n), "--width", str(args.width),
                   "--depth", str(args.depth), "--batch", str(args.batch), "--steps",
                   str(args.steps)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            rows += json.loads(out.stdout.strip().splitlines()[-1])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    if args.devices is not None and not args.out:
        print(json.dumps(rows))
        return
    print("| devices | mode | opt-state bytes / device | of total | params bytes / device "
          "| step ms (fake CPU devices) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['devices']} | {r['mode']} | {r['state_bytes_per_device']:,} | "
              f"{r['state_bytes_per_device'] / r['state_bytes_total']:.3f} | "
              f"{r['param_bytes_per_device']:,} | {r['step_ms']:.1f} |")


if __name__ == "__main__":
    main()
