"""optax.contrib's wrappers and their optimizers against optax 0.2.8: schedule-free,
SAM, complex splitting and DP-SGD; signatures, states, numbers, JAX transforms.

The rows of ``cases_contrib_wrappers.ROWS`` go through the shared driver: optax's
signature and state layout, fp32 parity at every step of 100, optax's state restored
into jtricks continuing with optax's numbers, bf16 kept, one compilation for two
learning rates, ``vmap`` over stacked rates, ``eval_shape`` of ``init``, a donated
step. Three drivers of this file cover what the plain ``update(grads, state, params)``
cannot: SAM's opaque mode (``grad_fn``), complex params, and the DP optimizers (per-
example gradients, noise from an explicit key); each compiles all its rows at once.
"""

from __future__ import annotations

import functools

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cases_adam_variants import lr_schedule
from cases_contrib_wrappers import ROWS
from catalogue import (
    family_tests,
    paths,
    signature_rows,
    state_layout,
)
from conftest import FAST_COMPILE, grad_fn, make_params, noise_sequence

from jtricks.base import apply_updates, chain
from jtricks.optimizers import privacy as dp_opt
from jtricks.optimizers import schedule_free as sf_opt
from jtricks.optimizers.adaptive import adam
from jtricks.optimizers.sgd import sgd
from jtricks.transforms import complex as cplx
from jtricks.transforms import privacy, sam, schedule_free

contrib = optax.contrib
# optax's dpsgd passes its seed on under a name optax itself deprecates.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:optax")

IDS = [name for name, _, _ in ROWS]
# The bf16 runs and the donated step take one row per class of state.
SUBSET = {"schedule_free_adamw_warmup_fp32_z", "sam_sgd_defaults"}
TOL = dict(rtol=1e-5, atol=1e-6)


PAIRS = [(schedule_free.schedule_free, contrib.schedule_free),
         (schedule_free.schedule_free_eval_params, contrib.schedule_free_eval_params),
         (sf_opt.schedule_free_adamw, contrib.schedule_free_adamw),
         (sf_opt.schedule_free_sgd, contrib.schedule_free_sgd),
         (sam.sam, contrib.sam), (sam.normalize, contrib.normalize),
         (cplx.split_real_and_imaginary, contrib.split_real_and_imaginary),
         (privacy.differentially_private_aggregate, contrib.differentially_private_aggregate),
         (dp_opt.dpsgd, contrib.dpsgd)]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_signature_is_optax(ours, theirs):
    a, b = signature_rows(ours, theirs)
    assert a == b


def test_state_classes_are_optax():
    for ours, theirs in [(schedule_free.ScheduleFreeState, contrib.ScheduleFreeState),
                         (sam.SAMState, contrib.SAMState),
                         (cplx.SplitRealAndImaginaryState, contrib.SplitRealAndImaginaryState),
                         (cplx.SplitRealAndImaginaryArrays,
                          contrib._complex_valued.SplitRealAndImaginaryArrays),
                         (privacy.DifferentiallyPrivateAggregateState,
                          contrib.DifferentiallyPrivateAggregateState)]:
        assert ours.__name__ == theirs.__name__ and ours._fields == theirs._fields
    assert sam.NormalizeState() == contrib.NormalizeState() == ()


# --- the table ----------------------------------------------------------------------


LR_FACTORIES = {
    "schedule_free_adamw": lambda lr: sf_opt.schedule_free_adamw(lr, b1=0.8),
    "sam": lambda lr: sam.sam(sgd(lr), chain(sam.normalize(), sgd(0.02))),
    "split_real_and_imaginary": lambda lr: cplx.split_real_and_imaginary(sgd(lr, 0.5)),
}

FAMILY = family_tests(ROWS, SUBSET, LR_FACTORIES)
globals().update(FAMILY)
results = FAMILY["results"]  # the family's cached run, for the tests above too


