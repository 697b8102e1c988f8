"""The training state: every number a run carries from one step to the next."""

from __future__ import annotations

from typing import Any

import jax

from jtricks.struct import Struct

__all__ = ["TrainState"]

PyTree = Any


class TrainState(Struct):
    """Everything a training run carries from one step to the next (a pytree).

    Attributes:
        step: int32, the number of steps taken.
        params: the trained parameters.
        opt_state: the optimizer's state (``tx.init(params)``).
        model_state: non-trained model variables, e.g. batch-norm running
            statistics; ``None`` for stateless models.
        key: the run's base PRNG key. It is never split in place: step ``t`` uses
            ``jax.random.fold_in(key, t)``.
        averages: the averager's state (EMA/SWA) or ``None``.

    Build one with :meth:`jtricks.train.Step.init`. The optimizer itself is not
    stored (its hyperparameters belong to the step), so a checkpoint holds numbers
    only.
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    model_state: PyTree
    key: jax.Array
    averages: PyTree = None
