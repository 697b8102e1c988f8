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
from jtricks.optimizers import adam
from jtricks.transforms.adaptive import ScaleByAdamState, scale_by_adam
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

# --- training, averaging, checkpoints ----------------------------------------------
# isort: split
from jtricks import averaging, train

# --- speed: flatten -----------------------------------------------------------------

__version__ = "0.1.0"
