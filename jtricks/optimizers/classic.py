"""Classic and specialised optimizers as short chains of blocks, with optax's chains.

NovoGrad, Adadelta, Rprop, SM3, Polyak SGD, optimistic descent (plain and Adam),
Adan and noisy SGD. Defaults and states equal optax's; every scalar hyperparameter
accepts a float, an array or a schedule unless its docstring says otherwise.
"""

from __future__ import annotations

from typing import Any

from jtricks import hyperparams as hp
from jtricks.base import Chain, chain
from jtricks.optimizers.sgd import sgd
from jtricks.transforms.adaptive import scale_by_adam
from jtricks.transforms.classic import (
    scale_by_adadelta,
    scale_by_novograd,
    scale_by_rprop,
    scale_by_sm3,
)
from jtricks.transforms.decay import add_decayed_weights
from jtricks.transforms.gradient_difference import scale_by_adan, scale_by_optimistic_gradient
from jtricks.transforms.noise import add_noise, resolve_key
from jtricks.transforms.scaling import scale, scale_by_learning_rate
from jtricks.transforms.step_size import check_variant, scale_by_polyak

__all__ = [
    "novograd",
    "adadelta",
    "rprop",
    "sm3",
    "polyak_sgd",
    "optimistic_gradient_descent",
    "optimistic_adam",
    "optimistic_adam_v2",
    "adan",
    "noisy_sgd",
]


def novograd(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.25, eps: Any = 1e-6,
             eps_root: Any = 0.0, weight_decay: Any = 0.0) -> Chain:
    """NovoGrad (Ginsburg et al., 2019): momentum of layer-wise normalised gradients.

    Per parameter array ``p`` with gradient ``g``::

        v <- b2 * v + (1 - b2) * ||g||**2            (v <- ||g||**2 at step 1)
        m <- b1 * m + g / (sqrt(v + eps_root) + eps) + weight_decay * p
        w <- w - lr(k) * m

    Same chain and numbers as ``optax.novograd``.

    Example:
        >>> tx = jt.novograd(1e-2, weight_decay=1e-3)
    """
    with hp.reporting_as("novograd"):
        return chain(scale_by_novograd(b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                                       weight_decay=weight_decay),
                     scale_by_learning_rate(learning_rate))


def adadelta(learning_rate: Any = None, rho: Any = 0.9, eps: Any = 1e-6,
             weight_decay: Any = 0.0, weight_decay_mask: Any = None) -> Chain:
    """Adadelta (Zeiler, 2012): steps in the units of the parameters.

    ::

        r   <- g + weight_decay * w                      (where weight_decay_mask)
        e_g <- rho * e_g + (1 - rho) * r**2
        d   <- sqrt(e_x + eps) / sqrt(e_g + eps) * r
        e_x <- rho * e_x + (1 - rho) * d**2
        w   <- w - lr(k) * d

    Same chain and numbers as ``optax.adadelta``. ``learning_rate`` is required
    (the paper's rule is ``learning_rate=1.0``): optax's ``None`` default skips the
    sign flip, so its ``adadelta()`` climbs the loss; jtricks refuses it.

    Example:
        >>> tx = jt.adadelta(1.0)
    """
    with hp.reporting_as("adadelta"):
        if learning_rate is None:
            raise TypeError(
                "adadelta: learning_rate is required, got None. optax treats None as "
                "no scaling at all, which ascends the loss; pass learning_rate=1.0 for "
                "the paper's rule."
            )
        return chain(add_decayed_weights(weight_decay, weight_decay_mask),
                     scale_by_adadelta(rho=rho, eps=eps),
                     scale_by_learning_rate(learning_rate))


def rprop(learning_rate: Any, eta_minus: Any = 0.5, eta_plus: Any = 1.2,
          min_step_size: Any = 1e-6, max_step_size: Any = 50.0) -> Chain:
    """Rprop (Riedmiller & Braun, 1993): per-coordinate steps adapted from signs alone.

    Each step ``s`` starts at ``learning_rate``, grows by ``eta_plus`` while the
    gradient keeps its sign and shrinks by ``eta_minus`` when it flips (then that
    coordinate pauses one step); ``w <- w - s * sign(g)``. Meant for full-batch
    gradients. Same chain and numbers as ``optax.rprop``; ``learning_rate`` is a
    number or an array (the initial step, read by ``init``).

    Example:
        >>> tx = jt.rprop(1e-3)
    """
    with hp.reporting_as("rprop"):
        return chain(scale_by_rprop(learning_rate, eta_minus=eta_minus, eta_plus=eta_plus,
                                    min_step_size=min_step_size,
                                    max_step_size=max_step_size),
                     scale(-1.0))


def sm3(learning_rate: Any, momentum: Any = 0.9) -> Chain:
    """SM3 (Anil et al., 2019): Adagrad with one accumulator per axis, not per entry.

    See :func:`~jtricks.scale_by_sm3` for the rule; ``w <- w - lr * nu``. Same chain
    and numbers as ``optax.sm3``: ``learning_rate`` is a number or an array (optax
    scales by it with ``scale``, which keeps no count), and every parameter needs at
    least one axis.

    Example:
        >>> tx = jt.sm3(0.1)
    """
    with hp.reporting_as("sm3"):
        hp.no_schedule("sm3", "learning_rate", learning_rate)
        hp.check_learning_rate("sm3", learning_rate)
        hp.check_decay("sm3", "momentum", momentum)
        return chain(scale_by_sm3(momentum), scale(-learning_rate))