def _same_sweep(factories, separate, swept):
    for name in factories:
        a, b = separate[0][name], separate[1][name]
        assert not all(np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
        for i, run in enumerate(separate):
            for x, y in zip(jax.tree.leaves(swept[name]), jax.tree.leaves(run[name])):
                np.testing.assert_allclose(x[i], y, rtol=1e-5, atol=1e-5, err_msg=name)


# --- schedule_free_eval_params --------------------------------------------------------

SCHEDULE_FREE_ROWS = [name for name in IDS if name.startswith("schedule_free")]


@pytest.mark.parametrize("name", SCHEDULE_FREE_ROWS)
def test_eval_params_equal_optax_on_either_state(name):
    ours, theirs, state, theirs_state = results("float32")[2][name][:4]
    y, y_theirs = (jax.tree.map(lambda x: x[-1], t) for t in (ours, theirs))
    x = schedule_free.schedule_free_eval_params(state, y)
    for other in (contrib.schedule_free_eval_params(theirs_state, y_theirs),
                  contrib.schedule_free_eval_params(state, y),
                  schedule_free.schedule_free_eval_params(theirs_state, y_theirs)):
        for path, a, b in zip(*paths(x), jax.tree.leaves(other)):
            np.testing.assert_allclose(a, b, **TOL, err_msg=f"{name} at {path}")
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))


def test_eval_params_need_a_schedule_free_state():
    params = make_params(0)
    state = chain(sf_opt.schedule_free_sgd(0.1)).init(params)
    with pytest.raises(ValueError, match=r"schedule_free_eval_params: state must be .*state\[i\]"):
        schedule_free.schedule_free_eval_params(state, params)
    x = schedule_free.schedule_free_eval_params(state[0], params)
    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_zero_learning_rate_keeps_params_as_optax():
    params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    g = {"w": jnp.asarray([0.3, 0.1, -0.2])}
    # The averaging weight is 0 / 0 here: it counts as 0, not NaN, in both libraries.
    ours = schedule_free.schedule_free(sgd(0.0), 0.0)
    theirs = contrib.schedule_free(optax.sgd(0.0), 0.0)
    u, s = ours.update(g, ours.init(params), params)
    v, t = theirs.update(g, theirs.init(params), params)
    for a, b in zip(jax.tree.leaves((u, s)), jax.tree.leaves((v, t))):
        assert np.all(np.isfinite(a))
        np.testing.assert_array_equal(a, b)


# --- SAM in opaque mode -----------------------------------------------------------------

OPAQUE = [
    ("sgd_period2",
     lambda: sam.sam(sgd(0.05), chain(sam.normalize(), sgd(0.02)), opaque_mode=True),
     lambda: contrib.sam(optax.sgd(0.05), optax.chain(contrib.normalize(), optax.sgd(0.02)),
                         opaque_mode=True)),
    ("adam_period3_kept",
     lambda: sam.sam(adam(0.02, b1=0.8), chain(sam.normalize(), adam(0.01)), 3,
                     reset_state=False, opaque_mode=True),
     lambda: contrib.sam(optax.adam(0.02, b1=0.8),
                         optax.chain(contrib.normalize(), optax.adam(0.01)), 3,
                         reset_state=False, opaque_mode=True)),
]
STEPS = 60


def _small_params(seed=0):
    """Three leaves of make_params (a kernel, a bias, a 0-d scale): the local drivers
    compile each update several times, so they run on a smaller tree."""
    return {k: v for k, v in make_params(seed).items() if k in ("dense", "scale")}


def _opaque_step(tx, apply, p, s, n):
    # Every adversarial gradient sees the step's noise, scaled by the step index.
    u, s = tx.update(grad_fn(p, n), s, p,
                     grad_fn=lambda q, i: grad_fn(q, jax.tree.map(lambda e: e * (i + 2), n)))
    return apply(p, u), s


def _scan(step, tx, apply, params, state, noise):
    """Params after each update of ``step`` (stacked) and the final state."""
    def body(carry, n):
        p, s = step(tx, apply, *carry, n)
        return (p, s), p

    (_, state), traj = jax.lax.scan(body, (params, state), noise)
    return traj, state


