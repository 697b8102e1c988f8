"""Learning-rate-free and loss-aware optimizers: Prodigy, D-Adaptation, COCOB, DoG,
DoWG and MoMo, with optax.contrib's signatures, defaults, states and numbers.

Their ``learning_rate`` is a multiplier of a step size they find themselves (keep it
at 1, or give a schedule peaking at 1). MoMo needs the loss:
``tx.update(grads, state, params, value=loss)``. Mechanic, which learns the scale of
any optimizer, is :func:`jtricks.mechanize`.
"""

from __future__ import annotations

from typing import Any

from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks.base import Chain, chain, identity
from jtricks.transforms.decay import add_decayed_weights
from jtricks.transforms.dog import scale_by_dog, scale_by_dowg
from jtricks.transforms.momo import Momo, MomoAdam
from jtricks.transforms.parameter_free import DAdaptAdamW, Prodigy, scale_by_cocob
from jtricks.transforms.scaling import scale_by_learning_rate

__all__ = ["prodigy", "dadapt_adamw", "cocob", "dog", "dowg", "momo", "momo_adam"]


def _check_betas(where: str, betas: Any) -> tuple:
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise TypeError(f"{where}: betas must be a pair (b1, b2), got {betas!r}. Use e.g. "
                        "betas=(0.9, 0.999).")
    for name, b in zip(("betas[0]", "betas[1]"), betas):
        hp.no_schedule(where, name, b)
        hp.check_decay(where, name, b)
    return tuple(betas)


def _check_common(where: str, learning_rate: Any, eps: Any, weight_decay: Any,
                  estim_lr0: Any = 1.0) -> None:
    """The rules prodigy and dadapt_adamw share (only the rate may be a schedule)."""
    hp.check_learning_rate(where, learning_rate,
                           fix="It multiplies the step found; keep it at 1 or use a schedule.")
    for name, value in (("eps", eps), ("weight_decay", weight_decay),
                        ("estim_lr0", estim_lr0)):
        hp.no_schedule(where, name, value)
    hp.check_eps(where, "eps", eps)
    hp.check_nonnegative(where, "weight_decay", weight_decay,
                         fix="It is AdamW's decoupled decay; typical values are 0 to 0.1.")
    hp.check_positive(where, "estim_lr0", estim_lr0,
                      fix="It is the first (under-)estimate of the step, e.g. 1e-6.")


def prodigy(learning_rate: Any = 1.0, betas: tuple[ArrayLike, ArrayLike] = (0.9, 0.999),
            beta3: ArrayLike | None = None, eps: ArrayLike = 1e-8,
            estim_lr0: ArrayLike = 1e-6, estim_lr_coef: ArrayLike = 1.0,
            weight_decay: ArrayLike = 0.0, safeguard_warmup: bool = False) -> Prodigy:
    """Prodigy (Mishchenko & Defazio, 2023): AdamW whose step ``D`` learns itself.

    With ``g`` the gradient, ``x`` the params (``x0`` their start), ``t`` the 1-based
    step and ``b3`` defaulting to ``sqrt(b2)``::

        dlr <- D * lr(k) * sqrt(1 - b2**t) / (1 - b1**t)
        m   <- b1 * m + (1 - b1) * D * g
        v   <- b2 * v + (1 - b2) * (D * g)**2
        s   <- b3 * s + dlr * D * g / D0            (D instead of dlr: safeguard_warmup)
        n   <- b3 * n + (D / D0) * dlr * <g, x0 - x>
        D   <- max(D, estim_lr_coef * n / ||s||_1)  (D starts at D0 = estim_lr0)
        u   <- -weight_decay * dlr * x - dlr * m / (sqrt(v) + D * eps)

    Same numbers as ``optax.contrib.prodigy``; where every gradient so far was 0
    (``||s||_1 = 0``) ``D`` keeps its value instead of becoming NaN.

    Args:
        learning_rate: a multiplier of the step found, >= 0; a float, an array or a
            schedule (linear decay from 1 with a short warmup works well).
        betas: ``(b1, b2)``, Adam's decay rates, each in [0, 1).
        beta3: decay of the estimate's sums, in [0, 1); ``None`` for ``sqrt(b2)``.
        eps: Adam's guard, >= 0 (multiplied by ``D``).
        estim_lr0: the first estimate ``D0``, > 0.
        estim_lr_coef: multiplies every estimate, > 0.
        weight_decay: AdamW's decoupled decay, >= 0.
        safeguard_warmup: leave the rate out of ``s`` (static); helps with a warmup.

    Example:
        >>> tx = jt.prodigy(jt.schedules.linear(1.0, 0.0, 10_000))
    """
    where = "prodigy"
    _check_common(where, learning_rate, eps, weight_decay, estim_lr0)
    betas = _check_betas(where, betas)
    hp.no_schedule(where, "estim_lr_coef", estim_lr_coef)
    hp.check_positive(where, "estim_lr_coef", estim_lr_coef,
                      fix="It multiplies every estimate of the step; the default is 1.")
    if beta3 is not None:
        hp.no_schedule(where, "beta3", beta3)
        hp.check_decay(where, "beta3", beta3)
    return Prodigy(learning_rate=hp.as_hyper(learning_rate), betas=betas, beta3=beta3,
                   eps=eps, estim_lr0=estim_lr0, estim_lr_coef=estim_lr_coef,
                   weight_decay=weight_decay, safeguard_warmup=bool(safeguard_warmup))