def polyak_sgd(max_learning_rate: Any = 1.0, scaling: Any = 1.0, f_min: Any = 0.0,
               eps: Any = 0.0, variant: str = "sps") -> Chain:
    """SGD with Polyak's step size (Loizou et al., 2021, SPS_max).

    With ``f`` the loss at the current params, passed as ``update(..., value=f)``::

        w <- w - scaling(k) * min((f - f_min) / (||g||**2 + eps), max_learning_rate) * g

    Same chain and numbers as ``optax.polyak_sgd``.

    Example:
        >>> tx = jt.polyak_sgd(max_learning_rate=1.0)
        >>> updates, state = tx.update(grads, state, params, value=loss)
    """
    with hp.reporting_as("polyak_sgd"):
        hp.check_range("polyak_sgd", "scaling", scaling, low=0.0,
                       fix="scaling multiplies the Polyak step; the default is 1.")
        check_variant("polyak_sgd", variant)
        return chain(sgd(learning_rate=scaling),
                     scale_by_polyak(max_learning_rate=max_learning_rate, f_min=f_min,
                                     eps=eps, variant=variant))


def optimistic_gradient_descent(learning_rate: Any, alpha: Any = 1.0,
                                beta: Any = 1.0) -> Chain:
    """Optimistic gradient descent (Mokhtari et al., 2019) for min-max games.

    ::

        w <- w - lr(k) * ((alpha + beta) * g_t - beta * g_{t-1})     (g_{-1} = g_0)

    Same chain and numbers as ``optax.optimistic_gradient_descent``.

    Example:
        >>> tx = jt.optimistic_gradient_descent(0.1)
    """
    with hp.reporting_as("optimistic_gradient_descent"):
        return chain(scale_by_optimistic_gradient(alpha=alpha, beta=beta),
                     scale_by_learning_rate(learning_rate))


def optimistic_adam(learning_rate: Any, optimism: Any = None, b1: Any = 0.9,
                    b2: Any = 0.999, eps: Any = 1e-08, eps_root: Any = 0.0,
                    mu_dtype: Any = None, *, nesterov: bool = True) -> Chain:
    """Optimistic Adam (Daskalakis et al., 2018), in optax's first parametrisation.

    With ``a_t`` Adam's direction (NAdam's when ``nesterov``)::

        w <- w - (learning_rate + optimism) * a_t + optimism * a_{t-1}

    ``optimism`` defaults to ``learning_rate``. Same chain and numbers as
    ``optax.optimistic_adam`` (which optax deprecates for
    :func:`optimistic_adam_v2`); a schedule is accepted here, where optax refuses
    one.

    Example:
        >>> tx = jt.optimistic_adam(1e-3)
    """
    with hp.reporting_as("optimistic_adam"):
        hp.check_learning_rate("optimistic_adam", learning_rate)
        if optimism is None:
            optimism = learning_rate
        hp.check_nonnegative("optimistic_adam", "optimism", optimism,
                             fix="optimism weighs the last direction; it defaults to "
                             "learning_rate.")
        return chain(scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                                   mu_dtype=mu_dtype, nesterov=nesterov),
                     scale_by_optimistic_gradient(alpha=learning_rate, beta=optimism),
                     scale_by_learning_rate(1.0))


def optimistic_adam_v2(learning_rate: Any, *, alpha: Any = 1.0, beta: Any = 1.0,
                       b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-08,
                       eps_root: Any = 0.0, mu_dtype: Any = None,
                       nesterov: bool = True) -> Chain:
    """Optimistic Adam (Daskalakis et al., 2018) with a separate learning rate.

    With ``a_t`` Adam's direction (NAdam's when ``nesterov``)::

        w <- w - lr(k) * ((alpha + beta) * a_t - beta * a_{t-1})

    Same chain and numbers as ``optax.optimistic_adam_v2``.

    Example:
        >>> tx = jt.optimistic_adam_v2(1e-3, beta=0.5)
    """
    with hp.reporting_as("optimistic_adam_v2"):
        return chain(scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                                   mu_dtype=mu_dtype, nesterov=nesterov),
                     scale_by_optimistic_gradient(alpha=alpha, beta=beta),
                     scale_by_learning_rate(learning_rate))


def adan(learning_rate: Any, b1: Any = 0.98, b2: Any = 0.92, b3: Any = 0.99,
         eps: Any = 1e-8, eps_root: Any = 1e-8, weight_decay: Any = 0.0,
         mask: Any = None) -> Chain:
    """Adan (Xie et al., 2022): adaptive Nesterov momentum.

    With ``u`` the direction of :func:`~jtricks.scale_by_adan`::

        w <- w - lr(k) * (u + weight_decay * w)           (decay where mask is True)

    Same chain and numbers as ``optax.adan``.

    Example:
        >>> tx = jt.adan(1e-3, weight_decay=0.02)
    """
    with hp.reporting_as("adan"):
        return chain(scale_by_adan(b1=b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root),
                     add_decayed_weights(weight_decay, mask),
                     scale_by_learning_rate(learning_rate))


def noisy_sgd(learning_rate: Any, eta: Any = 0.01, gamma: Any = 0.55, key: Any = None,
              *, seed: int | None = None) -> Chain:
    """SGD with annealed Gaussian gradient noise (Neelakantan et al., 2015).

    ::

        w <- w - lr(k) * (g + sqrt(eta / t**gamma) * z),     z ~ N(0, 1), t = 1, 2, ...

    The key is required (jtricks draws no default key; optax falls back to 0 with a
    warning) and lives in the state. Same chain and draws as ``optax.noisy_sgd``.

    Example:
        >>> tx = jt.noisy_sgd(0.1, key=jax.random.key(0))
    """
    with hp.reporting_as("noisy_sgd"):
        key = resolve_key("noisy_sgd", key, seed)
        return chain(add_noise(eta, gamma, key), scale_by_learning_rate(learning_rate))
