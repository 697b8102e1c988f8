"""jt.param_groups: glob patterns over parameter paths, equal to the hand-written partition."""

from __future__ import annotations

import functools

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import FAST_COMPILE
from flax import nnx

import jtricks as jt
from jtricks.param_groups import glob_match, param_groups
from jtricks.transforms.freezing import SetToZero

GROUPS = {
    "**/bias": {"weight_decay": 0.0},
    "**/norm/*": {"weight_decay": 0.0},
    "embed/**": None,
    "head/**": {"learning_rate": 3e-4},
}


def _params() -> dict:
    rng = np.random.default_rng(0)

    def draw(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    block = lambda: {"kernel": draw(4, 4), "bias": draw(4),
                     "norm": {"scale": draw(4), "bias": draw(4)}}
    return {"embed": {"table": draw(6, 4)}, "layers": [block(), block()],
            "head": {"kernel": draw(4, 3), "bias": draw(3)}}


def _labels() -> dict:
    """The labels a user writes by hand for GROUPS (first match wins: head/bias is a bias)."""
    block = {"kernel": "default", "bias": "**/bias",
             "norm": {"scale": "**/norm/*", "bias": "**/bias"}}
    return {"embed": {"table": "embed/**"}, "layers": [block, block],
            "head": {"kernel": "head/**", "bias": "**/bias"}}


def _loss(params):
    leaves = jax.tree.leaves(params)
    return sum(jnp.sum(0.5 * (i + 1) * p**2 + jnp.sin(3 * p)) for i, p in enumerate(leaves))


def test_equals_hand_written_partition_for_50_steps():
    tx = jt.adamw(1e-2, weight_decay=0.5)
    groups = param_groups(tx, GROUPS)
    by_hand = jt.partition({
        "**/bias": jt.hyperparams.set(tx, weight_decay=0.0),
        "**/norm/*": jt.hyperparams.set(tx, weight_decay=0.0),
        "embed/**": SetToZero(),
        "head/**": jt.hyperparams.set(tx, learning_rate=3e-4),
        "default": tx,
    }, _labels())
    params = _params()
    s_groups, s_hand = groups.init(params), by_hand.init(params)
    assert jax.tree.structure(s_groups) == jax.tree.structure(s_hand)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(params):
        def body(carry, _):
            out = []
            for t, (p, s) in zip((groups, by_hand, tx), carry):
                u, s = t.update(jax.grad(_loss)(p), s, p)
                out.append((jt.apply_updates(p, u), s))
            return tuple(out), None

        start = tuple((params, t.init(params)) for t in (groups, by_hand, tx))
        return jax.lax.scan(body, start, length=50)[0]

    (p_g, s_g), (p_h, s_h), (p_plain, _) = run(params)
    chex.assert_trees_all_equal((p_g, s_g), (p_h, s_h))
    np.testing.assert_array_equal(p_g["embed"]["table"], params["embed"]["table"])
    # The default group runs tx as is; the other groups do not.
    np.testing.assert_array_equal(p_g["layers"][1]["kernel"], p_plain["layers"][1]["kernel"])
    for path in (("head", "kernel"), ("head", "bias"), ("layers", 0, "norm", "scale")):
        a, b = p_g, p_plain
        for k in path:
            a, b = a[k], b[k]
        assert not np.allclose(a, b), path
    assert jt.hyperparams.current(groups, s_g)["head/**/2/learning_rate"] == 3e-4
    assert jt.hyperparams.current(groups, s_g)["**/bias/1/weight_decay"] == 0.0


def _update(tx, params):
    return tx.update(params, tx.init(params), params)[0]


def test_jit_with_the_transform_as_argument_compiles_once_for_two_overrides():
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}

    step = jax.jit(chex.assert_max_traces(_update, n=1), compiler_options=FAST_COMPILE)
    slow = step(param_groups(jt.sgd(1.0), {"b": {"learning_rate": 0.1}}), params)
    fast = step(param_groups(jt.sgd(1.0), {"b": {"learning_rate": 0.5}}), params)
    np.testing.assert_allclose(slow["b"], -0.1)
    np.testing.assert_allclose(fast["b"], -0.5)
    np.testing.assert_allclose(fast["w"], -1.0)
    # The overrides are leaves: a stack of two transforms is a learning-rate sweep.
    two = [param_groups(jt.sgd(1.0), {"b": {"learning_rate": lr}}) for lr in (0.1, 0.5)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *two)
    swept = jax.vmap(lambda tx: tx.update(params, tx.init(params), params)[0])(stacked)
    np.testing.assert_allclose(swept["b"][:, 0], [-0.1, -0.5])


