"""Every multi-device sharding scenario of test_sharding.py, in one process.

Run as ``python sharding_scenarios.py OUT.json`` with 8 fake CPU devices (the caller
sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts). Each
scenario returns plain data (bools, numbers, strings); the whole dict is written as
JSON for the test to assert on, so one JAX start-up serves every check.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jtricks as jt
from jtricks import sharding as jsharding

# Every family's table (tests/cases_<family>.py), whatever families there are.
FAMILIES = tuple(sorted(p.stem.removeprefix("cases_")
                        for p in Path(__file__).parent.glob("cases_*.py")))


def all_rows():
    """Every row of the optimizer table: conftest's CASES and each family's ROWS."""
    from conftest import CASES

    rows = list(CASES)
    for family in FAMILIES:
        rows += importlib.import_module(f"cases_{family}").ROWS
    names = [r[0] for r in rows]
    return [r for i, r in enumerate(rows) if r[0] not in names[:i]]


def _spec(sharding, ndim):
    """A sharding's spec padded to ``ndim`` entries (None for a non-named sharding)."""
    if not isinstance(sharding, NamedSharding):
        return None
    spec = list(sharding.spec) + [None] * (ndim - len(sharding.spec))
    return tuple(spec)


def _param_index(params):
    return {tuple(path): p for path, p in jax.tree_util.tree_flatten_with_path(params)[0]}


def _owner(index, path, shape):
    for start in range(len(path) + 1):
        p = index.get(tuple(path[start:]))
        if p is not None and tuple(p.shape) == tuple(shape):
            return p
    return None


def placement_problems(state, params, mesh, shardings=None):
    """Where ``state`` (or the ``shardings`` tree of it) breaks the rule: params-shaped
    leaves on their param's sharding, every other leaf on ``mesh``."""
    index = _param_index(params)
    problems = []
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    got = jax.tree.leaves(shardings) if shardings is not None else [
        x.sharding for _, x in leaves]
    for (path, x), s in zip(leaves, got):
        owner = _owner(index, path, np.shape(x))
        where = jax.tree_util.keystr(path)
        if owner is not None:
            if _spec(s, owner.ndim) != _spec(owner.sharding, owner.ndim):
                problems.append(f"{where}: {_spec(s, owner.ndim)} != param's "
                                f"{_spec(owner.sharding, owner.ndim)}")
        elif not (isinstance(s, NamedSharding) and s.mesh == mesh):
            problems.append(f"{where} {np.shape(x)}: {type(s).__name__}, not on the mesh")
    return problems


def table_params(mesh):
    """The table's parameter tree, three leaves sharded over both mesh axes."""
    from conftest import make_params

    params = make_params(0)
    specs = {"dense": {"w": P("data", None), "b": P()},
             "blocks": [{"kernel": P("model", None, "data")}, P()],
             "scale": P(), "conv": P(None, None, "model", "data"), "row": P(None, "model")}
    return jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                                               is_leaf=lambda s: isinstance(s, P)))


def scenario_eager_init(mesh):
    """tx.init(params) for every row: placement problems per row (empty = good)."""
    params = table_params(mesh)
    out = {}
    for name, ours, _ in all_rows():
        try:
            out[name] = placement_problems(ours().init(params), params, mesh)
        except Exception as e:  # reported, and the test fails on it
            out[name] = [f"raised {type(e).__name__}: {e}"]
    return out


def scenario_state_shardings(mesh):
    """state_shardings for every row, without and with ZeRO: problems per row."""
    params = table_params(mesh)
    out = {}
    for name, ours, _ in all_rows():
        try:
            tx = ours()
            shapes = jax.eval_shape(tx.init, params)
            plain = jsharding.state_shardings(tx, params)
            problems = placement_problems(shapes, params, mesh, plain)
            zero = jsharding.state_shardings(tx, params, zero_axis="data")
            if jax.tree.structure(zero) != jax.tree.structure(plain):
                problems.append("zero shardings have another structure")
            out[name] = problems
        except Exception as e:
            out[name] = [f"raised {type(e).__name__}: {e}"]
    return out


# --- make_step on a mesh --------------------------------------------------------------

STEPS = 20
BATCH = 32


def mlp_params(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"w1": (16, 32), "b1": (32,), "w2": (32, 8), "b2": (8,)}
    return {k: jnp.asarray(rng.standard_normal(s) * 0.3, jnp.float32)
            for k, s in shapes.items()}


