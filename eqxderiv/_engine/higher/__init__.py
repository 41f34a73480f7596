"""Collapsed Taylor mode of any order K: an interpreter over jaxprs that carries,
for every value, its derivatives of orders `1, ..., K - 1` along each of R
directions and its order-K derivatives summed with weights (see `jet.py`).

Layout: `jet.py` (the data types), `registry.py` (the rule table and how an
unregistered primitive is handled), `rules.py` (the rules; `control.py` for
`cond`, `scan` and `while`, `linear_solve.py` for `custom_linear_solve`,
`chains.py` for runs of elementwise equations as one map),
`fallback.py` (nested `jax.jvp`, exact for any primitive), `interpreter.py` and
`entry.py`.
"""

from . import (
    chains as chains,
    control as control,
    linear_solve as linear_solve,
    rules as rules,
)
from .entry import collapsed_taylor as collapsed_taylor
from .fallback import derivatives_along as derivatives_along
from .jet import TaylorContext as TaylorContext, TaylorJet as TaylorJet
from .registry import register_taylor_rule as register_taylor_rule
