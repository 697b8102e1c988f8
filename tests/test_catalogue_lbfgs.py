"""L-BFGS and the line searches against optax 0.2.8: signatures, states, numbers.

The shared driver (tests/catalogue.py) passes no objective, so this file drives the
rows of ``cases_lbfgs.ROWS`` itself, as optax's documentation uses them::

    value, grad = value_and_grad_from_state(f)(params, state=state, **args)
    updates, state = tx.update(grad, state, params, value=value, grad=grad,
                               value_fn=f, **args)
    params = apply_updates(params, updates)

Every row runs in both libraries inside ONE compiled program; then the checks:
optax's signatures and state layouts, fp32 parity at every one of 40 steps, optax's
state restored into jtricks continuing with optax's numbers, one compilation for two
learning rates, ``eval_shape`` of ``init``, and bad arguments refused by name.
"""

from __future__ import annotations

import functools
import inspect

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cases_lbfgs import FRESH_GRAD, ROWS, objective
from catalogue import paths, signature_rows, state_layout
from conftest import FAST_COMPILE, make_params

from jtricks.base import apply_updates, chain
from jtricks.optimizers.lbfgs import lbfgs, value_and_grad_from_state
from jtricks.optimizers.sgd import sgd
from jtricks.transforms import lbfgs as lbfgs_blocks
from jtricks.transforms import linesearch_backtracking as backtracking
from jtricks.transforms import linesearch_zoom as zoom

STEPS = 40
COUPLING = 10.0
IDS = [name for name, _, _ in ROWS]


def _loop(tx, apply, from_state, params, fresh, coupling, state=None, steps=STEPS):
    """``steps`` updates in optax's usage pattern; the params after each, the objective
    before each, and the final state."""
    value_and_grad = jax.value_and_grad(objective)

    def body(carry, _):
        p, s = carry
        if fresh:
            value, grad = value_and_grad(p, coupling)
        else:
            value, grad = from_state(objective)(p, state=s, coupling=coupling)
        u, s = tx.update(grad, s, p, value=value, grad=grad, value_fn=objective,
                         coupling=coupling)
        p = apply(p, u)
        return (p, s), (p, value)

    state = tx.init(params) if state is None else state
    (_, state), (traj, values) = jax.lax.scan(body, (params, state), None, length=steps)
    return traj, values, state


def _restored(tx, params, theirs_state):
    """optax's state as a checkpoint: its flax state dict read into jtricks' state."""
    return flax.serialization.from_state_dict(tx.init(params),
                                              flax.serialization.to_state_dict(theirs_state))


def _halves(ours, theirs, params, fresh, coupling):
    """Both libraries for STEPS updates, as two halves of one scan (each library's
    update compiles once): the first half from each library's own ``init``; the second
    continues optax from where it was, and jtricks from optax's params and from
    optax's state restored through ``flax.serialization``. Returns each library's
    (trajectory, values) and its state after each half."""
    half = STEPS // 2

    def chunk(carry, _):
        (pa, sa), (pb, sb) = carry
        ta, va, sa = _loop(ours, apply_updates, value_and_grad_from_state, pa, fresh,
                           coupling, sa, half)
        tb, vb, sb = _loop(theirs, optax.apply_updates, optax.value_and_grad_from_state,
                           pb, fresh, coupling, sb, half)
        pb = jax.tree.map(lambda x: x[-1], tb)
        return ((pb, _restored(ours, params, sb)), (pb, sb)), ((ta, va), (tb, vb), sa, sb)

    start = ((params, ours.init(params)), (params, theirs.init(params)))
    _, (a, b, sa, sb) = jax.lax.scan(chunk, start, None, length=2)
    flat = functools.partial(jax.tree.map, lambda x: x.reshape(STEPS, *x.shape[2:]))
    return flat(a), flat(b), sa, sb


