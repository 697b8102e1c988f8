"""Checkpoints: exact round trips, named mismatches, corrupt files, and a resume after a
real SIGKILL that is bit-identical to an uninterrupted run."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtricks as jt
from jtricks.checkpoint import CheckpointError, all_checkpoints, latest, restore, save


def same_bits(a, b):
    """Every leaf equal bit for bit, with equal dtypes (keys compared by their data)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype.kind == "V":  # bfloat16 and friends: compare the raw bits
            x, y = x.view(f"u{x.dtype.itemsize}"), y.view(f"u{y.dtype.itemsize}")
        np.testing.assert_array_equal(x, y)


def mixed_tree():
    return {
        "key": jax.random.key(3),
        "raw_key": jax.random.PRNGKey(4),
        "rbg_key": jax.random.key(5, impl="rbg"),
        "bf16": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3) / 3,
        "f16": jnp.asarray([1.5, -2.25], jnp.float16),
        "i8": jnp.asarray([-3, 7], jnp.int8),
        "flag": jnp.asarray(True),
        "scalar": jnp.asarray(0.1, jnp.float32),
        "nested": [{"a": jnp.ones((2, 1))}, (jnp.zeros(0), None)],
        "nan": jnp.asarray([np.nan, np.inf, -0.0], jnp.float32),
    }


def test_round_trip_is_bit_exact_for_every_dtype_and_key(tmp_path):
    tree = mixed_tree()
    path = save(tmp_path / "a.npz", tree)
    same_bits(restore(path, tree), tree)
    # A template of shapes only (jax.eval_shape) works too.
    same_bits(restore(path, jax.eval_shape(lambda: mixed_tree())), tree)


def test_train_state_round_trip_into_a_directory(tmp_path):
    step = jt.train.make_step(lambda p, ms, b, k: (jnp.sum(p["w"] ** 2), (ms, {})),
                              jt.adam(1e-2), averaging=jt.averaging.ema(0.9))
    state = step.init({"w": jnp.ones(3)}, jax.random.key(0))
    state, _ = step(state, 0.0)
    path = save(tmp_path / "ckpts", state)
    assert os.path.basename(path) == "ckpt_000000001.npz"
    back = restore(tmp_path / "ckpts", state)
    assert isinstance(back, jt.train.TrainState)
    same_bits(back, state)


def test_file_is_a_plain_npz_with_a_manifest(tmp_path):
    tree = {"w": jnp.arange(3.0), "k": jax.random.key(1)}
    path = save(tmp_path / "t.npz", tree, step=7)
    with np.load(path, allow_pickle=False) as z:
        manifest = json.loads(z["manifest.json"])  # a non-.npy member reads as bytes
        np.testing.assert_array_equal(z["leaf_00001"], [0.0, 1.0, 2.0])
    assert manifest["step"] == 7 and manifest["format"] == "jtricks-checkpoint"
    assert [e["path"] for e in manifest["leaves"]] == ["['k']", "['w']"]
    assert manifest["leaves"][0]["dtype"] == "key"
    assert manifest["leaves"][1]["shape"] == [3]


def test_keep_last_k_and_latest_ignores_temporary_files(tmp_path):
    d = tmp_path / "run"
    for s in range(1, 6):
        save(d, {"x": jnp.full(2, float(s))}, step=s, keep=2)
    (d / ".tmp-abc.npz").write_bytes(b"partial")
    assert [os.path.basename(p) for p in all_checkpoints(d)] == [
        "ckpt_000000004.npz", "ckpt_000000005.npz"]
    assert latest(d).endswith("ckpt_000000005.npz")
    np.testing.assert_array_equal(restore(d, {"x": jnp.zeros(2)})["x"], [5.0, 5.0])
    assert latest(tmp_path / "missing") is None


