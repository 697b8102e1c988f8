"""Training: a state pytree, a jitted step, a whole training loop on device.

One module per piece: :mod:`~jtricks.train.state`, :mod:`~jtricks.train.step`,
:mod:`~jtricks.train.early_stopping`, :mod:`~jtricks.train.loop`.

The pieces, from small to large:

* :class:`TrainState`: every number a run needs to continue: ``step``, ``params``,
  ``opt_state``, ``model_state`` (batch-norm statistics...), the base PRNG ``key``
  and the parameter ``averages`` (EMA/SWA) if any. Saving it with :func:`save`
  and continuing after :func:`restore` is bit-identical to never stopping.
* :func:`make_step`: one optimizer step, jitted with the state donated. Dropout
  keys come from ``fold_in(state.key, state.step)``, so they depend on the step
  number alone (the reason a resumed run repeats the same randomness).
* :func:`fit`: epochs whose steps run in one ``lax.scan`` per epoch on device
  (one dispatch per epoch instead of one per batch), with on-device shuffling,
  an evaluation per epoch, :class:`EarlyStopping` (pure and jittable) and an
  optional progress bar.
* :func:`canonical_convs`: for those who scan ``step.apply`` themselves on a CPU,
  the convolution rewrite :func:`fit` applies to its loop body there.

The one loss signature used everywhere::

    def loss_fn(params, model_state, batch, key):
        ...
        return loss, (new_model_state, metrics)

``loss`` is a scalar; ``model_state`` is returned unchanged by models without
state; ``metrics`` is a dict of scalars (``{}`` for none) that ends up in the
step's metrics and in the history of :func:`fit`.

Example::

    step = jt.train.make_step(loss_fn, jt.adam(1e-3), averaging=jt.averaging.ema(0.99))
    state = step.init(params, jax.random.key(0), model_state)
    state, metrics = step(state, batch)                 # one step, or a whole run:
    state, history = jt.train.fit(step, state, (x, y), batch_size=128, epochs=50,
                                  key=jax.random.key(1), eval_data=(xv, yv),
                                  eval_fn=evaluate, monitor="accuracy",
                                  early_stopping=jt.train.EarlyStopping(5, mode="max"))
    jt.train.save("checkpoints", state, keep=3)
    state = jt.train.restore("checkpoints", like=step.init(params, key, model_state))

Checkpoints (:func:`save`, :func:`restore`) are described in :mod:`jtricks.checkpoint`.
"""

from jtricks.checkpoint import CheckpointError, all_checkpoints, latest, restore, save
from jtricks.train.convs import canonical_convs
from jtricks.train.early_stopping import EarlyStopper, EarlyStopping, EarlyStoppingState
from jtricks.train.loop import fit
from jtricks.train.state import TrainState
from jtricks.train.step import Step, make_step

__all__ = [
    "TrainState",
    "Step",
    "make_step",
    "EarlyStopping",
    "EarlyStopper",
    "EarlyStoppingState",
    "fit",
    "canonical_convs",
    "save",
    "restore",
    "latest",
    "all_checkpoints",
    "CheckpointError",
]
