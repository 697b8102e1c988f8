"""Named optimizers: short chains of building blocks, one module per family.

Everything public is re-exported flat from :mod:`jtricks`; import from there.
"""

from jtricks.optimizers.adaptive import adagrad, adam, adamw, rmsprop
from jtricks.optimizers.sgd import normalized_sgd, sgd

__all__ = ["sgd", "normalized_sgd", "adagrad", "rmsprop", "adam", "adamw"]