def _with_restore(rows, step, params, noise):
    """Both libraries' runs of every row over all but the last noise step, then one
    more update of each from optax's final state (jtricks' copy restored from its
    state dict), in one program."""
    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run_all(params, noise):
        first = jax.tree.map(lambda n: n[:-1], noise)
        last = jax.tree.map(lambda n: n[-1], noise)
        out = {}
        for name, ours, theirs in rows:
            a, sa = _scan(step, ours(), apply_updates, params, ours().init(params), first)
            b, sb = _scan(step, theirs(), optax.apply_updates, params, theirs().init(params),
                          first)
            end = jax.tree.map(lambda x: x[-1], b)
            restored = flax.serialization.from_state_dict(
                ours().init(params), flax.serialization.to_state_dict(sb))
            out[name] = (a, b, sa, sb, step(ours(), apply_updates, end, restored, last),
                         step(theirs(), optax.apply_updates, end, sb, last))
        return out

    return run_all(params, noise)


def _numbers(tree):
    """``tree`` with typed PRNG keys as their raw data, so they compare as numbers."""
    def leaf(x):
        return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    return jax.tree.map(leaf, tree)


def _check_rows(rows, out):
    for name, _, _ in rows:
        a, b, sa, sb, (ra, rsa), (rb, rsb) = out[name]
        sa, sb, rsa, rsb = _numbers((sa, sb, rsa, rsb))
        assert state_layout(sa) == state_layout(sb), name
        assert state_layout(rsa) == state_layout(rsb), name
        for path, x, y in zip(*paths(_numbers((a, ra, rsa))),
                              jax.tree.leaves(_numbers((b, rb, rsb)))):
            assert np.all(np.isfinite(np.asarray(x))), f"{name} at {path}"
            np.testing.assert_allclose(x, y, **TOL, err_msg=f"{name} at {path}")
        for x in jax.tree.leaves(a):
            assert not np.allclose(x[-1], x[0]), f"{name} never moved"


def test_sam_opaque_mode_equals_optax():
    params = _small_params()
    out = _with_restore(OPAQUE, _opaque_step, params, noise_sequence(params, STEPS + 1))
    _check_rows(OPAQUE, out)
    assert out["sgd_period2"][2].cache is None


def test_sam_opaque_mode_needs_grad_fn_and_params():
    params = make_params(0)
    tx = OPAQUE[0][1]()
    with pytest.raises(ValueError, match=r"sam\.update: opaque_mode=True needs grad_fn"):
        tx.update(grad_fn(params), tx.init(params), params)
    with pytest.raises(ValueError, match=r"sam\.update: params is None"):
        tx.update(grad_fn(params), tx.init(params))


def test_sam_transparent_mode_returns_to_the_cached_weights():
    # Adversarial step, then the outer step from the cache: with an outer rate of 0
    # the params come back exactly to where they started.
    params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    tx = sam.sam(sgd(0.0), chain(sam.normalize(), sgd(0.1)))
    state = tx.init(params)
    g = {"w": jnp.asarray([3.0, 0.0, 4.0])}
    u, state = tx.update(g, state, params)
    moved = apply_updates(params, u)
    np.testing.assert_allclose(moved["w"], [1.06, -2.0, 0.58], rtol=1e-6)
    u, state = tx.update(g, state, moved)
    np.testing.assert_allclose(apply_updates(moved, u)["w"], params["w"], rtol=1e-6)
    assert int(state.steps_since_sync) == 0


# --- complex params -------------------------------------------------------------------

COMPLEX = [
    ("adam", lambda: cplx.split_real_and_imaginary(adam(0.02, b1=0.8, b2=0.95)),
     lambda: contrib.split_real_and_imaginary(optax.adam(0.02, b1=0.8, b2=0.95))),
    ("sgd_momentum", lambda: cplx.split_real_and_imaginary(sgd(0.05, momentum=0.8)),
     lambda: contrib.split_real_and_imaginary(optax.sgd(0.05, momentum=0.8))),
]


