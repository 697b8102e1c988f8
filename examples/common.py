"""The pieces every example shares: offline data, small plain-JAX models, a training
loop that can be vmapped over a sweep, plots, and the rows the tour collects.

Data: MNIST-1D (Greydanus & Kobak; generated procedurally by the ``mnist1d``
package, nothing downloaded), scikit-learn's 8x8 digits, and real MNIST from the
four IDX files when the user has them (``--mnist-dir``).

Models are pure functions over dict params built with ``jt.init`` and ``jt.layers``:
an MLP (any initialiser, optional batch / layer / weight normalisation, dropout), the
MNIST-1D paper's small CNN, and a small 1-D ResNet.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jtricks as jt

ROOT = Path(__file__).resolve().parent.parent
SIZES = ("tiny", "quick", "full")

# --- data ----------------------------------------------------------------------------


def mnist1d(seed: int = 42, n_train: int | None = None, val: int = 0):
    """MNIST-1D's default split (4,000 train / 1,000 test, 40 samples per signal).

    ``seed`` is the generator's (42 gives the paper's data set). With ``val > 0`` the
    last ``val`` training signals become a validation set. Returns
    ``{"train": (x, y), "val": (x, y) or None, "test": (x, y)}``, float32 / int32.
    """
    d = _mnist1d(seed)
    x, y = d["x"].astype(np.float32), d["y"].astype(np.int32)
    out = {"test": (d["x_test"].astype(np.float32), d["y_test"].astype(np.int32)),
           "val": (x[len(x) - val:], y[len(x) - val:]) if val else None}
    x, y = x[:len(x) - val], y[:len(y) - val]
    out["train"] = (x[:n_train], y[:n_train])
    return out


@functools.lru_cache(maxsize=2)
def _mnist1d(seed: int) -> dict:
    # Generating the 5,000 signals (and importing the generator) takes seconds of CPU
    # time: the arrays are kept in runs/ for the next run, keyed by the generator's
    # version (its default arguments are fixed within a version) and the seed.
    from importlib.metadata import version

    keys = ("x", "y", "x_test", "y_test")
    path = ROOT / "runs" / ".data" / f"mnist1d-{version('mnist1d')}-seed{seed}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in keys}
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **{k: data[k] for k in keys})
    tmp.replace(path)  # atomic: a crash never leaves half a file behind
    return {k: data[k] for k in keys}


def digits(seed: int = 0, n_train: int | None = None, mnist_dir: Path | None = None):
    """scikit-learn's digits as 8-bit intensities 0..255, split 60/20/20 (train/val/
    test) after a seeded shuffle; or MNIST from ``mnist_dir`` (train's last 10,000
    images, or a sixth of a smaller set, as validation). Inputs are *not* scaled:
    scaling is the first trick."""
    if mnist_dir is not None:
        (x, y), test = load_mnist(mnist_dir)
        v = min(10000, len(x) // 6)
        return {"train": (x[:-v][:n_train], y[:-v][:n_train]), "val": (x[-v:], y[-v:]),
                "test": test}
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(x))
    x, y = (x[perm] * (255 / 16)).astype(np.float32), y[perm].astype(np.int32)
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return {"train": (x[:a][:n_train], y[:a][:n_train]), "val": (x[a:b], y[a:b]),
            "test": (x[b:], y[b:])}


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (MNIST's format), gzipped or not, as a uint8 array.

    Raises:
        ValueError: not an unsigned-byte IDX file, or shorter than its header says.
    """
    path = Path(path)
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"read_idx: {path} is not an unsigned-byte IDX file (its first "
                         f"bytes are {raw[:4]!r}); give MNIST's original files.")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"read_idx: {path} is truncated inside its header ({len(raw)} "
                         "bytes). Download it again.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    need = 4 + 4 * ndim + int(np.prod(shape))
    if len(raw) < need:
        raise ValueError(f"read_idx: {path} is truncated: its header promises shape {shape}"
                         f" ({need} bytes) but the file has {len(raw)} bytes. Download it "
                         "again.")
    return np.frombuffer(raw, np.uint8, int(np.prod(shape)), 4 + 4 * ndim).reshape(shape)


def load_mnist(mnist_dir: Path):
    """``((x_train, y_train), (x_test, y_test))`` from the four IDX files in
    ``mnist_dir`` (names as distributed, ``.gz`` or not); images flattened to 784
    float32 intensities 0..255."""
    out = []
    for split in ("train", "t10k"):
        arrays = []
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            stem = Path(mnist_dir) / f"{split}-{kind}"
            found = [p for p in (stem, stem.with_name(stem.name + ".gz")) if p.exists()]
            if not found:
                raise FileNotFoundError(f"load_mnist: no {stem.name}[.gz] in {mnist_dir}; "
                                        "--mnist-dir needs MNIST's four IDX files.")
            arrays.append(read_idx(found[0]))
        x, y = arrays
        out.append((x.reshape(len(x), -1).astype(np.float32), y.astype(np.int32)))
    return out[0], out[1]


