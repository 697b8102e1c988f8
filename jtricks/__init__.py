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
from jtricks.optimizers import (
    adabelief,
    adadelta,
    adafactor,
    adagrad,
    adam,
    adamax,
    adamaxw,
    adamw,
    adan,
    amsgrad,
    fromage,
    lamb,
    lars,
    lion,
    muon,
    nadam,
    nadamw,
    noisy_sgd,
    normalized_sgd,
    novograd,
    optimistic_adam,
    optimistic_adam_v2,
    optimistic_gradient_descent,
    polyak_sgd,
    radam,
    rmsprop,
    rprop,
    sgd,
    sign_sgd,
    signum,
    sm3,
    yogi,
)
from jtricks.transforms.adam_variants import (
    ScaleByAmsgradState,
    ScaleByBeliefState,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_belief,
    scale_by_radam,
    scale_by_yogi,
)
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
from jtricks.transforms.classic import (
    ScaleByAdaDeltaState,
    ScaleByNovogradState,
    ScaleByRpropState,
    ScaleBySM3State,
    scale_by_adadelta,
    scale_by_novograd,
    scale_by_rprop,
    scale_by_sm3,
)
from jtricks.transforms.clipping import (
    adaptive_grad_clip,
    clip,
    clip_by_global_norm,
    normalize_by_global_norm,
)
from jtricks.transforms.conditional import (
    ApplyIfFiniteState,
    ConditionallyMaskState,
    ConditionallyTransformState,
    apply_if_finite,
    conditionally_mask,
    conditionally_transform,
)
from jtricks.transforms.constraints import (
    ZeroNansState,
    clip_by_block_rms,
    keep_params_nonnegative,
    per_example_global_norm_clip,
    per_example_layer_norm_clip,
    zero_nans,
)
from jtricks.transforms.decay import WeightDecaySchedule, add_decayed_weights
from jtricks.transforms.ema import EmaState, ema
from jtricks.transforms.factored import FactoredState, scale_by_factored_rms
from jtricks.transforms.flatten import FlatParams, Flatten, flat_params, flatten
from jtricks.transforms.freezing import freeze, named_chain, selective_transform
from jtricks.transforms.gradient_difference import (
    ScaleByAdanState,
    ScaleByOptimisticGradientState,
    scale_by_adan,
    scale_by_optimistic_gradient,
)
from jtricks.transforms.lookahead import LookaheadParams, LookaheadState, lookahead
from jtricks.transforms.masking import (
    MaskedNode,
    MaskedState,
    PartitionState,
    masked,
    partition,
)
from jtricks.transforms.momentum import TraceState, trace
from jtricks.transforms.monitoring import (
    MonitorState,
    SnapshotState,
    measure_with_ema,
    monitor,
    snapshot,
)
from jtricks.transforms.muon import MuonDimensionNumbers, MuonState, scale_by_muon
from jtricks.transforms.noise import AddNoiseState, add_noise
from jtricks.transforms.normalize import centralize, normalize_by_update_norm
from jtricks.transforms.norms import NormsState, record_norms
from jtricks.transforms.plateau import ReduceOnPlateauState, reduce_on_plateau
from jtricks.transforms.scaling import (
    ScaleByScheduleState,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
)
from jtricks.transforms.sign import ScaleByLionState, scale_by_lion, scale_by_sign
from jtricks.transforms.step_size import (
    ScaleByDistanceOverGradientsState,
    scale_by_distance_over_gradients,
    scale_by_polyak,
)
from jtricks.transforms.steps import ApplyEvery, apply_every, skip_large_updates, skip_not_finite
from jtricks.transforms.trust_ratio import (
    scale_by_param_block_norm,
    scale_by_param_block_rms,
    scale_by_trust_ratio,
)
from jtricks.transforms.wrappers import (
    AccumulateState,
    SkipNonfiniteState,
    accumulate,
    skip_nonfinite,
)

__version__ = "0.1.0"