def _complex_loss(p):
    z, w = p["z"], p["w"]
    return (jnp.sum(1.5 * jnp.abs(z - 0.5j) ** 2 + 0.3 * jnp.sin(3 * z.real))
            + jnp.sum(0.5 * w ** 2 + 0.3 * jnp.sin(3 * w)))


def _complex_step(tx, apply, p, s, n):
    # JAX's gradient of a real loss in a complex parameter is the conjugate of the
    # descent direction; conjugated here, as optax's documentation says to.
    g = jax.tree.map(lambda d, e: jnp.conj(d) + 0.5 * e, jax.grad(_complex_loss)(p), n)
    u, s = tx.update(g, s, p)
    return apply(p, u), s


def test_complex_params_equal_optax():
    rng = np.random.default_rng(0)
    params = {"z": jnp.asarray(rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4)),
                               jnp.complex64),
              "w": jnp.asarray(rng.standard_normal(5), jnp.float32)}
    noise = {"z": jnp.asarray(rng.standard_normal((STEPS + 1, 3, 4))
                              + 1j * rng.standard_normal((STEPS + 1, 3, 4)), jnp.complex64),
             "w": jnp.asarray(rng.standard_normal((STEPS + 1, 5)), jnp.float32)}
    out = _with_restore(COMPLEX, _complex_step, params, noise)
    _check_rows(COMPLEX, out)
    traj, state = out["adam"][0], out["adam"][2]
    assert traj["z"].dtype == jnp.complex64
    mu = state.inner_state[0].mu["z"]
    assert isinstance(mu, cplx.SplitRealAndImaginaryArrays) and mu.real.dtype == jnp.float32
    assert not np.allclose(np.asarray(traj["z"][-1]).imag, np.asarray(params["z"]).imag)


# --- DP-SGD: per-example gradients, noise from an explicit key ---------------------------

BATCH = 4


def _dp_rows():
    return [
        ("dpsgd_nesterov_schedule",
         lambda: dp_opt.dpsgd(lr_schedule, 2.0, 0.5, 7, momentum=0.8, nesterov=True),
         lambda: contrib.dpsgd(lr_schedule, 2.0, 0.5, 7, momentum=0.8, nesterov=True)),
        ("aggregate_key_adam",
         lambda: chain(privacy.differentially_private_aggregate(1.5, 0.2, jax.random.key(5)),
                       adam(0.02, b1=0.8)),
         lambda: optax.chain(contrib.differentially_private_aggregate(1.5, 0.2,
                                                                      jax.random.key(5)),
                             optax.adam(0.02, b1=0.8))),
    ]


def _per_example_step(tx, apply, p, s, n):
    u, s = tx.update(jax.vmap(lambda e: grad_fn(p, e))(n), s, p)  # the batch on axis 0
    return apply(p, u), s


def _per_example_noise(params, steps, seed=1):
    flat = noise_sequence(params, steps * BATCH, seed=seed)
    return jax.tree.map(lambda x: x.reshape(steps, BATCH, *x.shape[1:]), flat)


def test_dp_optimizers_equal_optax_for_the_same_key():
    params = _small_params()
    rows = _dp_rows()
    out = _with_restore(rows, _per_example_step, params,
                        _per_example_noise(params, STEPS + 1))
    _check_rows(rows, out)
    key = out["dpsgd_nesterov_schedule"][2][0].rng_key
    assert jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def test_dp_noise_follows_the_key():
    grads = {"w": jnp.ones((BATCH, 3)), "b": jnp.zeros((BATCH,))}
    outs = []
    for key in (0, 0, jax.random.key(1)):
        tx = privacy.differentially_private_aggregate(1.0, 1.0, key)
        outs.append(tx.update(grads, tx.init(grads))[0]["w"])
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.allclose(outs[0], outs[2])
    quiet = privacy.differentially_private_aggregate(1.0, 0.0, key=0)
    u, _ = quiet.update(grads, quiet.init(grads))  # each example clipped to norm 1
    np.testing.assert_allclose(u["w"], np.full(3, 3 ** -0.5), rtol=1e-6)