def _half(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


@functools.cache
def results():
    params = make_params(0)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run_all(params, coupling):
        out = {name: _halves(ours(), theirs(), params, name in FRESH_GRAD, coupling)
               for name, ours, theirs in ROWS}
        # The objective at jtricks' final params (what its line search stored).
        final = jax.tree.map(lambda x: x[-1], out["lbfgs_defaults"][0][0])
        return out, objective(final, coupling)

    return params, run_all(params, jnp.float32(COUPLING))


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_fp32_equals_optax_at_every_step(row):
    """Steps 1-20 from jtricks' own init; steps 21-40 from optax's state restored."""
    name = row[0]
    (traj, values), (traj_o, values_o), states, states_o = results()[1][0][name]
    assert float(values[-1]) < 0.5 * float(values[0]), f"{name}: the objective barely fell"
    np.testing.assert_allclose(values, values_o, rtol=1e-5, atol=1e-6, err_msg=name)
    for path, a, b in zip(*paths(traj), jax.tree.leaves(traj_o)):
        assert a.dtype == jnp.float32 and a.shape[0] == STEPS
        assert not np.allclose(a[-1], a[STEPS // 2]), f"{name}: {path} stopped moving"
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{name} at {path}")
    for i in range(2):
        state, state_o = _half(states, i), _half(states_o, i)
        assert state_layout(state) == state_layout(state_o)
        for path, a, b in zip(*paths(state), jax.tree.leaves(state_o)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} {path} after half {i + 1}")


def test_the_line_search_stores_what_it_found():
    out, final_value = results()[1]
    state = _half(out["lbfgs_defaults"][2], 1)[2]
    assert type(state).__name__ == "ScaleByZoomLinesearchState"
    assert state.info._fields == optax.ZoomLinesearchInfo._fields
    assert int(state.info.num_linesearch_steps) >= 1
    # The stored value is the objective at the final params, for the next step to reuse.
    np.testing.assert_allclose(state.value, final_value, rtol=1e-6)


PAIRS = [
    (lbfgs_blocks.scale_by_lbfgs, optax.scale_by_lbfgs),
    (zoom.scale_by_zoom_linesearch, optax.scale_by_zoom_linesearch),
    (backtracking.scale_by_backtracking_linesearch, optax.scale_by_backtracking_linesearch),
    (value_and_grad_from_state, optax.value_and_grad_from_state),
]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_signature_is_optax(ours, theirs):
    a, b = signature_rows(ours, theirs)
    assert a == b


def test_lbfgs_signature_and_default_linesearch_are_optax():
    a, b = signature_rows(lbfgs, optax.lbfgs)
    assert a[:-1] == b[:-1] and a[-1][:2] == b[-1][:2] == ("linesearch", a[-1][1])
    default = inspect.signature(lbfgs).parameters["linesearch"].default
    assert default == zoom.scale_by_zoom_linesearch(20, initial_guess_strategy="one")


def _update_signature(update):
    return [(p.name, p.kind) for p in inspect.signature(update).parameters.values()]


def test_update_takes_optax_extra_arguments():
    params = make_params(0)
    for ours, theirs in [(zoom.scale_by_zoom_linesearch(5), optax.scale_by_zoom_linesearch(5)),
                         (backtracking.scale_by_backtracking_linesearch(5),
                          optax.scale_by_backtracking_linesearch(5))]:
        assert _update_signature(ours.update) == _update_signature(theirs.update)
        assert state_layout(ours.init(params)) == state_layout(theirs.init(params))


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_state_layout_is_optax_at_init_and_eval_shape(row):
    name, ours, theirs = row
    for dtype in (jnp.float32, jnp.bfloat16):
        params = make_params(0, dtype)
        shapes = jax.eval_shape(ours().init, params)
        assert state_layout(shapes) == state_layout(jax.eval_shape(theirs().init, params))
    real = ours().init(make_params(0))
    assert jax.tree.structure(shapes) == jax.tree.structure(real)
    buffers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(real)]
    assert len(set(buffers)) == len(buffers), f"{name}: two state fields share a buffer"


def test_optax_docstring_example_runs_unchanged():
    """optax.lbfgs's docstring example with jt in place of optax, and its printed
    numbers."""
    def f(x):
        return jnp.sum(x ** 2)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def two_steps():
        solver = lbfgs()
        params = jnp.array([1., 2., 3.])
        opt_state, values = solver.init(params), []
        value_and_grad = value_and_grad_from_state(f)
        for _ in range(2):
            value, grad = value_and_grad(params, state=opt_state)
            updates, opt_state = solver.update(grad, opt_state, params, value=value,
                                               grad=grad, value_fn=f)
            params = apply_updates(params, updates)
            values.append(f(params))
        return values

    first, second = two_steps()
    # The docstring prints 7.52E+00 then 7.46E-14; the second is rounding noise around
    # the minimum (its digits change with compilation, in optax too).
    assert f"{float(first):.2E}" == "7.52E+00" and float(second) < 1e-12


def test_one_compilation_for_two_learning_rates():
    params = {"w": jnp.asarray([0.5, -1.0, 2.0]), "b": jnp.asarray(1.5)}
    chex.clear_trace_counter()

    def body(tx, params, coupling):
        return _loop(tx, apply_updates, value_and_grad_from_state, params, False, coupling,
                     steps=4)[0]

    run = jax.jit(chex.assert_max_traces(body, n=1), compiler_options=FAST_COMPILE)
    rates = (0.5, 0.1)
    a, b = (run(lbfgs(lr, memory_size=3), params, jnp.float32(COUPLING)) for lr in rates)
    assert not all(np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    # vmap over the stacked rates equals the separate runs.
    swept = jax.jit(jax.vmap(lambda lr: body(lbfgs(lr, memory_size=3), params,
                                             jnp.float32(COUPLING))))(jnp.asarray(rates))
    for i, run_i in enumerate((a, b)):
        for x, y in zip(jax.tree.leaves(swept), jax.tree.leaves(run_i)):
            np.testing.assert_allclose(x[i], y, rtol=1e-5, atol=1e-6)


def test_a_donated_step_runs_twice_and_equals_the_plain_step():
    params = {"w": jnp.asarray([0.5, -1.0, 2.0]), "b": jnp.asarray(1.5)}
    tx = lbfgs(0.5, memory_size=3)

    def step(p, s):
        value, grad = value_and_grad_from_state(objective)(p, state=s, coupling=COUPLING)
        u, s = tx.update(grad, s, p, value=value, grad=grad, value_fn=objective,
                         coupling=COUPLING)
        return apply_updates(p, u), s

    donated = jax.jit(step, donate_argnums=(0, 1))
    plain = jax.jit(step)
    p, s = jax.tree.map(jnp.copy, params), tx.init(params)
    buffers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(s)]
    assert len(set(buffers)) == len(buffers), "two state fields share a buffer"
    q, r = params, tx.init(params)
    for _ in range(2):
        p, s = donated(p, s)
        q, r = plain(q, r)
    for x, y in zip(jax.tree.leaves((p, s)), jax.tree.leaves((q, r))):
        np.testing.assert_array_equal(x, y)


def test_extra_arguments_are_required_and_must_be_consumed():
    """Refused while tracing, before anything is computed (hence eval_shape)."""
    params = make_params(0)
    grad = params
    ls = zoom.scale_by_zoom_linesearch(5)

    def update(tx, **kwargs):
        jax.eval_shape(lambda: tx.update(grad, tx.init(params), params, **kwargs))

    with pytest.raises(TypeError, match=r"scale_by_zoom_linesearch\.update: value_fn"):
        update(ls, value=1.0, grad=grad)
    with pytest.raises(TypeError, match=r"scale_by_zoom_linesearch\.update: .*\['batch'\]"):
        update(ls, value=1.0, grad=grad, value_fn=objective, coupling=COUPLING, batch=1.0)
    with pytest.raises(TypeError, match=r"scale_by_backtracking_linesearch\.update: grad"):
        update(backtracking.scale_by_backtracking_linesearch(5), value=1.0,
               value_fn=objective)
    # Through lbfgs' chain, as optax's usage passes them.
    with pytest.raises(TypeError, match=r"scale_by_zoom_linesearch\.update: value "):
        update(lbfgs(), grad=grad, value_fn=objective)


def test_value_and_grad_from_state_needs_a_stored_pair():
    params = make_params(0)
    no_grad = chain(sgd(1.0), backtracking.scale_by_backtracking_linesearch(5))
    with pytest.raises(ValueError, match=r"value_and_grad_from_state: .* no grad"):
        value_and_grad_from_state(objective)(params, COUPLING, state=no_grad.init(params))
    with pytest.raises(ValueError, match=r"value_and_grad_from_state: .* no value"):
        value_and_grad_from_state(objective)(params, COUPLING, state=sgd(0.1).init(params))
    two = chain(lbfgs(), zoom.scale_by_zoom_linesearch(3))
    with pytest.raises(ValueError, match="several entries named 'value'"):
        value_and_grad_from_state(objective)(params, COUPLING, state=two.init(params))


BAD = [
    (lambda: lbfgs(-0.1), ValueError, "lbfgs: learning_rate"),
    (lambda: lbfgs(memory_size=0), ValueError, "lbfgs: memory_size"),
    (lambda: lbfgs(memory_size=2.5), ValueError, "lbfgs: memory_size"),
    (lambda: lbfgs(linesearch="zoom"), TypeError, "chain: expected a gradient"),
    (lambda: lbfgs_blocks.scale_by_lbfgs(0), ValueError, "scale_by_lbfgs: memory_size"),
    (lambda: zoom.scale_by_zoom_linesearch(0), ValueError,
     "scale_by_zoom_linesearch: max_linesearch_steps"),
    (lambda: zoom.scale_by_zoom_linesearch(5, max_learning_rate=0.0), ValueError,
     "scale_by_zoom_linesearch: max_learning_rate"),
    (lambda: zoom.scale_by_zoom_linesearch(5, tol=-1.0), ValueError,
     "scale_by_zoom_linesearch: tol"),
    (lambda: zoom.scale_by_zoom_linesearch(5, increase_factor=1.0), ValueError,
     "scale_by_zoom_linesearch: increase_factor"),
    (lambda: zoom.scale_by_zoom_linesearch(5, slope_rtol=1.0), ValueError,
     "scale_by_zoom_linesearch: slope_rtol"),
    (lambda: zoom.scale_by_zoom_linesearch(5, curv_rtol=0.0), ValueError,
     "scale_by_zoom_linesearch: curv_rtol"),
    (lambda: zoom.scale_by_zoom_linesearch(5, approx_dec_rtol=-1e-6), ValueError,
     "scale_by_zoom_linesearch: approx_dec_rtol"),
    (lambda: zoom.scale_by_zoom_linesearch(5, stepsize_precision=float("nan")), ValueError,
     "scale_by_zoom_linesearch: stepsize_precision"),
    (lambda: zoom.scale_by_zoom_linesearch(5, initial_guess_strategy="two"), ValueError,
     "scale_by_zoom_linesearch: initial_guess_strategy"),
    (lambda: zoom.scale_by_zoom_linesearch(5, tol=lambda c: 0.0), TypeError,
     "scale_by_zoom_linesearch: tol"),
    (lambda: backtracking.scale_by_backtracking_linesearch(-1), ValueError,
     "scale_by_backtracking_linesearch: max_backtracking_steps"),
    (lambda: backtracking.scale_by_backtracking_linesearch(5, slope_rtol=-0.1), ValueError,
     "scale_by_backtracking_linesearch: slope_rtol"),
    (lambda: backtracking.scale_by_backtracking_linesearch(5, decrease_factor=1.0),
     ValueError, "scale_by_backtracking_linesearch: decrease_factor"),
    (lambda: backtracking.scale_by_backtracking_linesearch(5, increase_factor=0.9),
     ValueError, "scale_by_backtracking_linesearch: increase_factor"),
    (lambda: backtracking.scale_by_backtracking_linesearch(5, max_learning_rate=-1.0),
     ValueError, "scale_by_backtracking_linesearch: max_learning_rate"),
    (lambda: backtracking.scale_by_backtracking_linesearch(5, atol=-1e-3), ValueError,
     "scale_by_backtracking_linesearch: atol"),
    (lambda: backtracking.scale_by_backtracking_linesearch(5, rtol=-1e-3), ValueError,
     "scale_by_backtracking_linesearch: rtol"),
]


@pytest.mark.parametrize("make,error,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_hyperparameters_are_refused(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_integer_params_are_refused():
    with pytest.raises(TypeError, match="scale_by_lbfgs: parameter at"):
        lbfgs().init({"w": jnp.arange(3)})