MISMATCHES = [
    ("extra leaf", {"a": jnp.zeros(2), "b": jnp.zeros(3), "c": jnp.zeros(1)},
     r"`like` has 3 leaves but .* holds 2; the first missing one is \['c'\]"),
    ("missing leaf", {"a": jnp.zeros(2)},
     r"holds 2 leaves but `like` has 1; the first extra one is \['b'\]"),
    ("renamed leaf", {"a": jnp.zeros(2), "z": jnp.zeros(3)},
     r"structure mismatch at leaf #1: `like` has \['z'\] but the checkpoint has \['b'\]"),
    ("shape", {"a": jnp.zeros(2), "b": jnp.zeros((3, 1))},
     r"shape mismatch at \['b'\]: `like` has \(3, 1\), the checkpoint has \(3,\)"),
    ("dtype", {"a": jnp.zeros(2), "b": jnp.zeros(3, jnp.int32)},
     r"dtype mismatch at \['b'\]: `like` has int32, the checkpoint has float32"),
    ("key vs array", {"a": jnp.zeros(2), "b": jax.random.key(0)},
     r"shape mismatch at \['b'\]: `like` has \(\), the checkpoint has \(3,\)"),
]


@pytest.mark.parametrize("name,like,match", MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_like_that_does_not_fit_names_the_path(tmp_path, name, like, match):
    path = save(tmp_path / "m.npz", {"a": jnp.ones(2), "b": jnp.ones(3)})
    with pytest.raises(CheckpointError, match=match):
        restore(path, like)


def _truncate(data, _):
    return data[: len(data) // 2]


@pytest.mark.parametrize("damage", [
    lambda data, off: b"",
    lambda data, off: data[:40],
    _truncate,
    lambda data, off: data[:-1],
    # One flipped byte inside a leaf's array data (caught by the CRC-32 / SHA-256).
    lambda data, off: data[:off] + bytes([data[off] ^ 0x10]) + data[off + 1:],
], ids=["empty", "40 bytes", "half", "last byte cut", "flipped byte"])
def test_truncated_or_corrupted_file_is_refused(tmp_path, damage):
    tree = {"w": jnp.arange(64.0).reshape(8, 8), "k": jax.random.key(0)}
    path = save(tmp_path / "c.npz", tree)
    data = open(path, "rb").read()
    # Offset of the w leaf's last float: find it by its value 63.0 in float32.
    off = data.rfind(np.float32(63.0).tobytes())
    assert off > 0
    with open(path, "wb") as f:
        f.write(damage(data, off + 2))
    with pytest.raises(CheckpointError, match=r"truncated or corrupted|is corrupted"):
        restore(path, tree)


def test_bad_save_arguments(tmp_path):
    with pytest.raises(TypeError, match=r"leaf of type function is not an array"):
        save(tmp_path / "f.npz", {"f": lambda x: x})
    with pytest.raises(ValueError, match=r"needs a step for the file name"):
        save(tmp_path / "dir", {"x": jnp.zeros(1)})
    with pytest.raises(ValueError, match=r"keep=2 needs a directory path"):
        save(tmp_path / "f.npz", {"x": jnp.zeros(1)}, keep=2)
    with pytest.raises(ValueError, match=r"keep must be an integer >= 1 or None, got 0"):
        save(tmp_path / "d", {"x": jnp.zeros(1)}, step=1, keep=0)
    with pytest.raises(CheckpointError, match=r"no checkpoint at"):
        restore(tmp_path / "nothing.npz", {"x": jnp.zeros(1)})
    with pytest.raises(CheckpointError, match=r"no ckpt_<step>.npz file in directory"):
        os.makedirs(tmp_path / "empty")
        restore(tmp_path / "empty", {"x": jnp.zeros(1)})


# ----------------------------------------------------------------- SIGKILL and resume

# The run both processes execute. The child trains, saving after every step, until it
# is killed; the parent restores the newest checkpoint and finishes the run.
RUN = r'''
import sys
import jax
import jax.numpy as jnp
import jtricks as jt


def loss_fn(params, model_state, batch, key):
    x, y = batch
    h = jnp.tanh(x @ params["w1"])
    h = jnp.where(jax.random.bernoulli(key, 0.8, h.shape), h / 0.8, 0.0)  # dropout
    mean = 0.9 * model_state["mean"] + 0.1 * jnp.mean(h, axis=0)          # running stat
    return jnp.mean((h @ params["w2"] - y) ** 2), ({"mean": mean}, {})


def build():
    step = jt.train.make_step(loss_fn, jt.adam(1e-2), averaging=jt.averaging.ema(0.9))
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"w1": jax.random.normal(k1, (3, 8)) / 2, "w2": jax.random.normal(k2, (8, 1)) / 3}
    return step, step.init(params, jax.random.key(1), {"mean": jnp.zeros(8)})


def batch(t):
    x = jax.random.normal(jax.random.fold_in(jax.random.key(99), t), (16, 3))
    return x, jnp.sin(x[:, :1]) + x[:, 1:2]


def run(step, state, until):
    while int(state.step) < until:
        state, _ = step(state, batch(int(state.step)))
    return state


if __name__ == "__main__":
    import time
    import zipfile

    ckdir, total, hang_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    step, state = build()
    writestr = zipfile.ZipFile.writestr

    def slow_writestr(self, name, data, *args, **kwargs):
        writestr(self, name, data, *args, **kwargs)
        if int(state.step) == hang_at and name == "leaf_00002.npy":
            print("saving", flush=True)  # half of this checkpoint is written
            time.sleep(60)

    zipfile.ZipFile.writestr = slow_writestr
    while int(state.step) < total:
        state, _ = step(state, batch(int(state.step)))
        jt.train.save(ckdir, state, keep=3)
        print(int(state.step), flush=True)
    time.sleep(60)
'''

K = 12


@pytest.fixture(scope="module")
def run_module(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "resume_run.py"
    path.write_text(RUN)
    spec = importlib.util.spec_from_file_location("resume_run", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    step, state = mod.build()
    return path, mod, mod.run(step, state, 2 * K)


def run_child_until(script, ckdir, *, kill_after_line, hang_at=-1):
    """Starts the run in a fresh process and SIGKILLs it once it printed the line."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ckdir), str(2 * K), str(hang_at)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if lines[-1] == kill_after_line:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (lines, proc.stderr.read())
    return lines


@pytest.mark.parametrize("seed", [0])
def test_resume_after_sigkill_at_a_random_step_is_bit_identical(tmp_path, run_module, seed):
    script, mod, straight = run_module
    kill_at = int(np.random.default_rng(seed).integers(K // 2, 2 * K - 2))
    run_child_until(script, tmp_path, kill_after_line=str(kill_at))
    step, fresh = mod.build()
    resumed = restore(tmp_path, fresh)
    at = int(resumed.step)
    assert at >= kill_at and len(all_checkpoints(tmp_path)) <= 3
    resumed = mod.run(step, resumed, 2 * K)
    same_bits(resumed, straight)


def test_kill_during_a_save_keeps_the_previous_checkpoint(tmp_path, run_module):
    script, mod, straight = run_module
    run_child_until(script, tmp_path, kill_after_line="saving", hang_at=K)
    # The half-written checkpoint of step K is a temporary file nobody reads ...
    temps = [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    assert len(temps) == 1
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        restore(tmp_path / temps[0], mod.build()[1])
    # ... and the newest complete one is step K - 1, which resumes exactly.
    assert latest(tmp_path).endswith(f"ckpt_{K - 1:09d}.npz")
    step, fresh = mod.build()
    resumed = restore(tmp_path, fresh)
    assert int(resumed.step) == K - 1
    same_bits(mod.run(step, resumed, 2 * K), straight)


def test_fit_resumed_from_an_epoch_checkpoint_is_bit_identical(tmp_path, run_module):
    _, mod, _ = run_module
    x = np.asarray(jax.random.normal(jax.random.key(2), (48, 3)))
    data = (x, np.sin(x[:, :1]) + x[:, 1:2])
    key = jax.random.key(8)

    def fit(state, epochs, callback=None):
        return jt.train.fit(step, state, data, batch_size=16, epochs=epochs, key=key,
                            callback=callback)

    step, state = mod.build()
    straight, _ = fit(state, 4)
    step, state = mod.build()
    saved = []
    fit(state, 2, callback=lambda e, s, m: saved.append(save(tmp_path, s)))
    assert [os.path.basename(p) for p in saved] == ["ckpt_000000003.npz",
                                                    "ckpt_000000006.npz"]
    step, fresh = mod.build()
    resumed, _ = fit(restore(tmp_path, fresh), 2)
    same_bits(resumed, straight)