def test_dpsgd_one_compilation_for_two_rates_vmap_and_donation():
    params = _small_params(3)
    noise = _per_example_noise(params, 6, seed=4)

    def body(tx, params, noise):
        return _scan(_per_example_step, tx, apply_updates, params, tx.init(params), noise)[0]

    chex.clear_trace_counter()
    run = jax.jit(chex.assert_max_traces(body, n=1), compiler_options=FAST_COMPILE)
    separate = [{"dpsgd": run(dp_opt.dpsgd(lr, 1.0, 0.3, 3), params, noise)}
                for lr in (0.02, 0.005)]
    sweep = jax.jit(jax.vmap(lambda lr: {"dpsgd": body(dp_opt.dpsgd(lr, 1.0, 0.3, 3),
                                                       params, noise)}),
                    compiler_options=FAST_COMPILE)
    _same_sweep({"dpsgd": None}, separate, sweep(jnp.asarray([0.02, 0.005])))

    tx = dp_opt.dpsgd(0.02, 1.0, 0.3, 3)

    @functools.partial(jax.jit, donate_argnums=(0, 1), compiler_options=FAST_COMPILE)
    def step(p, s, n):
        u, s = tx.update(jax.vmap(lambda e: grad_fn(p, e))(n), s, p)
        return apply_updates(p, u), s

    p, s = jax.tree.map(jnp.copy, params), tx.init(params)
    for k in range(2):
        p, s = step(p, s, jax.tree.map(lambda x, k=k: x[k], noise))
    for x, traj in zip(jax.tree.leaves(p), jax.tree.leaves(separate[0]["dpsgd"])):
        np.testing.assert_allclose(x, traj[1], rtol=1e-6, atol=1e-7)


LOCAL_ROWS = [*OPAQUE, *COMPLEX, *_dp_rows(),
              ("dpsgd_plain", lambda: dp_opt.dpsgd(0.05, 1.0, 0.3, 3),
               lambda: contrib.dpsgd(0.05, 1.0, 0.3, 3))]


@pytest.mark.parametrize("row", LOCAL_ROWS, ids=[r[0] for r in LOCAL_ROWS])
def test_local_rows_eval_shape_of_init_is_optax_layout(row):
    name, ours, theirs = row
    params = {**make_params(0), "z": jnp.ones((2, 3), jnp.complex64)}
    shapes, real = jax.eval_shape(ours().init, params), ours().init(params)
    assert jax.tree.structure(shapes) == jax.tree.structure(real)
    for s, x in zip(jax.tree.leaves(shapes), jax.tree.leaves(real)):
        assert (s.shape, s.dtype) == (x.shape, x.dtype)
    assert (state_layout(_numbers(real))
            == state_layout(_numbers(theirs().init(params)))), name


def test_dp_needs_per_example_gradients():
    tx = privacy.differentially_private_aggregate(1.0, 1.0, 0)
    grads = {"w": jnp.ones((4, 3)), "b": jnp.ones((5,))}
    with pytest.raises(ValueError, match=r"differentially_private_aggregate\.update: updates "
                                         r"must be per-example"):
        tx.update(grads, tx.init(grads))


# --- bad input ------------------------------------------------------------------------