def dadapt_adamw(learning_rate: Any = 1.0, betas: tuple[ArrayLike, ArrayLike] = (0.9, 0.999),
                 eps: ArrayLike = 1e-8, estim_lr0: ArrayLike = 1e-6,
                 weight_decay: ArrayLike = 0.0) -> DAdaptAdamW:
    """D-Adaptation for AdamW (Defazio & Mishchenko, 2023): AdamW with a learned ``D``.

    With ``g`` the gradient, ``x`` the params, ``t`` the 1-based step and
    ``c = sqrt(b2)``::

        dlr <- D * lr(k) * sqrt(1 - b2**t) / (1 - b1**t)
        n   <- c * n + (1 - c) * dlr * <g, s / (sqrt(v) + eps)>   (previous s, v)
        m   <- b1 * m + (1 - b1) * dlr * g
        v   <- b2 * v + (1 - b2) * g**2
        s   <- c * s + (1 - c) * dlr * g
        D   <- max(D, n / ((1 - c) * ||s||_1))     (D starts at estim_lr0)
        u   <- -weight_decay * dlr * x - m / (sqrt(v) + eps)

    Same numbers as ``optax.contrib.dadapt_adamw``; where every gradient so far was 0
    ``D`` keeps its value instead of becoming NaN.

    Args:
        learning_rate: a multiplier of the step found, >= 0; a float, an array or a
            schedule.
        betas: ``(b1, b2)``, Adam's decay rates, each in [0, 1).
        eps: Adam's guard, >= 0.
        estim_lr0: the first estimate of ``D``, > 0.
        weight_decay: AdamW's decoupled decay, >= 0.

    Example:
        >>> tx = jt.dadapt_adamw()
    """
    where = "dadapt_adamw"
    _check_common(where, learning_rate, eps, weight_decay, estim_lr0)
    betas = _check_betas(where, betas)
    return DAdaptAdamW(learning_rate=hp.as_hyper(learning_rate), betas=betas, eps=eps,
                       estim_lr0=estim_lr0, weight_decay=weight_decay)


def cocob(learning_rate: Any = 1.0, alpha: ArrayLike = 100.0, eps: ArrayLike = 1e-8,
          weight_decay: ArrayLike = 0.0, mask: Any = None) -> Chain:
    """COCOB-Backprop (Orabona & Tommasi, 2017): training by coin betting, no step size.

    ::

        g <- learning_rate(k) * (g + weight_decay * x)    (decay where mask is True)
        u <- scale_by_cocob(alpha, eps)(g)

    See :func:`jtricks.scale_by_cocob` for the bet. Same chain and numbers as
    ``optax.contrib.cocob``.

    Args:
        learning_rate: scales the gradient before the bet, >= 0; a float, an array
            or a schedule.
        alpha: caps the early bets, > 0.
        eps: the initial gradient scale, > 0.
        weight_decay: L2 decay added to the gradient, >= 0.
        mask: where the decay applies: ``None`` (everywhere), a tree of bools like
            the params or a callable ``params -> such a tree``.

    Example:
        >>> tx = jt.cocob()
    """
    with hp.reporting_as("cocob"):
        return chain(add_decayed_weights(weight_decay, mask),
                     scale_by_learning_rate(learning_rate, flip_sign=False),
                     scale_by_cocob(alpha, eps))