# --- models --------------------------------------------------------------------------


def dense_init(key, n_in, n_out, kernel_init=None):
    kernel_init = kernel_init or jt.init.he_normal()
    return {"w": kernel_init(key, (n_in, n_out)), "b": jnp.zeros(n_out)}


def jit_init(init):
    """``init(key, *static)`` as one compiled program per ``static`` (hashable: sizes,
    initialisers, options). Called eagerly, every initialiser of every layer shape
    would compile its own small programs (random bits, a truncated normal, a QR),
    which costs more CPU time than a short training run."""
    compiled = functools.lru_cache(maxsize=None)(
        lambda *static: jit(lambda key: init(key, *static)))

    def call(key, *static):
        if isinstance(key, jax.core.Tracer):  # inside a traced program already
            return init(key, *static)
        return compiled(*static)(key)

    return functools.wraps(init)(call)


@jit_init
def mlp_init(key, sizes, kernel_init=None, norm=None):
    """Dense layers; ``norm`` in (None, "batch", "layer", "weight") on hidden layers.
    Returns ``(params, model_state)`` (batch norm's running statistics)."""
    sizes = tuple(sizes)
    params, state = [], []
    for i, k in enumerate(jax.random.split(key, len(sizes) - 1)):
        layer, s = dense_init(k, sizes[i], sizes[i + 1], kernel_init), {}
        hidden = i < len(sizes) - 2
        if hidden and norm == "batch":
            layer["bn"], s = jt.layers.batch_norm_init(sizes[i + 1])
        elif hidden and norm == "layer":
            layer["ln"] = jt.layers.layer_norm_init(sizes[i + 1])
        elif hidden and norm == "weight":
            layer.update(jt.layers.weight_norm_init(layer.pop("w")))
        params.append(layer)
        state.append(s)
    return params, state


def mlp_apply(params, state, x, key=None, *, training=False, act=jax.nn.relu, rate=0.0):
    """Logits, new model state and the hidden pre-activations (for diagnostics).

    The lesson's order: weights, then the normalisation, then the activation, then
    dropout on what feeds the next layer."""
    pre, new_state = [], []
    # A Python rate of 0 draws no mask: every random draw costs its program a
    # compilation of the random-bit generator (about half a second on a CPU).
    drop = training and not (isinstance(rate, int | float) and rate == 0)
    keys = jax.random.split(key, len(params)) if drop else [None] * len(params)
    for i, (layer, s) in enumerate(zip(params, state)):
        w = jt.layers.weight_norm(layer["v"], layer["g"]) if "v" in layer else layer["w"]
        x = x @ w + layer["b"]
        if i < len(params) - 1:
            if "bn" in layer:
                x, s = jt.layers.batch_norm(layer["bn"], s, x, training=training, momentum=0.9)
            elif "ln" in layer:
                x = jt.layers.layer_norm(layer["ln"], x)
            pre.append(x)
            x = jt.layers.dropout(keys[i], act(x), rate, training=drop) if drop else act(x)
        new_state.append(s)
    return x, new_state, pre


def conv(x, w, b, stride, padding):
    """A 1-D convolution (cross-correlation, as ``lax.conv_general_dilated`` and
    PyTorch's ``Conv1d``) of ``x [N, L, C_in]`` with ``w [k, C_in, C_out]``, written
    as one matrix product over the k shifted copies of the input: on a CPU, XLA's
    convolutions of these small channel counts (and their gradients) run several
    times slower than the matrix product, and take longer to compile."""
    k, length = w.shape[0], x.shape[1]
    x = jnp.pad(x, ((0, 0), (padding, padding), (0, 0)))
    n_out = (length + 2 * padding - k) // stride + 1
    span = stride * (n_out - 1) + 1
    patches = jnp.concatenate([x[:, j:j + span:stride] for j in range(k)], axis=-1)
    return patches @ w.reshape(-1, w.shape[-1]) + b


@jit_init
def cnn_init(key, channels=25, length=40, n_out=10, kernel_init=None):
    """The MNIST-1D paper's CNN: three ReLU conv layers (kernels 5, 3, 3, stride 2,
    padding 1, 25 channels), then one dense layer on the flattened features."""
    k = jax.random.split(key, 4)
    init = kernel_init or jt.init.he_normal()
    convs = [{"w": init(k[i], (ks, c_in, channels)), "b": jnp.zeros(channels)}
             for i, (ks, c_in) in enumerate([(5, 1), (3, channels), (3, channels)])]
    for ks in (5, 3, 3):
        length = (length + 2 - ks) // 2 + 1
    return {"convs": convs, "out": dense_init(k[3], channels * length, n_out, init)}


