"""The collapsed Taylor-mode rules, one module per family of primitives; each
registers its rules (`registry.register_rule`) when imported; once all are, they
are recorded as the engine's own (`registry.freeze_builtin_rules`)."""

from ..registry import freeze_builtin_rules
from . import (
    array as array,
    bilinear as bilinear,
    control as control,
    custom as custom,
    elementwise as elementwise,
    linalg as linalg,
    linear as linear,
    linear_solve as linear_solve,
    structural as structural,
)


freeze_builtin_rules()