def mlp_data(seed=1, n=STEPS * BATCH):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    y = np.sin(x[:, :8] * 2).astype(np.float32)
    return x, y


def mlp_loss(params, model_state, batch, key):
    x, y = batch
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    out = h @ params["w2"] + params["b2"]
    return jnp.mean((out - y) ** 2), (model_state, {})


OPTIMIZERS = {
    "sgd_momentum": lambda: jt.sgd(0.05, momentum=0.9),
    "adam": lambda: jt.adam(1e-2),
    "clip_adam": lambda: jt.chain(jt.clip_by_global_norm(1.0), jt.adam(1e-2)),
    "sgd": lambda: jt.sgd(0.05),
    "adamw": lambda: jt.adamw(1e-2, weight_decay=0.1),
    "lion": lambda: jt.lion(1e-3),
    "adafactor": lambda: jt.adafactor(1e-2, min_dim_size_to_factor=8),
    "muon": lambda: jt.muon(1e-2),
}


def run_steps(step, params, data, steps=STEPS, compiles=None):
    """``steps`` steps from ``step.init``; with ``compiles`` (from count_compiles) also
    the number of XLA compilations the steps (not the init) needed."""
    state = step.init(params, jax.random.key(0))
    start = len(compiles) if compiles is not None else 0
    x, y = data
    metrics = []
    for i in range(steps):
        state, m = step(state, (x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]))
        metrics.append(m)
    if compiles is not None:
        return state, metrics, len(compiles) - start
    return state, metrics


def _specs_of(tree):
    return [(_spec(x.sharding, np.ndim(x)), str(x.sharding.mesh.axis_names)
             if isinstance(x.sharding, NamedSharding) else None) for x in jax.tree.leaves(tree)]


def per_device_bytes(tree):
    """The most bytes of ``tree``'s arrays any one device holds, and the total size."""
    per = {}
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            per[shard.device.id] = per.get(shard.device.id, 0) + shard.data.nbytes
    return max(per.values(), default=0), sum(x.nbytes for x in jax.tree.leaves(tree))


def _close(a, b, rtol=1e-5, atol=1e-6):
    try:
        chex.assert_trees_all_close(jax.device_get(a), jax.device_get(b), rtol=rtol, atol=atol)
        return True, 0.0
    except AssertionError:
        err = max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))
                               / (atol + rtol * np.abs(np.asarray(v)))))
                  for u, v in zip(jax.tree.leaves(jax.device_get(a)),
                                  jax.tree.leaves(jax.device_get(b))))
        return False, err


MODES = {"replicated": {}, "zero": {"zero": True}, "fsdp": {"param_sharding": "fsdp"}}


def scenario_parity(mesh, cases, compiles):
    """``cases``: (optimizer, mode) pairs; per pair, 20 steps on ``mesh`` against one
    device: close?, shardings kept?, compilations, state bytes per device."""
    params, data = mlp_params(), mlp_data()
    reference = {}
    out = {}
    for opt, mode in cases:
        if opt not in reference:
            ref_state, _ = run_steps(jt.train.make_step(mlp_loss, OPTIMIZERS[opt]()),
                                     params, data)
            reference[opt] = ref_state
        step = jt.train.make_step(mlp_loss, OPTIMIZERS[opt](), mesh=mesh, **MODES[mode])
        before = _specs_of(step.init(params, jax.random.key(0)))
        state, metrics, n = run_steps(step, params, data, compiles=compiles)
        ref = reference[opt]
        params_ok, params_err = _close(state.params, ref.params)
        opt_ok, opt_err = _close(state.opt_state, ref.opt_state)
        most, total = per_device_bytes(state.opt_state)
        scalars = sum(x.nbytes for x in jax.tree.leaves(state.opt_state) if np.ndim(x) == 0)
        out[f"{opt}/{mode}"] = {
            "params_close": params_ok, "params_err": params_err,
            "opt_state_close": opt_ok, "opt_state_err": opt_err,
            "shardings_kept": _specs_of(state) == before,
            "compilations": n,
            "state_bytes_most": most, "state_bytes_total": total, "scalar_bytes": scalars,
            "param_specs": [_spec(x.sharding, x.ndim) for x in jax.tree.leaves(state.params)],
            "loss_close": _close(metrics[-1]["loss"], float(metrics[-1]["loss"]))[0],
        }
    return out


