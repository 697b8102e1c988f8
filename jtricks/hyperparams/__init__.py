"""Concrete values: validated when known, resolved at a step when scheduled.

A scalar hyperparameter is a Python number, an array (possibly a tracer, possibly
stacked for ``vmap``) or a schedule (a callable ``count -> value``). Validation runs
only on concrete values: under ``jit``/``vmap`` a tracer passes through unchecked,
so the same factory works both for users and for JAX transformations.

Every check of a concrete value in the package lives here, so each rule (what a
decay rate may be, what an integer count is) is written once and reads the same
wherever it is enforced. A named optimizer that builds a chain of blocks reports its
own name in every error its blocks raise::

    with hp.reporting_as("adam"):
        return chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(lr))

so ``jt.adam(1e-3, b1=1.0)`` says ``adam: b1 must be in [0, 1) ...`` and each value
is checked exactly once.
"""

from jtricks.base import count_of, is_schedule, value_at
from jtricks.hyperparams.checks import (
    check,
    check_decay,
    check_eps,
    check_finite,
    check_finite_data,
    check_float_params,
    check_initial,
    check_integer,
    check_learning_rate,
    check_nonnegative,
    check_positive,
    check_range,
    check_real_params,
    check_threshold,
    no_schedule,
    reporter,
    reporting_as,
    require_params,
)
from jtricks.hyperparams.reporting import current, learning_rates, set
from jtricks.hyperparams.values import (
    ScheduleCountState,
    as_hyper,
    concrete,
    has_schedule,
    next_count,
    split_count,
    with_count,
)

__all__ = [
    "is_schedule", "count_of", "value_at", "as_hyper", "concrete",
    "ScheduleCountState", "has_schedule", "with_count", "split_count", "next_count",
    "current", "set", "learning_rates",
    "reporting_as", "reporter", "check", "check_range", "check_finite", "check_positive",
    "check_nonnegative", "check_integer", "check_decay", "check_eps", "check_learning_rate",
    "check_initial", "check_threshold", "no_schedule", "check_finite_data",
    "check_float_params", "check_real_params", "require_params",
]