BAD = [
    (lambda: schedule_free.schedule_free(sgd(0.1), -0.1), "schedule_free: learning_rate"),
    (lambda: schedule_free.schedule_free(sgd(0.1), 0.1, b1=0.0), "schedule_free: b1"),
    (lambda: schedule_free.schedule_free(sgd(0.1), 0.1, b1=1.5), "schedule_free: b1"),
    (lambda: schedule_free.schedule_free(sgd(0.1), 0.1, weight_lr_power=-1.0),
     "schedule_free: weight_lr_power"),
    (lambda: sf_opt.schedule_free_adamw(-1e-3), "schedule_free_adamw: learning_rate"),
    (lambda: sf_opt.schedule_free_adamw(-1e-3, warmup_steps=5),
     "schedule_free_adamw: learning_rate"),
    (lambda: sf_opt.schedule_free_adamw(b1=0.0), "schedule_free_adamw: b1"),
    (lambda: sf_opt.schedule_free_adamw(b2=1.0), "schedule_free_adamw: b2"),
    (lambda: sf_opt.schedule_free_adamw(eps=-1.0), "schedule_free_adamw: eps"),
    (lambda: sf_opt.schedule_free_adamw(weight_decay=-0.1), "schedule_free_adamw: weight_decay"),
    (lambda: sf_opt.schedule_free_adamw(warmup_steps=0), "schedule_free_adamw: warmup_steps"),
    (lambda: sf_opt.schedule_free_adamw(weight_lr_power=-2.0),
     "schedule_free_adamw: weight_lr_power"),
    (lambda: sf_opt.schedule_free_sgd(-1.0), "schedule_free_sgd: learning_rate"),
    (lambda: sf_opt.schedule_free_sgd(b1=2.0), "schedule_free_sgd: b1"),
    (lambda: sf_opt.schedule_free_sgd(weight_decay=-0.1), "schedule_free_sgd: weight_decay"),
    (lambda: sf_opt.schedule_free_sgd(warmup_steps=-3), "schedule_free_sgd: warmup_steps"),
    (lambda: sam.sam(sgd(0.1), sgd(0.1), sync_period=0), "sam: sync_period"),
    (lambda: sam.sam(sgd(0.1), sgd(0.1), sync_period=1.5), "sam: sync_period"),
    (lambda: privacy.differentially_private_aggregate(0.0, 1.0, 0),
     "differentially_private_aggregate: l2_norm_clip"),
    (lambda: privacy.differentially_private_aggregate(float("inf"), 1.0, 0),
     "differentially_private_aggregate: l2_norm_clip"),
    (lambda: privacy.differentially_private_aggregate(1.0, -0.5, 0),
     "differentially_private_aggregate: noise_multiplier"),
    (lambda: privacy.differentially_private_aggregate(1.0, 1.0),
     "differentially_private_aggregate: key is required"),
    (lambda: privacy.differentially_private_aggregate(1.0, 1.0, 0, seed=1),
     "differentially_private_aggregate: give key or seed"),
    (lambda: dp_opt.dpsgd(-0.1, 1.0, 1.0, 0), "dpsgd: learning_rate"),
    (lambda: dp_opt.dpsgd(0.1, -1.0, 1.0, 0), "dpsgd: l2_norm_clip"),
    (lambda: dp_opt.dpsgd(0.1, 1.0, -1.0, 0), "dpsgd: noise_multiplier"),
    (lambda: dp_opt.dpsgd(0.1, 1.0, 1.0, 0, momentum=1.0), "dpsgd: momentum"),
    (lambda: dp_opt.dpsgd(0.1, 1.0, 1.0, 0, nesterov=True), "dpsgd: nesterov"),
]


@pytest.mark.parametrize("make,match", BAD, ids=[m for _, m in BAD])
def test_bad_hyperparameters_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_types_are_refused():
    with pytest.raises(TypeError, match="schedule_free: parameter at"):
        sf_opt.schedule_free_sgd(0.1).init({"w": jnp.arange(3)})
    with pytest.raises(TypeError, match="schedule_free: b1 must be a number"):
        schedule_free.schedule_free(sgd(0.1), 0.1, b1=lr_schedule)
    with pytest.raises(TypeError, match="sam: expected a gradient transformation"):
        sam.sam(0.1, sgd(0.1))
    with pytest.raises(TypeError, match="differentially_private_aggregate: l2_norm_clip must"):
        privacy.differentially_private_aggregate(lr_schedule, 1.0, 0)
    with pytest.raises(ValueError, match=r"schedule_free\.update: params is None"):
        tx = sf_opt.schedule_free_sgd(0.1)
        tx.update({"w": jnp.ones(3)}, tx.init({"w": jnp.ones(3)}))
