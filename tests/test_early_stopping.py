"""EarlyStopping: stops at the right epoch on scripted sequences, inside jit and scan."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtricks.train import EarlyStopping


def reference(values, patience, min_delta, mode):
    """The rule written plainly: returns (stop epoch or None, best epoch, best value)."""
    best, best_epoch, wait = (math.inf if mode == "min" else -math.inf), -1, 0
    for epoch, v in enumerate(values):
        better = v < best - min_delta if mode == "min" else v > best + min_delta
        if better:
            best, best_epoch, wait = v, epoch, 0
        else:
            wait += 1
        if wait >= patience:
            return epoch, best_epoch, best
    return None, best_epoch, best


CASES = [
    # mode, patience, min_delta, values
    ("min", 2, 0.0, [3.0, 2.0, 2.5, 2.4, 1.0, 0.5]),             # stops at epoch 3
    ("min", 3, 0.0, [3.0, 2.0, 2.5, 2.4, 1.0, 1.1, 1.2, 1.3]),   # recovers, stops at 7
    ("min", 2, 0.5, [3.0, 2.7, 2.6, 2.0, 1.8, 1.7]),             # small gains do not count
    ("min", 1, 0.0, [1.0, 1.0, 0.0]),                            # equal is no improvement
    ("min", 2, 0.0, [1.0, float("nan"), float("nan"), 0.0]),     # NaN never improves
    ("min", 0, 0.0, [1.0, 0.5, 0.7]),                            # patience 0 stops at once
    ("min", 4, 0.0, [5.0, 4.0, 3.0, 2.0, 1.0]),                  # never stops
    ("max", 2, 0.0, [0.1, 0.5, 0.4, 0.45, 0.9]),                 # stops at epoch 3
    ("max", 2, 0.05, [0.1, 0.5, 0.52, 0.54, 0.6, 0.61, 0.62]),   # min_delta in max mode
    ("max", 3, 0.0, [float("nan"), 0.2, 0.1, 0.3, 0.3, 0.2, 0.25]),
]


def run_scan(es, values, snapshots):
    """All epochs in one compiled scan; returns the per-epoch states."""

    @jax.jit
    def go(es, values, snapshots):
        def body(s, inp):
            v, snap = inp
            s = es.update(s, v, snap)
            return s, s

        return jax.lax.scan(body, es.init(jnp.zeros(2)), (values, snapshots))[1]

    return go(es, values, snapshots)


@pytest.mark.parametrize("mode,patience,min_delta,values", CASES)
def test_stops_at_the_right_epoch_inside_jit(mode, patience, min_delta, values):
    es = EarlyStopping(patience, min_delta, mode)
    snapshots = jnp.stack([jnp.full(2, float(i)) for i in range(len(values))])
    states = run_scan(es, jnp.asarray(values, jnp.float32), snapshots)
    stop_at, best_epoch, best = reference(values, patience, min_delta, mode)
    stops = np.asarray(states.stop)
    if stop_at is None:
        assert not stops.any()
    else:
        assert stops.argmax() == stop_at and stops[stop_at:].all()
    last = stop_at if stop_at is not None else len(values) - 1
    assert int(states.best_epoch[-1]) == best_epoch
    np.testing.assert_allclose(states.best[-1], best)
    # The snapshot kept is the one passed at the best epoch (the fallback before any).
    np.testing.assert_array_equal(states.best_snapshot[-1], jnp.full(2, max(best_epoch, 0.0)))
    # Once stopped the state is frozen: the epoch counter stops at the stopping epoch.
    assert int(states.epoch[-1]) == last + 1


def test_updates_in_python_loop_match_scan():
    values = [3.0, 2.0, 2.5, 2.4, 1.0]
    es = EarlyStopping(patience=2, restore_best=False)
    s = es.init()
    update = jax.jit(es.update)
    for v in values:
        s = update(s, v)
        if s.stop:
            break
    assert v == 2.4 and int(s.best_epoch) == 1 and s.best_snapshot is None


def test_patience_is_data_so_a_sweep_is_one_vmap():
    values = jnp.asarray([3.0, 2.0, 2.5, 2.4, 2.3, 2.6, 2.7], jnp.float32)

    def stop_epoch(patience):
        es = EarlyStopping(patience, restore_best=False)

        def body(s, v):
            s = es.update(s, v)
            return s, s.stop

        stops = jax.lax.scan(body, es.init(), values)[1]
        return jnp.where(stops.any(), jnp.argmax(stops), -1)

    got = jax.vmap(stop_epoch)(jnp.arange(1, 5))
    want = [reference(list(map(float, values)), p, 0.0, "min")[0] for p in range(1, 5)]
    assert got.tolist() == [-1 if w is None else w for w in want]


@pytest.mark.parametrize("kwargs,error,match", [
    ({"patience": 2, "mode": "minimum"}, ValueError, r"mode must be 'min'.*got 'minimum'"),
    ({"patience": -1}, ValueError, r"patience must be an integer >= 0, got -1"),
    ({"patience": 2.5}, ValueError, r"patience must be an integer >= 0, got 2.5"),
    ({"patience": 2, "min_delta": -0.1}, ValueError, r"min_delta must be >= 0, got -0.1"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        EarlyStopping(**kwargs)


def test_restore_best_needs_a_snapshot_and_value_must_be_scalar():
    es = EarlyStopping(2)
    s = es.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="restore_best=True needs the snapshot"):
        es.update(s, 1.0)
    with pytest.raises(ValueError, match=r"value must be a scalar, got shape \(3,\)"):
        es.update(s, jnp.ones(3), jnp.zeros(2))
