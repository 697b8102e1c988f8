"""jtricks: the tricks that make deep networks train, as pure JAX functions.

``import jtricks as jt``; see the README for a tour.
"""

# --- protocol and tree maths -------------------------------------------------------
from jtricks import hyperparams, schedules, tree
from jtricks.base import (
    Chain,
    EmptyState,
    Identity,
    Struct,
    Transform,
    apply_updates,
    chain,
    identity,
    static_field,
)

# --- optimizers and building blocks (transforms/, optimizers.py) --------------------
from jtricks.optimizers import adagrad, adam, adamw, normalized_sgd, rmsprop, sgd
from jtricks.transforms.adaptive import (
    ScaleByAdagradState,
    ScaleByAdamState,
    ScaleByRmsState,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_rms,
)
from jtricks.transforms.clipping import (
    adaptive_grad_clip,
    clip,
    clip_by_global_norm,
    normalize_by_global_norm,
)
from jtricks.transforms.decay import add_decayed_weights
from jtricks.transforms.momentum import TraceState, trace
from jtricks.transforms.scaling import (
    ScaleByLearningRateState,
    scale,
    scale_by_learning_rate,
)

# --- schedules, plateau, wrappers (schedules.py, transforms/plateau.py, wrappers.py) -
# isort: split
from jtricks.transforms.plateau import ReduceOnPlateauState, reduce_on_plateau
from jtricks.transforms.wrappers import (
    AccumulateState,
    MaskedNode,
    MaskedState,
    PartitionState,
    SkipNonfiniteState,
    accumulate,
    masked,
    partition,
    skip_nonfinite,
)

# --- init, layers, data, regularization, diagnostics, monitor ----------------------
# isort: split
from jtricks import data, diagnostics, init, layers, regularization
from jtricks.transforms.monitor import MonitorState, monitor

# --- training, averaging, checkpoints ----------------------------------------------
# isort: split
from jtricks import averaging, train

# --- speed: flatten -----------------------------------------------------------------
# isort: split
from jtricks.transforms.flatten import FlatParams, Flatten, flat_params, flatten

__version__ = "0.1.0"
