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
    sharding,
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
    acprop,
    adabelief,
    adadelta,
    adafactor,
    adagrad,
    adam,
    adamax,
    adamaxw,
    adamw,
    adan,
    ademamix,
    adopt,
    amsgrad,
    cocob,
    dadapt_adamw,
    dog,
    dowg,
    dpsgd,
    fromage,
    galore,
    lamb,
    lars,
    lbfgs,
    lion,
    madgrad,
    mars,
    momo,
    momo_adam,
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
    prodigy,
    radam,
    rmsprop,
    rprop,
    schedule_free_adamw,
    schedule_free_sgd,
    sgd,
    shampoo,
    sign_sgd,
    signum,
    simplified_ademamix,
    sm3,
    soap,
    sophia,
    value_and_grad_from_state,
    yogi,
)
from jtricks.param_groups import ParamGroups, param_groups
from jtricks.transforms.acprop import scale_by_acprop
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
from jtricks.transforms.ademamix import (
    ScaleByAdemamixState,
    ScaleBySimplifiedAdEMAMixState,
    scale_by_ademamix,
    scale_by_simplified_ademamix,
)
from jtricks.transforms.adopt import scale_by_adopt
from jtricks.transforms.cautious import cautious
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
from jtricks.transforms.complex import SplitRealAndImaginaryState, split_real_and_imaginary
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
from jtricks.transforms.dog import DoGState, DoWGState, scale_by_dog, scale_by_dowg
from jtricks.transforms.ema import EmaState, ema
from jtricks.transforms.factored import FactoredState, scale_by_factored_rms
from jtricks.transforms.flatten import FlatParams, Flatten, flat_params, flatten
from jtricks.transforms.freezing import freeze, named_chain, selective_transform, set_to_zero
from jtricks.transforms.galore import GaLoreDimensionNumbers, GaLoreState, scale_by_galore
from jtricks.transforms.gradient_difference import (
    ScaleByAdanState,
    ScaleByOptimisticGradientState,
    scale_by_adan,
    scale_by_optimistic_gradient,
)
from jtricks.transforms.lbfgs import ScaleByLBFGSState, scale_by_lbfgs
from jtricks.transforms.linesearch_backtracking import (
    BacktrackingLinesearchInfo,
    ScaleByBacktrackingLinesearchState,
    scale_by_backtracking_linesearch,
)
from jtricks.transforms.linesearch_zoom import (
    ScaleByZoomLinesearchState,
    ZoomLinesearchInfo,
    scale_by_zoom_linesearch,
)
from jtricks.transforms.lookahead import LookaheadParams, LookaheadState, lookahead
from jtricks.transforms.madgrad import MadgradState, scale_by_madgrad
from jtricks.transforms.mars import ScaleByMarsState, scale_by_mars
from jtricks.transforms.masking import (
    MaskedNode,
    MaskedState,
    PartitionState,
    masked,
    partition,
)
from jtricks.transforms.mechanic import MechanicState, mechanize
from jtricks.transforms.momentum import TraceState, trace
from jtricks.transforms.momo import MomoAdamState, MomoState
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
from jtricks.transforms.parameter_free import (
    COCOBState,
    DAdaptAdamWState,
    ProdigyState,
    scale_by_cocob,
)
from jtricks.transforms.plateau import ReduceOnPlateauState, reduce_on_plateau
from jtricks.transforms.privacy import (
    DifferentiallyPrivateAggregateState,
    differentially_private_aggregate,
)
from jtricks.transforms.sam import NormalizeState, SAMState, normalize, sam
from jtricks.transforms.scaling import (
    ScaleByScheduleState,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
)
from jtricks.transforms.schedule_free import (
    ScheduleFreeState,
    schedule_free,
    schedule_free_eval_params,
)
from jtricks.transforms.shampoo import ScaleByShampooState, scale_by_shampoo
from jtricks.transforms.sign import ScaleByLionState, scale_by_lion, scale_by_sign
from jtricks.transforms.soap import ScaleBySoapState, scale_by_soap
from jtricks.transforms.sophia import (
    HutchinsonState,
    SophiaState,
    hutchinson_estimator_diag_hessian,
    scale_by_sophia,
)
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
    MultiSteps,
    MultiStepsState,
    ShouldSkipUpdateFunction,
    SkipNonfiniteState,
    accumulate,
    skip_nonfinite,
)

__version__ = "0.1.0"

# Every public name: the modules, and each optimizer, transform, state and helper
# imported above (tests/test_signatures.py checks that every optax name is here).
__all__ = [*sorted(name for name in dir() if not name.startswith("_")), "flax"]


def __getattr__(name: str):
    # ``jt.flax`` without importing flax at ``import jtricks``: flax is optional.
    if name == "flax":
        import importlib

        return importlib.import_module("jtricks.flax")
    raise AttributeError(f"module 'jtricks' has no attribute {name!r}")
