"""Sharding on 8 fake CPU devices: state that follows the params, ZeRO-1, FSDP,
data-parallel make_step/fit, orbax checkpoints, and a two-process run.

JAX fixes its device count when it starts, and pytest's JAX has one device, so the
multi-device scenarios run in ONE subprocess (sharding_scenarios.py, every scenario
in one JAX start-up) and the multi-process run in two more (sharding_multiprocess.py);
the tests here assert on what they report. A few single-device checks run in-process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jtricks as jt
from jtricks import sharding as jsharding

HERE = os.path.dirname(os.path.abspath(__file__))
# The scenarios compile ~30 small programs; LLVM's backend optimisations buy nothing
# there (both sides of every comparison are compiled alike).
FLAGS = "--xla_backend_optimization_level=0"


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {FLAGS}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharding") / "scenarios.json"
    proc = subprocess.run([sys.executable, os.path.join(HERE, "sharding_scenarios.py"),
                           str(out)], env=_env(8), capture_output=True, text=True,
                          timeout=400, cwd=HERE)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    return results


def _ok(results, name):
    value = results[name]
    assert "error" not in value, value.get("error")
    return value


# --- tx.init and state_shardings over the whole optimizer table ---------------------------

def test_init_keeps_each_params_sharding_for_every_row(scenarios):
    rows = _ok(scenarios, "eager_init")
    assert len(rows) > 100
    for must in ("sgd_momentum", "adagrad", "rmsprop", "adam", "adamw", "clip_by_global_norm",
                 "adafactor", "muon", "lion_named", "sm3_named"):
        assert rows[must] == [], (must, rows[must])
    assert {name: p for name, p in rows.items() if p} == {}


def test_state_shardings_follow_the_params_for_every_row(scenarios):
    rows = _ok(scenarios, "state_shardings")
    assert len(rows) > 100
    assert {name: p for name, p in rows.items() if p} == {}


# --- make_step on a mesh ------------------------------------------------------------------

MUST = [f"{o}/{m}" for o in ("sgd_momentum", "adam", "clip_adam")
        for m in ("replicated", "zero", "fsdp")]
MORE = [f"{o}/zero" for o in ("sgd", "adamw", "lion", "adafactor", "muon")]


@pytest.mark.parametrize("case", MUST + MORE)
def test_data_parallel_steps_equal_one_device(scenarios, case):
    r = _ok(scenarios, "parity")[case]
    assert r["params_close"], r["params_err"]
    assert r["opt_state_close"], r["opt_state_err"]
    assert r["shardings_kept"]
    assert r["compilations"] == 1


def test_auto_mesh_fsdp_with_muon(scenarios):
    r = _ok(scenarios, "parity_auto")["muon/fsdp"]
    assert r["params_close"] and r["opt_state_close"] and r["shardings_kept"]
    assert r["compilations"] == 1


# Adafactor is left out: its state is row and column statistics (not shaped like a
# parameter), which stay replicated; they are already O(rows + columns).
@pytest.mark.parametrize("case", ["sgd_momentum", "adam", "clip_adam", "adamw", "lion",
                                  "muon"])
def test_zero_and_fsdp_state_bytes_per_device(scenarios, case):
    parity = _ok(scenarios, "parity")
    modes = ["zero", "fsdp"] if f"{case}/fsdp" in parity else ["zero"]
    for mode in modes:
        r = parity[f"{case}/{mode}"]
        arrays = r["state_bytes_total"] - r["scalar_bytes"]
        assert r["state_bytes_most"] <= arrays / 8 * 1.1 + r["scalar_bytes"], r
    replicated = parity.get(f"{case}/replicated")
    if replicated is not None:  # without ZeRO every device holds all of it
        assert replicated["state_bytes_most"] == replicated["state_bytes_total"]


def test_fsdp_shards_each_largest_divisible_dimension(scenarios):
    r = _ok(scenarios, "parity")["adam/fsdp"]
    # b1 (32,), b2 (8,), w1 (16, 32), w2 (32, 8) in tree order
    assert r["param_specs"] == [["data"], ["data"], [None, "data"], ["data", None]]
    assert _ok(scenarios, "parity")["adam/zero"]["param_specs"] == [
        [None], [None], [None, None], [None, None]]


def test_tensor_parallel_specs(scenarios):
    r = _ok(scenarios, "tensor_parallel")
    assert r["close"]
    assert r["param_specs"] == {"b1": ["model"], "b2": [None], "w1": [None, "model"],
                                "w2": ["model", None]}
    assert r["mu_specs"] == r["param_specs"]


def test_fit_on_a_mesh_equals_one_device_with_batch_norm_clipping_and_ema(scenarios):
    r = _ok(scenarios, "fit_batch_norm")
    assert r == {"params_close": True, "model_state_close": True, "averages_close": True,
                 "grad_norm_close": True, "shardings_kept": True,
                 "averages_follow_params": True,
                 "flat_close": True, "flat_grad_norm_close": True,
                 "flat_shardings_kept": True, "flat_param_spec": ["data"]}


# --- flat_params=True on a mesh -------------------------------------------------------------

FLAT_SPECS = {"replicated": ([None], [None]), "zero": ([None], ["data"]),
              "fsdp": (["data"], ["data"])}


@pytest.mark.parametrize("mode", list(FLAT_SPECS))
def test_flat_params_on_a_mesh_equal_one_device_flat_and_tree(scenarios, mode):
    flat = _ok(scenarios, "flat_params")
    assert flat["one_device_close"]
    r = flat[mode]
    assert r["vs_tree"][0], r["vs_tree"]  # rtol 1e-6
    assert r["vs_flat"][0], r["vs_flat"]
    assert r["metrics_close"] and r["kept"] and r["compilations"] == 1
    assert r["vector_lengths"] == {"float32": 880}  # 875 elements padded for 8 devices
    assert r["padding_zero"]
    assert (r["param_spec"], r["mu_spec"]) == FLAT_SPECS[mode]
    if mode == "fsdp":
        assert r["eval_params_close"]


@pytest.mark.parametrize("mode", ["zero", "fsdp"])
def test_flat_params_state_bytes_per_device(scenarios, mode):
    # The optimizer state's flat vectors (mu, nu, 880 floats each) split 8 ways.
    r = _ok(scenarios, "flat_params")[mode]
    arrays = r["state_bytes_total"] - r["scalar_bytes"]
    assert r["state_bytes_most"] <= arrays / 8 + r["scalar_bytes"], r
    replicated = _ok(scenarios, "flat_params")["replicated"]
    assert replicated["state_bytes_most"] == replicated["state_bytes_total"]


def test_a_padded_flat_checkpoint_restores_into_every_form(scenarios):
    assert _ok(scenarios, "flat_params")["checkpoint"] == {
        "tree_exact": True, "one_device_exact": True, "one_device_unpadded": True,
        "mesh_lengths_kept": True}


def test_bad_input_messages(scenarios):
    r = _ok(scenarios, "bad_input")
    assert "batch leaf [0] has leading size 12" in r["batch_of_12"]
    assert "8 devices on mesh axis 'data'" in r["batch_of_12"]
    for key in ("missing_axis", "missing_axis_shard_batch"):
        assert "no axis 'batch'; its axes are ('data',)" in r[key]
    assert "does not match the params" in r["spec_tree"]
    assert "['b2']" in r["spec_tree"]


def test_orbax_restores_the_sharded_train_state(scenarios):
    assert _ok(scenarios, "orbax") == {"values_equal": True, "shardings_equal": True,
                                       "type": "TrainState"}


# --- two processes ------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    port, script = _free_port(), os.path.join(HERE, "sharding_multiprocess.py")
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, script, str(port), str(i), str(outs[i])],
                              env=_env(4), cwd=HERE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=110)[0])
    finally:
        for p in procs:  # never leave a process behind, whatever happened
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), "\n".join(x[-3000:] for x in logs)
    first, second = (json.loads(o.read_text()) for o in outs)
    assert first["devices"] == second["devices"] == 8
    assert first["local_devices"] == second["local_devices"] == 4
    assert first["rows"] == [0, 16] and second["rows"] == [16, 32]
    assert first["max_rel_err"] <= 1.0  # |a - b| <= 1e-6 + 1e-5 |b| everywhere
    assert first["loss"] == second["loss"]
    np.testing.assert_allclose(first["loss"], first["ref_loss"], rtol=1e-5)


# --- in this process (one device) ---------------------------------------------------------

def test_single_device_state_is_unchanged_by_the_placement_rule():
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    state = jt.adam(1e-3).init(params)
    assert not state[0].count._committed  # no device chosen: jit places it freely
    assert jax.tree.map(lambda x: x.dtype, state[0].mu) == jax.tree.map(
        lambda x: x.dtype, params)


def test_refusals_on_one_device():
    mesh = jax.make_mesh((1,), ("data",))
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    with pytest.raises(ValueError, match="no axis 'model'; its axes are \\('data',\\)"):
        jsharding.shard_batch(jnp.ones((4, 2)), mesh, "model")
    with pytest.raises(ValueError, match="does not match the params"):
        jsharding.param_shardings(params, mesh, {"w": P()})
    with pytest.raises(ValueError, match="is a scalar"):
        jsharding.shard_batch({"x": jnp.ones(())}, mesh)
    with pytest.raises(ValueError, match="need a mesh"):
        jt.train.make_step(lambda *a: None, jt.adam(1e-3), zero=True)
    with pytest.raises(ValueError, match="no leaf of params is placed on a mesh"):
        jsharding.state_shardings(jt.adam(1e-3), params)
