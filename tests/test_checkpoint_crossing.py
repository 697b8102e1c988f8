"""Checkpoints cross between optax and jtricks through flax's own tools.

An nnx optimizer's state saved by orbax from ``nnx.Optimizer`` + ``optax.adamw``
restores into ``jtricks.flax.Optimizer`` + ``jt.adamw`` and training continues with
optax's numbers; a linen ``TrainState`` round-trips through ``flax.serialization``
from optax to jtricks and back. (Models and compiled steps: test_flax_adapters.py.)
"""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, serialization
from flax.training import train_state
from test_flax_adapters import (
    NnxMLP,
    close,
    linen_run,
    linen_state,
    nnx_params,
    nnx_run,
    nnx_step,
    ours,
    theirs,
)

import jtricks.flax as jtf

LR = 2e-2
STEPS = 4


def test_orbax_nnx_checkpoint_of_optax_restores_into_jtricks(tmp_path):
    model, optimizer = nnx_run(theirs(LR), nnx.Optimizer, steps=STEPS)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"model": nnx.state(model),
                                          "optimizer": nnx.state(optimizer)})
    checkpointer.wait_until_finished()

    # A fresh model (other weights) and the jtricks optimizer, restored from optax's.
    mine = NnxMLP(nnx.Rngs(7))
    my_optimizer = jtf.Optimizer(mine, ours(LR), wrt=nnx.Param)
    target = {"model": nnx.state(mine),
              "optimizer": nnx.state(my_optimizer, nnx.optimizer.OptState)}
    restored = checkpointer.restore(tmp_path / "ckpt",
                                    jax.tree.map(ocp.utils.to_shape_dtype_struct, target))
    nnx.update(mine, restored["model"])
    nnx.update(my_optimizer, restored["optimizer"])
    close(nnx_params(mine), nnx_params(model))
    assert int(my_optimizer.step[...]) == STEPS

    for _ in range(STEPS):
        nnx_step(model, optimizer)
        nnx_step(mine, my_optimizer)
        close(nnx_params(mine), nnx_params(model))
    close(nnx.to_pure_dict(nnx.state(my_optimizer, nnx.optimizer.OptState)),
          nnx.to_pure_dict(nnx.state(optimizer)))
    assert int(my_optimizer.step[...]) == 2 * STEPS
    # The run moved after the restore (the comparison is not of two frozen states).
    assert not np.allclose(nnx_params(mine)["l2"]["kernel"],
                           restored["model"]["l2"]["kernel"][...])


def _continue_both(a, b):
    a, b = linen_run(a, STEPS), linen_run(b, STEPS)
    close(a.params, b.params)
    close(jax.tree.leaves(a.opt_state), jax.tree.leaves(b.opt_state))
    assert int(a.step) == int(b.step) == 2 * STEPS


def test_linen_train_state_crosses_flax_serialization_both_ways(tmp_path):
    flax_state = linen_run(linen_state(theirs(LR), train_state.TrainState), STEPS)
    my_state = linen_run(linen_state(ours(LR)), STEPS)
    path = tmp_path / "state.msgpack"

    # optax -> jtricks: the jtricks state restores from flax's bytes.
    path.write_bytes(serialization.to_bytes(flax_state))
    restored = serialization.from_bytes(linen_state(ours(LR)), path.read_bytes())
    assert isinstance(restored, jtf.TrainState) and int(restored.step) == STEPS
    close(restored.params, flax_state.params)
    _continue_both(restored, flax_state)

    # jtricks -> optax: flax's TrainState restores from the jtricks state's bytes.
    path.write_bytes(serialization.to_bytes(my_state))
    back = serialization.from_bytes(linen_state(theirs(LR), train_state.TrainState),
                                    path.read_bytes())
    assert int(back.step) == STEPS
    close(back.params, my_state.params)
    _continue_both(my_state, back)
    # Same keys, shapes and dtypes in both state dicts.
    shapes = [jax.tree.map(lambda x: (np.shape(x), np.asarray(x).dtype),
                           serialization.to_state_dict(s)) for s in (my_state, back)]
    assert shapes[0] == shapes[1]