def _decay_or_identity(weight_decay: Any, mask: Any) -> Any:
    return identity() if weight_decay is None else add_decayed_weights(weight_decay, mask)


def dog(learning_rate: Any = 1.0, init_step: tuple[str, ArrayLike] = ("heuristic", 1e-6),
        eps: ArrayLike = 1e-8, weight_decay: ArrayLike | None = None,
        mask: Any = None) -> Chain:
    """DoG (Ivgi, Hinder & Carmon, 2023, "DoG is SGD's Best Friend").

    With ``x`` all the params (``x0`` their start) and ``g`` the gradient (plus
    ``weight_decay * x`` where ``mask`` is True, when a decay is given)::

        r <- max(r, ||x - x0||)     (r starts per init_step)
        G <- G + ||g||**2
        x <- x - lr(k) * r / sqrt(G + eps) * g

    See :func:`jtricks.scale_by_dog` for ``init_step``; pass the real params to
    ``init`` (the heuristic reads them). The authors recommend averaging the
    iterates (:mod:`jtricks.averaging`). Same chain and numbers as
    ``optax.contrib.dog``.

    Args:
        learning_rate: a multiplier of DoG's step, >= 0; a float, an array or a
            schedule.
        init_step: ``(kind, value)``: ``("heuristic", a)`` (``a = 1e-6``, or 1e-4
            with batch norm), ``("distance", r0)`` or ``("learning_rate", lr0)``.
        eps: added to the sum of squared norms, >= 0.
        weight_decay: ``None`` for none, else a decay rate >= 0.
        mask: where the decay applies (as :func:`jtricks.add_decayed_weights`).

    Example:
        >>> tx = jt.dog()
    """
    with hp.reporting_as("dog"):
        return chain(_decay_or_identity(weight_decay, mask), scale_by_dog(init_step, eps),
                     scale_by_learning_rate(learning_rate))


def dowg(learning_rate: Any = 1.0, init_estim_sq_dist: ArrayLike | None = None,
         eps: ArrayLike = 1e-4, weight_decay: ArrayLike | None = None,
         mask: Any = None) -> Chain:
    """DoWG (Khaled, Mishchenko & Jin, 2023, "DoWG Unleashed").

    With ``x`` all the params (``x0`` their start) and ``g`` the gradient (plus the
    optional decay)::

        r2 <- max(r2, ||x - x0||**2)     (r2 starts at init_estim_sq_dist, or eps)
        v  <- v + r2 * ||g||**2
        x  <- x - lr(k) * r2 / (sqrt(v) + eps) * g

    Same chain and numbers as ``optax.contrib.dowg``.

    Args:
        learning_rate: a multiplier of DoWG's step, >= 0; a float, an array or a
            schedule.
        init_estim_sq_dist: a first guess of the squared distance to the solution,
            > 0; ``None`` uses ``eps``.
        eps: guards the division, > 0 (>= 0 with ``init_estim_sq_dist``).
        weight_decay: ``None`` for none, else a decay rate >= 0.
        mask: where the decay applies (as :func:`jtricks.add_decayed_weights`).

    Example:
        >>> tx = jt.dowg()
    """
    with hp.reporting_as("dowg"):
        return chain(_decay_or_identity(weight_decay, mask),
                     scale_by_dowg(init_estim_sq_dist, eps),
                     scale_by_learning_rate(learning_rate))


def _check_momo(where: str, learning_rate: Any, lower_bound: Any, weight_decay: Any) -> None:
    hp.check_learning_rate(where, learning_rate,
                           fix="It caps MoMo's step; it may be large, e.g. 1.")
    hp.no_schedule(where, "lower_bound", lower_bound)
    hp.no_schedule(where, "weight_decay", weight_decay)
    hp.check_finite(where, "lower_bound", lower_bound,
                    fix="It is a lower bound of the loss; 0 for a non-negative loss.")
    hp.check_nonnegative(where, "weight_decay", weight_decay,
                         fix="It is a decoupled decay rate; typical values are 0 to 0.1.")