@pytest.mark.parametrize("pattern, path, expected", [
    ("**/bias", "bias", True),
    ("**/bias", "layers/3/attn/bias", True),
    ("**/bias", "layers/3/bias_scale", False),
    ("*/kernel", "dense/kernel", True),
    ("*/kernel", "a/dense/kernel", False),
    ("*/kernel", "kernel", False),
    ("embed/**", "embed", True),
    ("embed/**", "embed/table", True),
    ("embed/**", "embed/pos/table", True),
    ("embed/**", "embedding/table", False),
    ("**/norm/*", "blocks/0/norm/scale", True),
    ("**/norm/*", "blocks/0/norm/inner/scale", False),
    ("head/kernel", "head/kernel", True),
    ("head/kernel", "head/kernel2", False),
    ("layers/1/*", "layers/1/w", True),
    ("layers/1/*", "layers/10/w", False),
    ("layers/*/w", "layers/12/w", True),
    ("layer_*/w", "layer_0/w", True),
    ("layer_*/w", "layer/w", False),
    ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/y/b", True),
    ("a/**/b", "a/x/y/c", False),
    ("**", "anything/at/all", True),
    ("w.1", "wx1", False),  # every character but * is literal
])
def test_glob_semantics(pattern, path, expected):
    assert glob_match(pattern, path) is expected


def _rates(tx, params) -> dict:
    """Each leaf's step size under an sgd groups transform, by path name."""
    ones = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(ones, tx.init(params), params)
    return {jt.tree.path_name(p): float(-u.reshape(-1)[0])
            for p, u in jax.tree_util.tree_flatten_with_path(updates)[0]}


def test_paths_of_dicts_lists_linen_nnx_and_equinox():
    tx = lambda groups: param_groups(jt.sgd(1.0), groups)
    rates = _rates(tx({"*/0": {"learning_rate": 0.5}, "1": None}),
                   [[jnp.ones(2), jnp.ones(2)], jnp.ones(2)])
    assert rates == {"0/0": 0.5, "0/1": 1.0, "1": 0.0}
    linen = {"params": {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
                        "LayerNorm_0": {"scale": jnp.ones(3), "bias": jnp.ones(3)}}}
    rates = _rates(tx({"params/LayerNorm_*/**": {"learning_rate": 0.25},
                       "**/bias": {"learning_rate": 0.5}}), linen)
    assert rates == {"params/Dense_0/kernel": 1.0, "params/Dense_0/bias": 0.5,
                     "params/LayerNorm_0/scale": 0.25, "params/LayerNorm_0/bias": 0.25}

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(2, 3, rngs=rngs)
            self.norm = nnx.LayerNorm(3, rngs=rngs)

    state = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
    rates = _rates(tx({"norm/**": None, "**/bias": {"learning_rate": 0.5}}), state)
    assert rates == {"lin/bias": 0.5, "lin/kernel": 1.0, "norm/bias": 0.0,
                     "norm/scale": 0.0}
    mlp = eqx.filter(eqx.nn.MLP(2, 3, 4, 1, key=jax.random.key(0)), eqx.is_array)
    rates = _rates(tx({"layers/1/*": {"learning_rate": 0.5}}), mlp)
    assert rates == {"layers/0/weight": 1.0, "layers/0/bias": 1.0,
                     "layers/1/weight": 0.5, "layers/1/bias": 0.5}


@pytest.mark.parametrize("groups, error, match", [
    ({"": None}, ValueError, "bad pattern '': it is empty"),
    ({"a//b": None}, ValueError, "bad pattern 'a//b': it has an empty segment"),
    ({"/bias": None}, ValueError, "bad pattern '/bias'"),
    ({"layers**": None}, ValueError, r"'\*\*' must be a whole segment"),
    ({3: None}, TypeError, "each pattern must be a string"),
    ({"default": None}, ValueError, "write 'default/\\*\\*'"),
    ({}, TypeError, "groups must be a non-empty dict"),
    ({"**/bias": 0.0}, TypeError, r"must be a dict .* or None"),
    ({"**/bias": {"weight_dec": 0.0}}, ValueError,
     r"set 'weight_dec', but tx has no hyperparameter of that name; the names it has "
     r"are \['b1', 'b2', 'eps', 'eps_root', 'learning_rate', 'weight_decay'\]"),
    ({"**/bias": {"9/b1": 0.0}}, ValueError, "no hyperparameter at that path"),
    ({"**/bias": {"learning_rate": -1.0}}, ValueError, "learning_rate must be >= 0"),
    ({"**/bias": {"weight_decay": float("nan")}}, ValueError,
     "param_groups: weight_decay must be finite"),
])
def test_bad_groups_raise(groups, error, match):
    with pytest.raises(error, match=match):
        param_groups(jt.adamw(1e-3), groups)


def test_override_for_a_hyperparameter_the_tx_lacks_raises():
    with pytest.raises(ValueError, match=r"'weight_decay'.*the names it has are \['b1', "
                       r"'b2', 'eps', 'eps_root', 'learning_rate'\]"):
        param_groups(jt.adam(1e-3), {"**/bias": {"weight_decay": 0.0}})
    with pytest.raises(ValueError, match=r"foreign .* transform"):
        param_groups(optax.adam(1e-3), {"**/bias": {"learning_rate": 0.0}})
    param_groups(optax.adam(1e-3), {"**/bias": None}).init({"bias": jnp.ones(2)})


def test_patterns_that_win_no_parameter_raise_at_init():
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"param_groups.init: pattern 'embed/\*\*' matches "
                       r"no parameter path. The paths are \['b', 'w'\]"):
        param_groups(jt.sgd(1.0), {"embed/**": None}).init(params)
    with pytest.raises(ValueError, match=r"pattern 'b' matches only paths an earlier "
                       r"pattern claims \(first match wins\): \['b'\]"):
        param_groups(jt.sgd(1.0), {"*": None, "b": None}).init(params)
