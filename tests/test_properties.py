"""Property tests over random parameter trees, for every row of the transform table.

hypothesis draws the trees: dicts, lists and tuples nested up to 3 deep, ``None``
leaves (an empty subtree to JAX), 0-d leaves, empty leaves (a 0 in the shape) and
ranks 0-4 with dims <= 4, in float32, bfloat16, float16 and complex64, with
magnitudes from 1e-6 to 1e3 (or zero). For every row of the table in conftest.py:

(a) parity: a few updates on drawn gradients give optax's updates and params, in
    each real dtype, and in complex64 where optax's twin takes complex numbers;
(b) stability: updates have the params' shapes and dtypes, and the state keeps the
    tree structure, shapes and dtypes ``init`` gave it;
(c) finite in, finite out: finite params and gradients give finite updates, params
    and state (float16, whose range is narrow, separately: finite wherever optax is);

and the complex rows are phase-equivariant (their numbers are right, not only equal
to optax's).

Speed: the steps run eagerly. On arrays this small a dispatch costs microseconds,
but each new (operation, shape, dtype) compiles once. So shapes come from a fixed
pool, every test draws the same examples (one strategy, one seed), and the properties
vary only the dtypes and magnitudes of the same trees: the rows mostly reuse
operations compiled before them, and the table's size costs dispatches, not
compilations.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import CASES
from conftest import SHAPES as TABLE_SHAPES
from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st

import jtricks as jt

ROWS = {name: (jt_factory, optax_factory) for name, jt_factory, optax_factory in CASES}
IDS = list(ROWS)

# Rows whose configuration holds a tree shaped like conftest's make_params (a mask):
# they run on trees of that structure, with drawn leaves (shapes, dtypes, values).
TREE_BOUND = {"add_decayed_weights", "lamb_scheduled_decay", "lars_nesterov_masked"}

# Rows kept out of the complex tests, and why: probed on optax 0.2.8, every other
# row's optax twin accepts complex64 and is phase-equivariant (the test below).
NOT_COMPLEX = {
    "clip": "jnp.clip refuses complex values, in both libraries",
    **dict.fromkeys(["rprop_named", "rprop_defaults", "scale_by_rprop"],
                    "optax's rprop clips (jnp.clip refuses complex values)"),
    **dict.fromkeys(["sm3_named", "scale_by_sm3"], "both libraries refuse complex params"),
    **dict.fromkeys(["yogi_named", "yogi_defaults", "scale_by_yogi"],
                    "optax's yogi is not phase-equivariant (sign(v - g**2))"),
    **dict.fromkeys(["adadelta_named", "adadelta_scheduled", "scale_by_adadelta"],
                    "optax's adadelta is not phase-equivariant (jtricks's is)"),
    **dict.fromkeys(["noisy_sgd_named", "noisy_sgd_schedule", "add_noise"],
                    "the added noise is real"),
    "muon_schatten_rms_mask": "not phase-equivariant, in both libraries",
    "scale_by_lion_smooth": "not phase-equivariant, in both libraries",
    **{name: "a float32 accumulator drops the imaginary part, in both libraries"
       for name in IDS if "fp32" in name},
}
COMPLEX_IDS = [name for name in IDS if name not in NOT_COMPLEX]

# Few examples, always the same ones (see the module docstring), no example database;
# a failure is shrunk but not explained, and the first one found is reported alone (a
# failing Problem's repr rebuilds it). The examples drawn per row shrink as the table
# grows, to bound the file's time (on one core of this machine: the 29 core rows with
# 5 drawn and the 4 edge cases, about a minute; all 123 rows of every family with 2
# and the 4, about two and a half minutes: optax's muon, apply_if_finite and
# conditionally_* twins compile a lax loop or cond at every eager call).
EXAMPLES = max(2, min(5, 150 // len(CASES)))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    report_multiple_bugs=False,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow])
SEED = 20240601


# --- the strategy: random trees of leaf specifications, materialised with NumPy ----------

DTYPES = ("float32", "bfloat16", "float16", "complex64")
ZERO = None  # a magnitude: the leaf is all zeros

# Shapes come from a fixed pool: every rank 0-4, dims up to 4, size-1 dims, and a 0
# in four of them (empty leaves). Eager steps compile each (operation, shape, dtype)
# once, so a pool bounds the compilations however many trees and rows there are.
SHAPES = [(), (1,), (3,), (0,), (4, 2), (1, 3), (3, 0), (2, 3, 4), (1, 1, 2), (0, 2, 1),
          (2, 2, 3, 1), (3, 1, 2, 4), (2, 0, 1, 3)]


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One array: shape, dtype, and log10 of the magnitude of the param and of its
    gradients (``ZERO``: all zeros)."""

    shape: tuple[int, ...]
    dtype: str
    param_log10: float | None = 0.0
    grad_log10: float | None = 0.0


