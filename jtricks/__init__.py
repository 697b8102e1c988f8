"""jtricks: the tricks that make deep networks train, as pure JAX functions.

``import jtricks as jt``; see the README for a tour. The public API is flat: every
optimizer, building block and wrapper is ``jt.<name>``; the other concerns are
modules (``jt.schedules``, ``jt.init``, ``jt.layers``, ``jt.train``, ...).
"""

from jtricks import (
    averaging,
    data,
    diagnostics,
    hyperparams,
    init,
    layers,
    patience,
    regularization,
    schedules,
    train,
    tree,
)
from jtricks.base import (
    Chain,
    EmptyState,
    Identity,
    Schedule,
    Stateless,
    Struct,
    Transform,
    apply_updates,
    as_transform,
    chain,
    identity,
    static_field,
)
from jtricks.hyperparams import ScheduleCountState
from jtricks.optimizers import adagrad, adam, adamw, normalized_sgd, rmsprop, sgd
from jtricks.transforms.adaptive import (
    ScaleByAdamState,
    ScaleByRmsState,
    ScaleByRmsWithCountState,
    ScaleByRssState,
    ScaleByRStdDevState,
    ScaleByRStdDevWithCountState,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
)
from jtricks.transforms.clipping import (
    adaptive_grad_clip,
    clip,
    clip_by_global_norm,
    normalize_by_global_norm,
)
from jtricks.transforms.decay import add_decayed_weights
from jtricks.transforms.flatten import FlatParams, Flatten, flat_params, flatten
from jtricks.transforms.masking import (
    MaskedNode,
    MaskedState,
    PartitionState,
    masked,
    partition,
)
from jtricks.transforms.momentum import TraceState, trace
from jtricks.transforms.monitor import MonitorState, monitor
from jtricks.transforms.plateau import ReduceOnPlateauState, reduce_on_plateau
from jtricks.transforms.scaling import (
    ScaleByScheduleState,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
)
from jtricks.transforms.wrappers import (
    AccumulateState,
    SkipNonfiniteState,
    accumulate,
    skip_nonfinite,
)

__version__ = "0.1.0"
