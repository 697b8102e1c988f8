"""The training state: every number a run carries from one step to the next."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from jtricks.base import Transform
from jtricks.struct import Struct
from jtricks.transforms.flatten import FlatParams

__all__ = ["TrainState", "SHAPE_DEPENDENT"]

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

    With ``make_step(..., flat_params=True)``, ``params`` is kept in its flat form,
    a :class:`~jtricks.FlatParams` (``state.params.tree()`` gives the usual tree;
    ``step.eval_params(state)`` the tree to evaluate). The flat form is the stored
    one, not a view behind a property, because the state is a pytree whose leaves
    are exactly what crosses each compiled step and what a checkpoint holds: a few
    vectors, not one array per parameter.
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    model_state: PyTree
    key: jax.Array
    averages: PyTree = None


# --- params stored flat (make_step(..., flat_params=True)) ---------------------------

# Transforms whose numbers depend on each leaf's shape or on the tree's structure: on
# the few flat vectors they would fail or, worse, run with other numbers.
SHAPE_DEPENDENT = frozenset({
    "AdaptiveGradClip", "Masked", "Partition", "ParamGroups", "ScaleByMuon",
    "ScaleByShape", "ScaleByFactoredRms", "ScaleBySM3", "ScaleByNovograd",
    "ClipByBlockRms", "ScaleByParamBlockNorm", "ScaleByParamBlockRms",
    "ScaleByTrustRatio", "ScaleByShampoo", "ScaleBySoap", "ScaleByGaLore", "Centralize",
})
"""Class names of the jtricks transforms ``make_step(flat_params=True)`` refuses."""


class _OnTree:
    """``fn(flat.tree(), *args)``: a loss or eval function written for the tree, called
    with :class:`~jtricks.FlatParams`. Equal for equal ``fn`` and ``layout``, so jit
    caches hit. On a mesh, ``layout.whole`` first gathers the vectors whole on every
    device (a no-op when they are replicated), so the tree is cut from whole vectors."""

    def __init__(self, fn: Callable, layout: Any = None):
        self.fn, self.layout = fn, layout

    def __call__(self, params: FlatParams, *args: Any) -> Any:
        if self.layout is not None:
            params = self.layout.whole(params)
        return self.fn(params.tree(), *args)

    def __eq__(self, other: object) -> bool:
        return (type(other) is _OnTree and other.fn == self.fn
                and other.layout == self.layout)

    def __hash__(self) -> int:
        return hash((_OnTree, self.fn, self.layout))


def on_tree(fn: Callable, layout: Any = None) -> Callable:
    """``fn`` (written for the params' tree) made to take :class:`~jtricks.FlatParams`
    (gathered whole first on ``layout``'s mesh, when given)."""
    return _OnTree(fn, layout)


def _shape_dependent(tx: Transform) -> list[str]:
    """Names of the shape-dependent transforms found anywhere inside ``tx``."""
    found = []
    if any(c.__name__ in SHAPE_DEPENDENT for c in type(tx).__mro__):
        found.append(type(tx).__name__)
    for name in tx._data_fields:
        inner = jax.tree.leaves(getattr(tx, name), is_leaf=lambda x: isinstance(x, Transform))
        for t in inner:
            if isinstance(t, Transform):
                found += _shape_dependent(t)
    return found


_KEEP_TREE = ("make_step(..., flat_params=False) (the default) keeps the params a tree; "
              "or use jt.flatten(tx) to keep only the optimizer's state flat.")


def flat_opt_init(tx: Transform, params: FlatParams,
                  init: Callable[[Transform, FlatParams], PyTree] | None = None) -> PyTree:
    """``init(tx, params)`` (by default ``tx.init(params)``) on the flat params,
    refusing transforms that need the tree."""
    bad = _shape_dependent(tx)
    if bad:
        raise ValueError(
            f"make_step.init: flat_params=True cannot run {sorted(set(bad))}: they look "
            "at each parameter's shape or at the tree's structure (masks, labels, "
            f"matrices) and would see a few flat vectors instead. {_KEEP_TREE}"
        )
    try:
        return tx.init(params) if init is None else init(tx, params)
    except Exception as e:  # any failure here means it needs the tree
        raise ValueError(
            f"make_step.init: with flat_params=True the optimizer's init failed on the "
            f"flat params ({type(e).__name__}: {e}); it likely needs the params' tree "
            f"(a mask or labels shaped like it, per-leaf shapes). {_KEEP_TREE}"
        ) from e

