"""Named optimizers: short chains of building blocks, one module per family.

Everything public is re-exported flat from :mod:`jtricks`; import from there.
"""

from jtricks.optimizers.adam_variants import (
    adabelief,
    adamax,
    adamaxw,
    amsgrad,
    nadam,
    nadamw,
    radam,
    yogi,
)
from jtricks.optimizers.adaptive import adagrad, adam, adamw, rmsprop
from jtricks.optimizers.classic import (
    adadelta,
    adan,
    noisy_sgd,
    novograd,
    optimistic_adam,
    optimistic_adam_v2,
    optimistic_gradient_descent,
    polyak_sgd,
    rprop,
    sm3,
)
from jtricks.optimizers.factored import adafactor
from jtricks.optimizers.galore import galore
from jtricks.optimizers.lbfgs import lbfgs, value_and_grad_from_state
from jtricks.optimizers.mars import mars
from jtricks.optimizers.moments import acprop, ademamix, adopt, madgrad, simplified_ademamix
from jtricks.optimizers.muon import muon
from jtricks.optimizers.parameter_free import (
    cocob,
    dadapt_adamw,
    dog,
    dowg,
    momo,
    momo_adam,
    prodigy,
)
from jtricks.optimizers.preconditioned import shampoo, soap
from jtricks.optimizers.privacy import dpsgd
from jtricks.optimizers.schedule_free import schedule_free_adamw, schedule_free_sgd
from jtricks.optimizers.sgd import normalized_sgd, sgd
from jtricks.optimizers.sign import lion, sign_sgd, signum
from jtricks.optimizers.sophia import sophia
from jtricks.optimizers.trust_ratio import fromage, lamb, lars

__all__ = [
    "sgd", "normalized_sgd", "adagrad", "rmsprop", "adam", "adamw",
    "amsgrad", "adamax", "adamaxw", "adabelief", "yogi", "radam", "nadam", "nadamw",
    "lion", "sign_sgd", "signum", "adafactor", "muon", "lamb", "lars", "fromage",
    "novograd", "adadelta", "rprop", "sm3", "polyak_sgd", "optimistic_gradient_descent",
    "optimistic_adam", "optimistic_adam_v2", "adan", "noisy_sgd",
    "ademamix", "simplified_ademamix", "adopt", "acprop", "madgrad", "lbfgs",
    "value_and_grad_from_state", "sophia", "galore", "prodigy", "dadapt_adamw", "cocob",
    "dog", "dowg", "momo", "momo_adam", "dpsgd", "schedule_free_sgd", "schedule_free_adamw",
    "mars", "soap", "shampoo",
]