def count_compiles():
    """A list that grows by one name per XLA compilation from now on."""
    events = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *_, **__: events.append(name) if "backend_compile" in name else None)
    return events


def scenario_bad_input(mesh):
    """The three refusals: their messages (or 'no error')."""
    params = mlp_params()
    step = jt.train.make_step(mlp_loss, jt.adam(1e-2), mesh=mesh)
    state = step.init(params, jax.random.key(0))
    x, y = mlp_data()
    out = {}
    for name, call in [
        ("batch_of_12", lambda: step(state, (x[:12], y[:12]))),
        ("missing_axis", lambda: jt.train.make_step(mlp_loss, jt.adam(1e-2), mesh=mesh,
                                                    data_axis="batch")),
        ("missing_axis_shard_batch", lambda: jsharding.shard_batch(x, mesh, "batch")),
        ("spec_tree", lambda: jt.train.make_step(
            mlp_loss, jt.adam(1e-2), mesh=mesh,
            param_sharding={"w1": P("data"), "b1": P(), "w2": P()}).init(
                params, jax.random.key(0))),
    ]:
        try:
            call()
            out[name] = "no error"
        except ValueError as e:
            out[name] = f"ValueError: {e}"
    return out


def scenario_tensor_parallel(mesh):
    """A PartitionSpec tree on a (data, model) mesh: params and state placed as asked,
    numbers equal one device."""
    params, data = mlp_params(), mlp_data()
    specs = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None), "b2": P()}
    ref, _ = run_steps(jt.train.make_step(mlp_loss, jt.adam(1e-2)), params, data)
    step = jt.train.make_step(mlp_loss, jt.adam(1e-2), mesh=mesh, param_sharding=specs)
    state, _ = run_steps(step, params, data)
    return {"close": _close(state.params, ref.params)[0],
            "param_specs": {k: _spec(v.sharding, v.ndim) for k, v in state.params.items()},
            "mu_specs": {k: _spec(v.sharding, v.ndim)
                         for k, v in state.opt_state[0].mu.items()}}


def bn_loss(params, model_state, batch, key):
    """A linear layer and batch norm: running statistics from the whole batch."""
    x, y = batch
    h = x @ params["w1"]
    h, model_state = jt.layers.batch_norm(params["bn"], model_state, h, training=True)
    out = jnp.tanh(h) @ params["w2"] + params["b2"]
    return jnp.mean((out - y) ** 2), (model_state, {"h_mean": jnp.mean(h)})


def scenario_fit_batch_norm(mesh):
    """fit on a mesh (ZeRO, clipping, batch norm, EMA) against fit on one device."""
    params = mlp_params()
    bn_params, bn_state = jt.layers.batch_norm_init(32)
    params = {**params, "bn": bn_params}
    x, y = mlp_data(n=8 * BATCH)
    tx = jt.chain(jt.clip_by_global_norm(0.5), jt.adam(1e-2))
    results = []
    for kwargs in ({}, {"mesh": mesh, "zero": True},
                   {"mesh": mesh, "param_sharding": "fsdp", "flat_params": True}):
        step = jt.train.make_step(bn_loss, tx, averaging=jt.averaging.ema(0.9), **kwargs)
        state = step.init(params, jax.random.key(0), bn_state)
        before = _specs_of(state)
        state, hist = jt.train.fit(step, state, (x, y), batch_size=BATCH, epochs=2,
                                   key=jax.random.key(1))
        results.append((state, hist, before == _specs_of(state)))
    (a, ha, _), (b, hb, kept), (c, hc, flat_kept) = results
    return {"params_close": _close(b.params, a.params)[0],
            "model_state_close": _close(b.model_state, a.model_state)[0],
            "averages_close": _close(b.averages, a.averages)[0],
            "grad_norm_close": _close(hb["train"]["grad_norm"], ha["train"]["grad_norm"])[0],
            "shardings_kept": kept,
            "averages_follow_params": _specs_of(b.averages.mean) == _specs_of(b.params),
            # flat_params=True with FSDP: the vectors split over the mesh, the same numbers
            "flat_close": _close(_numbers(c), _numbers(a), rtol=1e-6)[0],
            "flat_grad_norm_close": _close(hc["train"]["grad_norm"], ha["train"]["grad_norm"],
                                           rtol=1e-6)[0],
            "flat_shardings_kept": flat_kept,
            "flat_param_spec": _spec(c.params.vectors["float32"].sharding, 1)}


