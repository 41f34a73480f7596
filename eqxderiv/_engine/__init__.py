"""The collapsed second-order Taylor-mode engine: an interpreter over jaxprs that
propagates, for every value, its K directional derivatives and one weighted sum
of its K second directional derivatives (see `jet.py`).

Imports nothing else from eqxderiv. Layout: `jet.py` (the data types and small
helpers), `registry.py` (the rule table, `register_rule`, the nested-autodiff
fallback), `interpreter.py`, `rules/` (the rules, registered on import),
`elementwise.py` (elementwise maps: their table and their collapsed jet),
`chains.py` (a run of elementwise equations of one value as one map),
`compression.py` (fewer directions where the computation narrows),
`contraction.py` (a divergence before the last linear layer),
`factored.py` (the divergence in closed form for two-layer fields, with
`structure.py`: which equations are elementwise), `entry.py` (the
entry points), `program.py` (what the methods need to know of a field's
program) and `higher/` (the same propagation at any order K, for derivatives
of order three and more).
"""

from . import rules as rules
from .entry import (
    collapsed_jet as collapsed_jet,
    collapsed_jet_contracted as collapsed_jet_contracted,
    compressed_second as compressed_second,
    divergence_jet as divergence_jet,
)
from .factored import divergence_in_closed_form as divergence_in_closed_form
from .higher import (
    TaylorContext as TaylorContext,
    TaylorJet as TaylorJet,
    collapsed_taylor as collapsed_taylor,
    register_taylor_rule as register_taylor_rule,
)
from .jet import Jet as Jet, JetContext as JetContext, Rule as Rule
from .program import trace_field as trace_field
from .registry import (
    FallbackWarning as FallbackWarning,
    RuleInfo as RuleInfo,
    register_rule as register_rule,
    warn_nested_second_derivatives as warn_nested_second_derivatives,
)