def maybe_dropout(h, key, rate):
    """Dropout in training (a key given); no mask drawn at all for a Python rate of 0
    (every random draw costs its program a compilation of the random-bit generator)."""
    if key is None or (isinstance(rate, int | float) and rate == 0):
        return h
    return jt.layers.dropout(key, h, rate, training=True)


def cnn_apply(params, x, key=None, rate=0.0):
    """Logits; with a ``key``, dropout at ``rate`` on the flattened conv features."""
    h = x[..., None]
    for layer in params["convs"]:
        h = jax.nn.relu(conv(h, layer["w"], layer["b"], 2, 1))
    h = maybe_dropout(h.reshape(h.shape[0], -1), key, rate)
    return h @ params["out"]["w"] + params["out"]["b"]


@jit_init
def resnet_init(key, channels=16, blocks=3, n_out=10):
    """A small 1-D ResNet: a stem conv, ``blocks`` residual blocks (two kernel-3
    convs each, layer-normalised), global average pooling and a dense head."""
    k = jax.random.split(key, 2 * blocks + 2)
    he = jt.init.he_normal()
    layer = lambda key, c_in: {"w": he(key, (3, c_in, channels)), "b": jnp.zeros(channels)}
    blocks = [{"a": layer(k[2 * i + 1], channels), "b": layer(k[2 * i + 2], channels),
               "ln": jt.layers.layer_norm_init(channels)} for i in range(blocks)]
    return {"stem": layer(k[0], 1), "blocks": blocks, "out": dense_init(k[-1], channels, n_out)}


def resnet_apply(params, x):
    h = jax.nn.relu(conv(x[..., None], params["stem"]["w"], params["stem"]["b"], 1, 1))
    for blk in params["blocks"]:
        r = jax.nn.relu(jt.layers.layer_norm(blk["ln"], conv(h, blk["a"]["w"],
                                                              blk["a"]["b"], 1, 1)))
        # Zero-free residual: the block adds to h, so depth can switch itself off.
        h = jax.nn.relu(h + conv(r, blk["b"]["w"], blk["b"]["b"], 1, 1))
        h = h[:, ::2] if h.shape[1] > 10 else h  # halve the length while it is long
    return h.mean(1) @ params["out"]["w"] + params["out"]["b"]