def flat_loss(params, model_state, batch, key):
    """bn_loss and 3 more parameters: 875 elements, padded to 880 on 8 devices."""
    loss, (model_state, metrics) = bn_loss(params, model_state, batch, key)
    return loss + jnp.sum((params["t"] - 0.5) ** 2), (model_state, metrics)


def _host_tree(flat):
    """A FlatParams as its params' tree of NumPy arrays, cut on the host (an oracle
    for ``tree()``, and no eager device work per piece)."""
    out = [None] * len(flat.shapes)
    for name, idx in flat.groups:
        vector, offset = np.asarray(jax.device_get(flat.vectors[name])), 0
        for i in idx:
            size = int(np.prod(flat.shapes[i], dtype=np.int64))
            out[i] = vector[offset:offset + size].reshape(flat.shapes[i])
            offset += size
    return jax.tree.unflatten(flat.treedef, out)


def _as_tree(tree):
    """Every FlatParams in ``tree`` as its params' tree (padding left out)."""
    return jax.tree.map(lambda x: _host_tree(x) if isinstance(x, jt.FlatParams) else x, tree,
                        is_leaf=lambda x: isinstance(x, jt.FlatParams))


def _numbers(state):
    """A TrainState's numbers (all but the key), FlatParams as trees."""
    return _as_tree((state.step, state.params, state.opt_state, state.model_state,
                     state.averages))


def _padding_zero(tree):
    """Whether every FlatParams vector in ``tree`` is zero past its parameters."""
    flats = [x for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, jt.FlatParams))
             if isinstance(x, jt.FlatParams)]
    return bool(flats) and all(not np.any(np.asarray(jax.device_get(f.vectors[k]))[n:])
                               for f in flats for k, n in f.sizes().items())


FLAT_STEPS = 4


def scenario_flat_params(mesh, compiles):
    """flat_params=True on 8 devices (replicated, ZeRO-1, FSDP) against one device, flat
    and tree: adamw + clipping, EMA, batch norm; then checkpoints across the forms."""
    bn_params, bn_state = jt.layers.batch_norm_init(32)
    params = {**mlp_params(), "bn": bn_params, "t": jnp.zeros(3)}
    x, y = mlp_data(n=FLAT_STEPS * BATCH)

    def tx():
        return jt.chain(jt.clip_by_global_norm(0.5), jt.adamw(1e-2, weight_decay=0.1))

    def run(**kwargs):
        step = jt.train.make_step(flat_loss, tx(), averaging=jt.averaging.ema(0.9), **kwargs)
        state = step.init(params, jax.random.key(0), bn_state)
        before, start, ms = _specs_of(state), len(compiles), []
        for i in range(FLAT_STEPS):
            state, m = step(state, (x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]))
            ms.append(m)
        return step, state, ms, {"kept": _specs_of(state) == before,
                                 "compilations": len(compiles) - start}

    _, tree, m_tree, _ = run()
    one_step, one, _, _ = run(flat_params=True)
    out = {"one_device_close": _close(_numbers(one), _numbers(tree), rtol=1e-6)[0]}
    for mode in MODES:
        step, state, ms, info = run(mesh=mesh, flat_params=True, **MODES[mode])
        most, total = per_device_bytes(state.opt_state)
        out[mode] = {
            **info, "vector_lengths": {k: v.shape[0] for k, v in state.params.vectors.items()},
            "param_spec": _spec(state.params.vectors["float32"].sharding, 1),
            "mu_spec": _spec(state.opt_state[1][0].mu.vectors["float32"].sharding, 1),
            "vs_tree": _close(_numbers(state), _numbers(tree), rtol=1e-6),
            "vs_flat": _close(_numbers(state), _numbers(one), rtol=1e-6),
            "metrics_close": _close([(m["loss"], m["grad_norm"]) for m in ms],
                                    [(m["loss"], m["grad_norm"]) for m in m_tree],
                                    rtol=1e-6)[0],
            "padding_zero": _padding_zero(state),
            "state_bytes_most": most, "state_bytes_total": total,
            "scalar_bytes": sum(x.nbytes for x in jax.tree.leaves(state.opt_state)
                                if np.ndim(x) == 0)}
        if mode == "fsdp":  # eager tree() of vectors split over the mesh
            out[mode]["eval_params_close"] = _close(
                step.eval_params(state), _host_tree(one.averages.mean), rtol=1e-6)[0]
        if mode == "zero":
            out["checkpoint"] = _flat_checkpoints(state, params, bn_state, tree, one_step,
                                                  step, mesh)
    return out