def is_leaf(x):
    return isinstance(x, Leaf)


def mostly(common, rare, odds=3):
    """``common`` ``odds`` times in ``odds + 1``, else ``rare`` (st.one_of's branches are
    not drawn evenly)."""
    return st.sampled_from([common] * odds + [rare]).flatmap(lambda strategy: strategy)


def leaves(dtypes):
    """A :class:`Leaf`, or one time in four ``None`` (an empty subtree)."""
    log10 = mostly(st.floats(-6, 3), st.just(ZERO), odds=5)
    return mostly(st.builds(Leaf, st.sampled_from(SHAPES), dtypes, log10, log10), st.none())


def trees(dtypes, depth=3):
    """A dict, list or tuple of 1-3 children, each a leaf or (while ``depth`` allows) a
    tree: containers nest at most ``depth`` deep."""
    child = leaves(dtypes) if depth == 1 else st.one_of(leaves(dtypes), trees(dtypes, depth - 1))
    keys = st.sampled_from(["a", "b", "kernel", "bias", "w", "z"])
    return st.one_of(
        st.dictionaries(keys, child, min_size=1, max_size=3),
        st.lists(child, min_size=1, max_size=3),
        st.lists(child, min_size=1, max_size=3).map(tuple),
    )


# Values are standard normal draws clipped at +-3, times the leaf's magnitude.
# float16's largest finite value is 65504: a squared gradient (every adaptive
# transform's second moment) overflows for |g| > 256, so no float16 state can hold the
# moments of larger gradients. float16 magnitudes stop at 10**1.5 (|g| <= 95, g**2 <=
# 9e3, and Adagrad's sum of four such squares stays below 65504); the other dtypes go
# up to 1e3.
MAX_LOG10 = {"float16": 1.5}


@dataclasses.dataclass(frozen=True)
class Problem:
    """A tree to draw arrays for, ``steps`` updates, the one dtype of the parity test,
    and the NumPy seed of the values."""

    tree: object
    dtype: str
    steps: int
    seed: int

    def arrays(self, dtype=None, wide=False, instead=None):
        """``(params, [the gradients of each step])``: every leaf in ``dtype`` (default:
        its own dtype, or ``instead[dtype]`` where given), of the leaf's magnitudes if
        ``wide`` (else of magnitude 1)."""
        rng = np.random.default_rng(self.seed)
        instead = instead or {}

        def draw(leaf, log10):
            kind = dtype or instead.get(leaf.dtype, leaf.dtype)
            x = np.clip(rng.standard_normal(leaf.shape), -3, 3)
            if kind == "complex64":
                x = x + 1j * np.clip(rng.standard_normal(leaf.shape), -3, 3)
            if wide:
                x = 0.0 * x if log10 is ZERO else 10.0 ** min(log10, MAX_LOG10.get(kind, 3)) * x
            wider = np.complex64 if kind == "complex64" else np.float32
            return jnp.asarray(np.asarray(x, wider).astype(kind))  # NumPy casts: no compiling

        params = jax.tree.map(lambda leaf: draw(leaf, leaf.param_log10), self.tree,
                              is_leaf=is_leaf)
        grads = [jax.tree.map(lambda leaf: draw(leaf, leaf.grad_log10), self.tree,
                              is_leaf=is_leaf) for _ in range(self.steps)]
        return params, grads

    def on_table_tree(self):
        """The same problem on make_params' tree structure, its leaves taken in turn
        from this tree's."""
        drawn = jax.tree.leaves(self.tree, is_leaf=is_leaf) or [Leaf((), self.dtype)]
        slots, treedef = jax.tree.flatten(TABLE_SHAPES, is_leaf=lambda s: isinstance(s, tuple))
        tree = jax.tree.unflatten(treedef, [drawn[i % len(drawn)] for i in range(len(slots))])
        return dataclasses.replace(self, tree=tree)


