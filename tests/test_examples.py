"""The examples' quick paths, checked on what they write.

One subprocess runs the tour's smoke mode (the README's main command, every experiment
for a step or two); the digits MLP, the MNIST-1D table on a short budget, the four
model styles against optax and a per-claim script on real-MNIST IDX files the test
writes run in this process (their compiled programs are shared, no interpreter
start-up each); and the IDX reader's errors.
"""

from __future__ import annotations

import gzip
import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import equinox  # noqa: F401  (cnn_styles.py trains an equinox model)
import matplotlib.image
import numpy as np
import pytest
from mnist1d.data import get_dataset_args

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(script, *args, timeout=600):
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=EXAMPLES.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _example(name):
    """An example script imported as a module (its siblings on the path, as when run)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def _common():
    return _example("common")


def _finite(tree):
    if isinstance(tree, dict):
        return all(_finite(v) for v in tree.values())
    if isinstance(tree, list | tuple):
        return all(_finite(v) for v in tree)
    return not isinstance(tree, float) or math.isfinite(tree) or tree == math.inf


def test_tour_smoke_writes_a_row_a_plot_and_the_measured_claims(tmp_path):
    # The README's main command, every experiment for a step or two.
    out = _run("tour.py", "--tiny", "--out", tmp_path)
    result = json.loads((tmp_path / "results.json").read_text())
    rows = {int(r["claim"].split(".")[0]): r for r in result["rows"]}
    assert sorted(rows) == list(range(1, 11))
    assert set(result["seconds_per_experiment"]) == set(_example("tour").EXPERIMENTS)
    report = (tmp_path / "REPORT.md").read_text()
    for r in rows.values():
        assert _finite(r["numbers"]), r
        assert r["claim"] in out and r["claim"] in report
        png = tmp_path / r["plot"]
        assert 0 < png.stat().st_size < 200_000
        assert matplotlib.image.imread(png).shape[2] in (3, 4)
    # Claims that hold at initialisation, whatever the training length.
    scaling = rows[2]["numbers"]["saturated"]
    assert scaling["raw 0..255"] > 0.5 and scaling["min-max [0, 1]"] < 0.05
    flags = rows[1]["numbers"]["flags"]
    assert flags["N(0, 1)"][0] > 0 and flags["N(0, 0.01^2)"][1] > 0
    assert flags["he"] == [0, 0]
    growth = rows[3]["numbers"]["std_growth"]
    assert growth["N(0, 1)"] > 1e4 and growth["N(0, 0.01^2)"] < 1e-4
    assert 0.3 < growth["he"] < 3
    # Training ran: above chance (10%) after a step or two.
    assert rows[3]["numbers"]["test_accuracy"]["he"] > 0.15
    # Overfitting: plain and five tricks (six members side by side, EMA and SWA), early
    # stopping picking among the recorded evaluations (every 3rd epoch: one here).
    overfitting = rows[6]["numbers"]
    assert set(overfitting["test_loss"]) == set(overfitting["test_accuracy"])
    assert len(overfitting["test_loss"]) == 6 and overfitting["best_epoch"] == 3
    # Learning-rate decay: the four schedules of the one vmapped transform.
    assert len(rows[9]["numbers"]["train_loss"]) == 4


def test_digits_mlp_trains_and_restores_the_best_epoch(tmp_path, capsys):
    _example("digits_mlp").main(["--epochs", "2", "--no-plot", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    accuracy = float(out.split("test accuracy")[1].split(":")[1].split()[0])
    assert 0.3 < accuracy <= 1.0 and "restored" in out, out


def test_mnist1d_table_format_on_a_short_budget(tmp_path, capsys):
    args = get_dataset_args()
    assert (args.num_samples, args.train_split, args.seed) == (5000, 0.8, 42)
    path = tmp_path / "table.json"
    _example("mnist1d_table").main(["--seeds", "2", "--steps", "250", "--models",
                                    "logistic,mlp", "--out", str(path)])
    out = capsys.readouterr().out
    table = json.loads(path.read_text())
    assert {m: t["paper"] for m, t in table.items()} == {"logistic": 0.32, "mlp": 0.68}
    for name, t in table.items():
        assert len(t["seeds"]) == 2 and t["ours"] == pytest.approx(np.mean(t["seeds"]))
        assert 0.15 < t["ours"] <= 1.0, (name, t)
        # evaluated after steps 0 and 250, as the paper's loop; "ours" is the last
        assert [len(curve) for curve in t["curves"]] == [2, 2]
        assert t["seeds"] == pytest.approx([curve[-1] for curve in t["curves"]], abs=1e-4)
        assert t["best"] >= t["ours"] - 1e-6
        assert name in out
        # the same budget with the tricks: 250 steps of 40 batches = 6 epochs
        tricks = t["tricks"]
        assert [len(curve) for curve in tricks["curves"]] == [6, 6]
        assert tricks["ours"] == pytest.approx(np.mean(tricks["seeds"]))
        assert 0.15 < tricks["ours"] <= 1.0, (name, tricks)
    assert (table["mlp"]["tricks"]["dropout"], table["logistic"]["tricks"]["dropout"]) == (
        0.2, 0.0)
    assert table["mlp"]["ours"] > table["logistic"]["ours"]


def test_mnist1d_table_models_are_the_papers():
    import jax

    table = _example("mnist1d_table")
    key = jax.random.key(0)
    count = lambda tree: sum(a.size for a in jax.tree.leaves(tree))
    # The parameter counts the paper's notebook prints for LinearBase, MLPBase, ConvBase.
    params = {name: _common().jit(init)(key) for name, (init, _) in table.MODELS.items()}
    assert {n: count(p) for n, p in params.items()} == {"logistic": 410, "mlp": 15210,
                                                        "cnn": 5210}
    # PyTorch's default init: weights and biases uniform in +-1/sqrt(fan_in).
    layer = _common().jit(table.torch_layer, static_argnums=1)  # one fast compile
    wide = layer(key, (400, 300))
    for leaf in (wide["w"], wide["b"]):
        bound = 1 / np.sqrt(400)
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.9 * bound
        assert np.std(leaf) == pytest.approx(bound / np.sqrt(3), rel=0.1)
    conv = layer(key, (3, 25, 25))["b"]  # fan_in = kernel x channels
    assert np.abs(conv).max() <= 1 / np.sqrt(75) and np.abs(conv).max() > 0.5 / np.sqrt(75)
    # The MLP's hidden block is residual: h + relu(W2 h + b2).
    p, x = params["mlp"], np.linspace(-1, 1, 80, dtype=np.float32).reshape(2, 40)
    h = np.maximum(x @ p["l1"]["w"] + p["l1"]["b"], 0)
    h = h + np.maximum(h @ p["l2"]["w"] + p["l2"]["b"], 0)
    np.testing.assert_allclose(table.mlp_apply(p, x), h @ p["l3"]["w"] + p["l3"]["b"],
                               rtol=1e-5, atol=1e-5)


def test_the_examples_convolution_is_laxs():
    import jax

    for kernel, c_in, stride, length in [(5, 1, 2, 40), (3, 8, 1, 11)]:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(3, length, c_in)).astype(np.float32)
        w = rng.normal(size=(kernel, c_in, 6)).astype(np.float32)
        ref = jax.lax.conv_general_dilated(x, w, (stride,), [(1, 1)],
                                           dimension_numbers=("NWC", "WIO", "NWC"))
        conv = _common().jit(_common().conv, static_argnums=(3, 4))  # one fast compile
        np.testing.assert_allclose(conv(x, w, 0.5, stride, 1), ref + 0.5,
                                   rtol=1e-5, atol=1e-5)


def test_every_model_style_matches_optax(tmp_path):
    path = tmp_path / "styles.json"
    _example("cnn_styles").main(["--tiny", "--compare-optax", "--out", str(path)])
    results = json.loads(path.read_text())
    assert set(results) == {"jax", "linen", "nnx", "equinox"}
    for style, accs in results.items():
        assert accs["jtricks"] == pytest.approx(accs["optax"], abs=0.003), style
        assert accs["jtricks"] > 0.12, (style, accs)


def _write_idx(path, array, gz=False):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def _fake_mnist(folder, n_train=120, n_test=40):
    rng = np.random.default_rng(0)
    for split, n, gz in (("train", n_train, True), ("t10k", n_test, False)):
        y = rng.integers(0, 10, n)
        x = np.zeros((n, 28, 28))
        x[np.arange(n), 2 * y + 3, 5:20] = 255  # a bar whose row is the label
        suffix = ".gz" if gz else ""
        _write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", x, gz)
        _write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", y, gz)


def test_idx_files_load_and_a_truncated_one_is_named(tmp_path):
    common = _common()
    _fake_mnist(tmp_path)
    (x, y), (xt, _) = common.load_mnist(tmp_path)
    assert x.shape == (120, 784) and xt.shape == (40, 784) and y.dtype == np.int32
    assert x.max() == 255 and set(np.unique(y)) <= set(range(10))
    cut = tmp_path / "t10k-labels-idx1-ubyte"
    cut.write_bytes(cut.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"truncated.*shape \(40,\)"):
        common.load_mnist(tmp_path)
    cut.write_bytes(b"PK\3\4 not idx")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        common.read_idx(cut)


def test_a_claim_script_trains_on_real_mnist_files(tmp_path, capsys):
    _fake_mnist(tmp_path, n_train=600, n_test=100)
    module = _example("trick_dropout")
    _common().main_for(module.run, "dropout", module.__doc__, images=True, argv=[
        "--tiny", "--mnist-dir", str(tmp_path), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    row, = json.loads((tmp_path / "dropout.json").read_text())
    assert "200 training digits" in row["measured"] and "5. dropout" in out
    assert min(row["numbers"]["test_accuracy"]) > 0.5  # the bars are easy to read
    assert min(row["numbers"]["best_val"]) > 0.5