def cross_entropy(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def accuracy(logits, y):
    return jnp.mean(jnp.argmax(logits, -1) == y)


def stateless_loss(apply, penalty=0.0):
    """A ``make_step`` loss for a model ``apply(params, x) -> logits`` without state;
    ``penalty`` weighs ``jt.regularization.l2`` (may be traced, for sweeps)."""
    def loss_fn(params, model_state, batch, key):
        x, y = batch
        logits = apply(params, x)
        loss = cross_entropy(logits, y) + penalty * jt.regularization.l2(params)
        return loss, (model_state, {"accuracy": accuracy(logits, y)})
    return loss_fn


def mlp_loss(act=jax.nn.relu, rate=0.0):
    """A ``make_step`` loss for :func:`mlp_apply` (batch-norm state threaded)."""
    def loss_fn(params, model_state, batch, key):
        x, y = batch
        logits, model_state, _ = mlp_apply(params, model_state, x, key, training=True,
                                           act=act, rate=rate)
        return cross_entropy(logits, y), (model_state, {"accuracy": accuracy(logits, y)})
    return loss_fn


# --- training ------------------------------------------------------------------------


def train_epochs(step, state, train, *, epochs, batch_size, key, evaluate, eval_every=1):
    """A pure, vmappable training run: ``epochs`` shuffled passes of ``step.apply``.

    ``evaluate(step, state) -> {name: scalar}`` runs after every ``eval_every``-th
    epoch (``epochs`` must be a multiple of it; evaluating less often saves the
    evaluation's compute when it costs more than the training). Returns
    ``(state, history)`` with ``history[name]`` of shape ``[epochs // eval_every]``
    (``train_loss`` / ``train_accuracy``: the means over the epoch just before each
    evaluation, and ``evaluate``'s values) and ``history["steps"]`` holding each
    step's ``loss`` and ``grad_norm``, shape ``[epochs // eval_every, steps between]``.
    ``jt.train.fit`` is the same loop for one run, with early stopping; this one can
    be vmapped (a learning-rate sweep, an ensemble, several initialisations at once).
    """
    if epochs % eval_every:
        raise ValueError(f"train_epochs: epochs={epochs} is not a multiple of "
                         f"eval_every={eval_every}; pick epochs = k * eval_every.")
    train = jax.tree.map(jnp.asarray, train)
    n = jax.tree.leaves(train)[0].shape[0]
    n_batches = n // batch_size

    def epoch(state, ekey):
        idx = jax.random.permutation(ekey, n)[: n_batches * batch_size]

        def one(state, rows):
            state, m = step.apply(state, jax.tree.map(lambda a: a[rows], train))
            return state, {k: m[k] for k in ("loss", "grad_norm", "accuracy") if k in m}

        return jax.lax.scan(one, state, idx.reshape(n_batches, batch_size))

    def block(state, keys):
        state, m = jax.lax.scan(epoch, state, keys)
        out = {"train_loss": m["loss"][-1].mean(), "train_accuracy": m["accuracy"][-1].mean(),
               **evaluate(step, state),
               "steps": {"loss": m["loss"].ravel(), "grad_norm": m["grad_norm"].ravel()}}
        return state, out

    keys = jax.random.split(key, epochs)
    return jax.lax.scan(block, state, keys.reshape(epochs // eval_every, eval_every))


def eval_stateless(apply, splits):
    """An ``evaluate`` for :func:`train_epochs`: accuracy and loss on each split."""
    def evaluate(step, state):
        out = {}
        for name, (x, y) in splits.items():
            logits = apply(step.eval_params(state), x)
            out[f"{name}_accuracy"] = accuracy(logits, y)
            out[f"{name}_loss"] = cross_entropy(logits, y)
        return out
    return evaluate


def eval_mlp(splits, act=jax.nn.relu):
    def evaluate(step, state):
        out = {}
        for name, (x, y) in splits.items():
            logits, _, _ = mlp_apply(step.eval_params(state), state.model_state, x, act=act)
            out[f"{name}_accuracy"] = accuracy(logits, y)
            out[f"{name}_loss"] = cross_entropy(logits, y)
        return out
    return evaluate


# XLA's CPU backend spends most of a small MLP program's time optimising machine code;
# at level 0 those compile about a third faster and run as fast. Not for convolutions:
# unoptimised, their loops run several times slower (the CNN / ResNet use jax.jit).
_CPU_FAST = {"xla_backend_optimization_level": 0}


def jit(fn, **kwargs):
    """``jax.jit`` with faster compilation on a CPU (unchanged on an accelerator)."""
    options = _CPU_FAST if jax.default_backend() == "cpu" else None
    return jax.jit(fn, compiler_options=options, **kwargs)


def compilation_cache(folder: Path) -> None:
    """Keeps compiled programs in ``folder`` (JAX's persistent cache), so a second run
    of an example skips compilation."""
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def host(tree):
    """Device arrays to numpy (one transfer)."""
    return jax.tree.map(np.asarray, jax.device_get(tree))


# --- plots, rows, command line -------------------------------------------------------


def figure(ncols=2, width=4.6, height=3.4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save(fig, out: Path, name: str) -> str:
    """Writes ``out/name`` (a small PNG) and returns the file name."""
    import matplotlib.pyplot as plt

    for ax in fig.axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / name, dpi=80)
    plt.close(fig)
    return name


def row(claim, measured, with_, without, holds, plot, **numbers):
    """One line of the tour's table. ``holds``: did the lesson's claim show here?"""
    return {"claim": claim, "measured": measured, "with": with_, "without": without,
            "holds": bool(holds), "plot": plot, "numbers": numbers}


def parser(doc: str, images: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--quick", action="store_const", const="quick", dest="size",
                   default="full", help="the tour's short version")
    p.add_argument("--tiny", action="store_const", const="tiny", dest="size",
                   help="a smoke test of a few seconds (numbers not meaningful)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "tour",
                   help="folder for the plot and the rows (runs/tour/)")
    if images:
        p.add_argument("--mnist-dir", type=Path, default=None,
                       help="train on real MNIST from its four IDX files in this folder")
    return p


def main_for(run, name: str, doc: str, images: bool = False, argv=None):
    """The command line of a per-claim script: runs ``run``, prints and saves rows."""
    args = parser(doc, images).parse_args(argv)
    extra = {"mnist_dir": args.mnist_dir} if images else {}
    rows = run(args.size, args.out, args.seed, **extra)
    for r in rows:
        print(f"{r['claim']}: {r['measured']}\n  with: {r['with']}\n  without: "
              f"{r['without']}\n  {'holds' if r['holds'] else 'does NOT hold here'}; "
              f"plot {args.out / r['plot']}")
    (args.out / f"{name}.json").write_text(json.dumps(rows, indent=1, default=float))
    return rows