# Most leaves of a tree share the dtype its parity test runs in: the mixed-dtype
# properties then mostly reuse the operations the parity test compiled.
PROBLEMS = st.sampled_from(DTYPES[:3]).flatmap(lambda dtype: st.builds(
    Problem, trees(mostly(st.just(dtype), st.sampled_from(DTYPES))), st.just(dtype),
    st.just(3), st.integers(0, 2**32 - 1)))

# Tried first for every row: roots the strategy does not draw (a bare array, a tree
# with no leaf, only None), and one tree with every hard case at once (zeros, the
# smallest and largest magnitudes, an empty, a 0-d and a 4-d leaf, a None).
EDGE_CASES = [
    Problem(Leaf((2, 3), "float32"), "float32", 3, 0),
    Problem({}, "float32", 3, 0),
    Problem([None, (None,)], "bfloat16", 3, 0),
    Problem({"zero": Leaf((3,), "float32", ZERO, ZERO), "tiny": Leaf((4, 2), "bfloat16", -6, -6),
             "huge": (Leaf((1, 3), "float16", 3, 3), Leaf((0, 2, 1), "float32", 3, 3)),
             "kernel": [Leaf((3, 1, 2, 4), "complex64", 0, -3), Leaf((), "float32", -1, ZERO)],
             "none": None},
            "float32", 4, 1),
]


def for_every_row(ids):
    """A property of ``(name, problem)`` over ``EDGE_CASES`` and ``PROBLEMS``, run for
    each row in ``ids`` (the tree-bound rows get the problem on the table's tree)."""
    def decorate(test):
        def property_of_row(name, problem):
            test(name, problem.on_table_tree() if name in TREE_BOUND else problem)

        property_of_row.__name__, property_of_row.__doc__ = test.__name__, test.__doc__
        wrapped = given(problem=PROBLEMS)(property_of_row)
        for problem in EDGE_CASES:
            wrapped = example(problem=problem)(wrapped)
        return pytest.mark.parametrize("name", ids)(seed(SEED)(PROPERTY(wrapped)))
    return decorate


# --- running a transform ---------------------------------------------------------------

def transforms(name):
    """The row's (jtricks, optax) transforms."""
    return tuple(factory() for factory in ROWS[name])


def run(tx, apply, params, grads):
    """The initial state, and the updates, params and state after each step."""
    state = init = tx.init(params)
    out = []
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = apply(params, updates)
        out.append((updates, params, state))
    return init, out


# Half precision: the two libraries round in different places (jtricks computes norms,
# bias corrections and scale factors in fp32 and rounds once; optax rounds after most
# operations), so their numbers differ by a few roundings of the numbers that went into
# them. Those are of the size of the leaf's values over the whole run, not of the
# element compared (a momentum that cancels to near zero, a centred variance v - m**2),
# so each leaf is judged relative to its largest value over all steps: to HALF_ULPS
# units u = 2**-8 (bfloat16) or 2**-11 (float16). Measured on 40 trees per row and
# dtype: at most about 4 u; 8 u leaves room for other trees without hiding a wrong
# formula (a wrong bias correction or eps is off by far more than 8 u).
UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11}
HALF_ULPS = 8