def _flat_checkpoints(state, params, bn_state, tree, one_step, mesh_step, mesh):
    """A padded 8-device flat state saved, restored into a tree, a one-device flat and
    the 8-device state (then placed on the mesh and stepped)."""
    tree_step = jt.train.make_step(flat_loss, mesh_step.tx, averaging=mesh_step.averaging)
    with tempfile.TemporaryDirectory() as tmp:
        path = jt.train.save(os.path.join(tmp, "ckpt"), state)
        key = jax.random.key(0)
        as_tree = jt.train.restore(path, like=tree_step.init(params, key, bn_state))
        as_one = jt.train.restore(path, like=one_step.init(params, key, bn_state))
        fresh = mesh_step.init(params, key, bn_state)
        same = jt.train.restore(path, like=fresh)
    same = jax.device_put(same, jax.tree.map(lambda v: v.sharding, fresh))
    x, y = mlp_data(n=BATCH)
    mesh_step(same, (x, y))  # the restored state runs on the mesh
    exact = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                         jax.device_get(_numbers(as_one)), jax.device_get(_numbers(state)))
    return {"tree_exact": _close(_numbers(as_tree), _numbers(state), rtol=0, atol=0)[0],
            "one_device_exact": all(jax.tree.leaves(exact)),
            "one_device_unpadded": as_one.params.vectors["float32"].shape[0] == 875,
            "mesh_lengths_kept": _specs_of(same) == _specs_of(fresh)}


def scenario_orbax(mesh):
    """A ZeRO + FSDP TrainState saved and restored by orbax with its shardings."""
    import orbax.checkpoint as ocp

    params, data = mlp_params(), mlp_data()
    step = jt.train.make_step(mlp_loss, jt.adam(1e-2), mesh=mesh, zero=True,
                              param_sharding="fsdp")
    state, _ = run_steps(step, params, data, steps=3)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt")
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(path, state)
            ckptr.wait_until_finished()
            like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                               sharding=x.sharding),
                                step.init(params, jax.random.key(0)))
            restored = ckptr.restore(path, like)
    same = all(bool(np.array_equal(jax.device_get(u), jax.device_get(v)))
               for u, v in zip(jax.tree.leaves(jax.tree.map(_data, state)),
                               jax.tree.leaves(jax.tree.map(_data, restored))))
    cont, _ = run_steps(step, params, data, steps=1)  # the step still runs afterwards
    del cont
    return {"values_equal": same, "shardings_equal": _specs_of(state) == _specs_of(restored),
            "type": type(restored).__name__}


def _data(x):
    return jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) \
        else x


def auto_mesh(shape, names):
    devices = np.array(jax.devices()[:int(np.prod(shape))]).reshape(shape)
    return Mesh(devices, names, axis_types=(AxisType.Auto,) * len(names))


def main(path):
    mesh2d = jax.make_mesh((4, 2), ("data", "model"))
    mesh = jax.make_mesh((8,), ("data",))
    compiles = count_compiles()
    results = {}
    must = [(o, m) for o in ("sgd_momentum", "adam", "clip_adam") for m in MODES]
    more = [(o, "zero") for o in ("sgd", "adamw", "lion", "adafactor", "muon")]
    for name, fn, args in [
        ("eager_init", scenario_eager_init, (mesh2d,)),
        ("state_shardings", scenario_state_shardings, (mesh2d,)),
        ("parity", scenario_parity, (mesh, must + more, compiles)),
        ("parity_auto", scenario_parity,
         (auto_mesh((8,), ("data",)), [("muon", "fsdp")], compiles)),
        ("tensor_parallel", scenario_tensor_parallel, (auto_mesh((4, 2), ("data", "model")),)),
        ("fit_batch_norm", scenario_fit_batch_norm, (mesh,)),
        ("bad_input", scenario_bad_input, (mesh,)),
        ("flat_params", scenario_flat_params, (mesh, compiles)),
        ("orbax", scenario_orbax, (mesh,)),
    ]:
        start = time.perf_counter()
        try:
            results[name] = fn(*args)
        except Exception:
            results[name] = {"error": traceback.format_exc()}
        results.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 2)
    with open(path, "w") as f:
        json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