def momo(learning_rate: Any = 1.0, beta: ArrayLike = 0.9, lower_bound: ArrayLike = 0.0,
         weight_decay: ArrayLike = 0.0, adapt_lower_bound: bool = False) -> Momo:
    """MoMo (Schaipp, Ohana, Eickenberg, Defazio & Gower, 2023): SGD with momentum and
    a Polyak-type step from a model of the loss.

    With ``f`` the loss (``update(..., value=f)``), ``g`` the gradient, ``x`` the
    params, ``lb`` the loss's lower bound and ``a = lr(k)``; ``b = beta`` except on
    the first update, where ``b = 0``::

        m     <- b * m + (1 - b) * g
        fbar  <- b * fbar + (1 - b) * f
        gamma <- b * gamma + (1 - b) * <g, x>
        tau    = min(a, max((1 + a*wd) * (fbar - lb - gamma) + <m, x>, 0) / ||m||**2)
                 (0 when ||m||**2 is below float64's eps)
        u      = -(a*wd) / (1 + a*wd) * x - tau * m

    With ``adapt_lower_bound`` the bound is estimated on the fly (see the paper).
    Same numbers as ``optax.contrib.momo``.

    Args:
        learning_rate: caps the step, >= 0; a float, an array or a schedule.
        beta: the momentum's decay, in [0, 1).
        lower_bound: a lower bound of the loss (0 for a non-negative loss).
        weight_decay: decoupled decay, >= 0.
        adapt_lower_bound: estimate the bound on the fly (static).

    Example:
        >>> tx = jt.momo()
        >>> updates, state = tx.update(grads, state, params, value=loss)
    """
    where = "momo"
    _check_momo(where, learning_rate, lower_bound, weight_decay)
    hp.no_schedule(where, "beta", beta)
    hp.check_decay(where, "beta", beta)
    return Momo(learning_rate=hp.as_hyper(learning_rate), beta=beta,
                lower_bound=lower_bound, weight_decay=weight_decay,
                adapt_lower_bound=bool(adapt_lower_bound))


def momo_adam(learning_rate: Any = 1e-2, b1: ArrayLike = 0.9, b2: ArrayLike = 0.999,
              eps: ArrayLike = 1e-8, lower_bound: ArrayLike = 0.0,
              weight_decay: ArrayLike = 0.0, adapt_lower_bound: bool = False) -> MomoAdam:
    """MoMo-Adam (Schaipp et al., 2023): Adam(W) with MoMo's Polyak-type step.

    As :func:`momo` with Adam's moments (``t`` the 1-based step, ``b1`` for the loss
    and ``<g, x>`` averages too, from the first update) and the preconditioner
    ``D = eps + sqrt(v / (1 - b2**t))``::

        m     <- b1 * m + (1 - b1) * g;     v <- b2 * v + (1 - b2) * g**2
        c     = 1 - b1**t
        tau    = min(a / c, max((1 + a*wd) * (fbar - c * lb - gamma) + <m, x>, 0)
                            / <m, m / D>)
        u      = -(a*wd) / (1 + a*wd) * x - tau * m / D

    Same numbers as ``optax.contrib.momo_adam``.

    Args:
        learning_rate: caps the step, >= 0; a float, an array or a schedule.
        b1: decay of the first moment (and of the loss averages), in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: added to the preconditioner, >= 0.
        lower_bound: a lower bound of the loss.
        weight_decay: decoupled decay, >= 0.
        adapt_lower_bound: estimate the bound on the fly (static).

    Example:
        >>> tx = jt.momo_adam()
        >>> updates, state = tx.update(grads, state, params, value=loss)
    """
    where = "momo_adam"
    _check_momo(where, learning_rate, lower_bound, weight_decay)
    for name, value in (("b1", b1), ("b2", b2), ("eps", eps)):
        hp.no_schedule(where, name, value)
    hp.check_decay(where, "b1", b1)
    hp.check_decay(where, "b2", b2)
    hp.check_eps(where, "eps", eps)
    return MomoAdam(learning_rate=hp.as_hyper(learning_rate), b1=b1, b2=b2, eps=eps,
                    lower_bound=lower_bound, weight_decay=weight_decay,
                    adapt_lower_bound=bool(adapt_lower_bound))
