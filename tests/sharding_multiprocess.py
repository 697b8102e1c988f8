"""One process of the two-process data-parallel run of test_sharding.py.

``python sharding_multiprocess.py PORT PROCESS_ID OUT.json``, started twice by the test
with 4 fake CPU devices each (``XLA_FLAGS`` set by the caller). Both processes join
through ``jax.distributed.initialize`` on 127.0.0.1 with gloo CPU collectives, build
one 8-device mesh, feed their own half of every global batch, and run 20 Adam steps.
Process 0 then runs the same 20 steps alone on one of its devices and writes both
results (and the largest relative difference) to ``OUT.json``.
"""

from __future__ import annotations

import json
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(port: str, process_id: str, out: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=int(process_id))
    import numpy as np
    from sharding_scenarios import BATCH, STEPS, mlp_data, mlp_loss, mlp_params

    import jtricks as jt

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    per_device = BATCH // jax.device_count()
    mine = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
    rows = slice(min(mine) * per_device, (max(mine) + 1) * per_device)  # my slice, in mesh order

    params, (x, y) = mlp_params(), mlp_data()
    step = jt.train.make_step(mlp_loss, jt.adam(1e-2), mesh=mesh, zero=True)
    state = step.init(params, jax.random.key(0))
    for i in range(STEPS):
        xb, yb = x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
        state, metrics = step(state, (xb[rows], yb[rows]))
    # Params are replicated: every process holds the whole value.
    got = {k: np.asarray(v.addressable_data(0)) for k, v in state.params.items()}
    loss = float(np.asarray(metrics["loss"].addressable_data(0)))
    result = {"process": jax.process_index(), "devices": jax.device_count(),
              "local_devices": jax.local_device_count(), "rows": [rows.start, rows.stop],
              "loss": loss}
    if jax.process_index() == 0:
        with jax.default_device(jax.local_devices()[0]):
            ref_step = jt.train.make_step(mlp_loss, jt.adam(1e-2))
            ref = ref_step.init(params, jax.random.key(0))
            for i in range(STEPS):
                ref, ref_metrics = ref_step(ref, (x[i * BATCH:(i + 1) * BATCH],
                                                  y[i * BATCH:(i + 1) * BATCH]))
        want = {k: np.asarray(v) for k, v in ref.params.items()}
        result["max_rel_err"] = max(
            float(np.max(np.abs(got[k] - want[k]) / (1e-6 + 1e-5 * np.abs(want[k]))))
            for k in want)
        result["ref_loss"] = float(ref_metrics["loss"])
    with open(out, "w") as f:
        json.dump(result, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
