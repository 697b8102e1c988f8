"""Learning-rate (and any hyperparameter) schedules as pytrees.

A schedule is a :class:`Schedule`: a frozen dataclass pytree whose numeric fields are
leaves, called with the 0-based update count: ``lr = schedule(count)``. Because the
constants are data, a jitted step compiles once for ``cosine_decay(1e-3, 1000)`` and
``cosine_decay(3e-4, 1000)``, and a sweep over peak values can be ``vmap``-ped::

    scheds = [jt.schedules.cosine_decay(v, 1000) for v in (1e-3, 3e-4)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *scheds)
    lrs = jax.vmap(lambda s: s(count))(stacked)        # one program, two values

Structural choices (``staircase``, whether an ``end_value`` exists, the kind of
interpolation, the number of pieces) live in the treedef. Every optax schedule is
here under optax's name without the ``_schedule`` suffix, with optax's arguments in
optax's order and the same values (``optax.join_schedules`` is :func:`join`), but
bad constants raise an error where optax would log and carry on.

One module per family:

* :mod:`~jtricks.schedules.decay`: :func:`constant`, :func:`exponential_decay`,
  :func:`polynomial`, :func:`linear`;
* :mod:`~jtricks.schedules.piecewise`: :func:`piecewise_constant`,
  :func:`piecewise_interpolate`, :func:`cosine_onecycle` (alias :func:`one_cycle`),
  :func:`linear_onecycle`;
* :mod:`~jtricks.schedules.warmups`: :func:`warmup_constant`,
  :func:`warmup_exponential_decay`;
* :mod:`~jtricks.schedules.cosine`: :func:`cosine_decay`, :func:`warmup_cosine_decay`,
  :func:`sgdr`;
* :mod:`~jtricks.schedules.sequence`: :func:`join`;
* beyond optax, :mod:`~jtricks.schedules.wsd`: :func:`warmup_stable_decay`;
  :mod:`~jtricks.schedules.cyclic`: :func:`cyclic` (PyTorch's ``CyclicLR``),
  :func:`cosine_warm_restarts` (``CosineAnnealingWarmRestarts``);
  :mod:`~jtricks.schedules.compose`: :func:`warmup` in front of any schedule and
  :func:`product` (also written ``schedule_a * schedule_b`` or ``2.0 * schedule``).
"""

from jtricks.base import FunctionSchedule, Schedule
from jtricks.schedules.compose import Product, Warmup, product, warmup
from jtricks.schedules.cosine import (
    CosineDecay,
    Sgdr,
    WarmupCosineDecay,
    cosine_decay,
    sgdr,
    warmup_cosine_decay,
)
from jtricks.schedules.cyclic import (
    CosineWarmRestarts,
    Cyclic,
    cosine_warm_restarts,
    cyclic,
)
from jtricks.schedules.decay import (
    Constant,
    ExponentialDecay,
    Linear,
    Polynomial,
    constant,
    exponential_decay,
    linear,
    polynomial,
)
from jtricks.schedules.piecewise import (
    CosineOnecycle,
    LinearOnecycle,
    PiecewiseConstant,
    PiecewiseInterpolate,
    cosine_onecycle,
    linear_onecycle,
    one_cycle,
    piecewise_constant,
    piecewise_interpolate,
)
from jtricks.schedules.sequence import Join, join
from jtricks.schedules.warmups import (
    WarmupConstant,
    WarmupExponentialDecay,
    warmup_constant,
    warmup_exponential_decay,
)
from jtricks.schedules.wsd import WarmupStableDecay, warmup_stable_decay

__all__ = [
    "Schedule",
    "FunctionSchedule",
    # classes
    "Constant",
    "ExponentialDecay",
    "PiecewiseConstant",
    "PiecewiseInterpolate",
    "Linear",
    "Polynomial",
    "CosineDecay",
    "WarmupCosineDecay",
    "WarmupConstant",
    "WarmupExponentialDecay",
    "CosineOnecycle",
    "LinearOnecycle",
    "Sgdr",
    "Join",
    "WarmupStableDecay",
    "Cyclic",
    "CosineWarmRestarts",
    "Warmup",
    "Product",
    # factories, optax's names without "_schedule"
    "constant",
    "exponential_decay",
    "piecewise_constant",
    "piecewise_interpolate",
    "linear",
    "polynomial",
    "cosine_decay",
    "warmup_cosine_decay",
    "warmup_constant",
    "warmup_exponential_decay",
    "cosine_onecycle",
    "one_cycle",
    "linear_onecycle",
    "sgdr",
    "join",
    # beyond optax
    "warmup_stable_decay",
    "cyclic",
    "cosine_warm_restarts",
    "warmup",
    "product",
]