def trajectory_of(trees):
    """Trees of the same structure, one per step -> one tree of NumPy arrays with a
    leading step axis."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def assert_close_to_optax(ours, theirs, dtype, what):
    """Steps of ours and of optax's, compared where optax's values are finite (where
    they are not, property (c) judges jtricks alone): float32 and complex64 to rtol
    1e-5 / atol 1e-6, half precision as above."""
    ours, theirs = trajectory_of(ours), trajectory_of(theirs)
    finite = jax.tree.map(np.isfinite, theirs)
    ours, theirs = (jax.tree.map(lambda x, ok: np.where(ok, x, 0), tree, finite)
                    for tree in (ours, theirs))
    what = f"{what} (the first axis counts the steps)"
    if dtype not in UNIT_ROUNDOFF:
        chex.assert_trees_all_close(ours, theirs, rtol=1e-5, atol=1e-6, custom_message=what)
        return

    def relative(x, ref):  # to ref's largest value over all steps
        x, ref = np.asarray(x, np.float32), np.asarray(ref, np.float32)
        return x / max(float(np.max(np.abs(ref), initial=0.0)), 1e-30)

    tol = HALF_ULPS * UNIT_ROUNDOFF[dtype]
    chex.assert_trees_all_close(jax.tree.map(relative, ours, theirs),
                                jax.tree.map(relative, theirs, theirs),
                                rtol=tol, atol=tol, custom_message=what)


def no_further_from_float32(name, ours, theirs, theirs_f32, dtype, what):
    """Half precision where jtricks rounds otherwise than optax (its adaptive moments
    are computed in float32): jtricks must be no further from optax's float32 run on
    the same (upcast) numbers than optax in half precision is, to the half tolerance."""
    ours, theirs, exact = (trajectory_of(t) for t in (ours, theirs, theirs_f32))
    tol = HALF_ULPS * UNIT_ROUNDOFF[dtype]
    for a, b, r in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), jax.tree.leaves(exact)):
        a, b, r = (np.asarray(x, np.float32) for x in (a, b, r))
        ok = np.isfinite(b) & np.isfinite(r)
        scale = max(float(np.max(np.abs(r[ok]), initial=0.0)), 1e-30)
        ours_err = float(np.max(np.abs(a - r)[ok], initial=0.0)) / scale
        optax_err = float(np.max(np.abs(b - r)[ok], initial=0.0)) / scale
        assert ours_err <= optax_err + tol, f"{name} {what}: {ours_err:.3g} vs {optax_err:.3g}"


def check_parity(name, problem, dtype):
    params, grads = problem.arrays(dtype)
    ours_tx, theirs_tx = transforms(name)
    _, ours = run(ours_tx, jt.apply_updates, params, grads)
    _, theirs = run(theirs_tx, optax.apply_updates, params, grads)
    if dtype in UNIT_ROUNDOFF:
        try:
            _half_parity(name, ours, theirs, params, dtype)
        except AssertionError:
            up = functools.partial(jax.tree.map, lambda x: jnp.asarray(x, jnp.float32))
            _, exact = run(transforms(name)[1], optax.apply_updates, up(params), up(grads))
            for k, what in ((0, "updates"), (1, "params")):
                no_further_from_float32(name, [o[k] for o in ours], [t[k] for t in theirs],
                                        [e[k] for e in exact], dtype, what)
        return
    _half_parity(name, ours, theirs, params, dtype)


def _half_parity(name, ours, theirs, params, dtype):
    for (u, p, _), (u_ref, p_ref, _) in zip(ours, theirs):
        chex.assert_trees_all_equal_shapes_and_dtypes(u, u_ref)
        chex.assert_trees_all_equal_shapes_and_dtypes(p, p_ref)
    # Where optax overflows, its later steps compute with infs and NaNs: compare up to
    # its first non-finite step.
    finite = [all(np.all(np.isfinite(x)) for x in jax.tree.leaves((u, p))) for u, p, _ in theirs]
    steps = finite.index(False) + 1 if False in finite else len(theirs)
    ours, theirs = ours[:steps], theirs[:steps]
    assert_close_to_optax([u for u, _, _ in ours], [u for u, _, _ in theirs], dtype,
                          f"{name} {dtype}: updates")
    # The params' trajectory starts at the initial params: p + u rounds on their scale.
    assert_close_to_optax([params] + [p for _, p, _ in ours],
                          [params] + [p for _, p, _ in theirs], dtype, f"{name} {dtype}: params")


def real_only(name):
    """Dtypes drawn instead of those a row does not take."""
    return {"complex64": "float32"} if name in NOT_COMPLEX else {}


def numbers(state):
    """The state with any PRNG key (the noise transforms keep one) as its integers."""
    is_key = lambda x: jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, state)


def check_finite(name, params, grads):
    chex.assert_tree_all_finite((params, grads))
    init, out = run(transforms(name)[0], jt.apply_updates, params, grads)
    chex.assert_tree_all_finite(numbers(init), custom_message=f"{name}: init")
    for k, (updates, new_params, state) in enumerate(out):
        chex.assert_tree_all_finite(updates, custom_message=f"{name}: updates of step {k}")
        chex.assert_tree_all_finite(numbers(state), custom_message=f"{name}: state after step {k}")
        chex.assert_tree_all_finite(new_params, custom_message=f"{name}: params after step {k}")


# --- the properties --------------------------------------------------------------------

@for_every_row(IDS)
def test_updates_and_params_equal_optax(name, problem):
    check_parity(name, problem, problem.dtype)


@for_every_row(COMPLEX_IDS)
def test_complex_updates_and_params_equal_optax(name, problem):
    check_parity(name, problem, "complex64")


@for_every_row(IDS)
def test_updates_and_state_keep_shapes_dtypes_and_structure(name, problem):
    """Updates in the params' dtypes, except that a row keeping float32 state (named
    ``fp32``, as in test_parity_optax.py) may promote them to float32, as optax does."""
    params, grads = problem.arrays(instead=real_only(name))
    init, out = run(transforms(name)[0], jt.apply_updates, params, grads)
    for updates, new_params, state in out:
        chex.assert_trees_all_equal_structs(updates, params)
        chex.assert_trees_all_equal_shapes(updates, params)
        if "fp32" in name:
            chex.assert_trees_all_equal_comparator(
                lambda u, p: u.dtype in (p.dtype, jnp.promote_types(p.dtype, jnp.float32)),
                lambda u, p: f"update {u.dtype} for a {p.dtype} param", updates, params)
        else:
            chex.assert_trees_all_equal_dtypes(updates, params)
        chex.assert_trees_all_equal_shapes_and_dtypes(new_params, params)
        chex.assert_trees_all_equal_structs(state, init)
        chex.assert_trees_all_equal_shapes_and_dtypes(state, init)


@for_every_row(IDS)
def test_finite_inputs_give_finite_updates_and_state(name, problem):
    check_finite(name, *problem.arrays(wide=True, instead={"float16": "bfloat16",
                                                           **real_only(name)}))


@for_every_row(IDS)
def test_float16_finite_inputs_give_finite_updates_where_optax_does(name, problem):
    """float16 cannot hold every constant: Adam's default eps=1e-8 rounds to 0 there,
    so a zero gradient gives 0/0 in both libraries (and rmsprop's 1/(0 + 1e-6)
    overflows). jtricks computes like optax in half precision, so the property is:
    no non-finite update, parameter or state where optax's is finite."""
    params, grads = problem.arrays("float16", wide=True)
    chex.assert_tree_all_finite((params, grads))
    ours_tx, theirs_tx = transforms(name)
    _, ours = run(ours_tx, jt.apply_updates, params, grads)
    _, theirs = run(theirs_tx, optax.apply_updates, params, grads)
    for k, ((u, p, _), (u_ref, p_ref, _)) in enumerate(zip(ours, theirs)):
        for a, b in zip(jax.tree.leaves((u, p)), jax.tree.leaves((u_ref, p_ref))):
            bad = ~np.isfinite(np.asarray(a, np.float32)) & np.isfinite(
                np.asarray(b, np.float32))
            assert not bad.any(), f"{name}: non-finite where optax is finite, step {k}"


@for_every_row(COMPLEX_IDS)
def test_complex_updates_are_phase_equivariant(name, problem):
    """Every complex row acts on |g|, |p|, norms and linear combinations of a leaf's
    g and p; so turning the params and every gradient of each leaf by a fixed phase
    of the leaf's own turns its updates by the same phase. Squaring g where |g|**2 is
    meant fails this. (optax's twins pass it: NOT_COMPLEX lists those that do not,
    which are no oracle for the complex parity test.)"""
    params, grads = problem.arrays("float32")
    rng = np.random.default_rng(problem.seed + 1)
    phase = jax.tree.map(lambda p: np.complex64(np.exp(2j * np.pi * rng.random())), params)
    turn = lambda tree: jax.tree.map(lambda x, z: z * x, tree, phase)
    tx = transforms(name)[0]
    _, real = run(tx, jt.apply_updates, params, grads)
    _, turned = run(tx, jt.apply_updates, turn(params), [turn(g) for g in grads])
    chex.assert_trees_all_close(trajectory_of([u for u, _, _ in turned]),
                                trajectory_of([turn(u) for u, _, _ in real]),
                                rtol=1e-5, atol=1e-6,
                                custom_message=f"{name}: updates (the first axis counts the steps)")
