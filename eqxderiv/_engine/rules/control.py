"""Collapsed Taylor-mode rules for control flow: `scan`, `cond` and `while`
bodies, and those of calls (`jit`, `remat`, ...), are interpreted in place
(registered into the engine's rule table on import).

The jet of a composition is the composition of the jets: for `y = f(u)`,

$$(u, T_u, S_u) \\mapsto \\big(f(u),\\; f'(u) T_u,\\;
f'(u) S_u + \\textstyle\\sum_k w_k f''(u)[T_{u,k}, T_{u,k}]\\big)$$

is exactly what the interpreter computes, and a loop `c_{i+1} = f(c_i, x_i)` is
a composition of such maps. So a loop over jets, whose body is the interpreter
run on the loop's body, gives the jet of the loop; likewise a branch on jets is
the jet of the branch, since the index does not depend on the inputs' directions
(it is piecewise constant). The only work is structural: `lax.scan`,
`lax.while_loop` and `lax.switch` need the same pytree structure on every
iteration and in every branch, while the interpreter encodes zero tangents and
second-order terms as `None`. Those are found beforehand by tracing the bodies
abstractly (a fixed point over the loop carry, as in JAX's own `jvp` of `scan`)
and then instantiated as explicit zeros where needed. That work is shared with
the order-K rules (`higher/control.py`) in `../control_flow.py`; this module
says what an order-2 jet's terms are.
"""

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from jax.extend import core

from ..control_flow import AbstractJets, Need, cond_rule, scan_rule, while_rule
from ..interpreter import eval_jaxpr
from ..jet import Jet, JetContext, Rule
from ..registry import register_rule
from .composite import composite


__all__: list[str] = []


class _Jets(AbstractJets[Jet]):
    """Order-2 jets for `control_flow`: a `Need` is (has a tangent, has a
    second-order term); a stacked value's tangent is `(K, L, ...)` (the scan axis
    second) while its primal and second-order term have the scan axis first."""

    def __init__(self, ctx: JetContext):
        self.ctx = ctx

    @property
    def terms(self) -> int:
        return 2

    def need(self, jet: Any, aval: Any) -> Need:
        # A second-order term without a tangent cannot come out of the rules,
        # but is still read as needing a (zero) tangent, so that a tangent of
        # `None` keeps meaning "no curvature either".
        if not jnp.issubdtype(aval.dtype, jnp.inexact):
            return False, False
        second = jet.second is not None
        return jet.tangent is not None or second, second

    def instantiate(self, jet: Jet, aval: Any, need: Need) -> Jet:
        dtype = aval.dtype
        primal = jnp.asarray(jet.primal, dtype)
        want_t, want_s = need
        if not want_t:
            assert jet.tangent is None and jet.second is None
            return Jet(primal, None, None)
        k = self.ctx.weights.shape[0]
        t = jet.tangent
        t = jnp.zeros((k, *aval.shape), dtype) if t is None else t.astype(dtype)
        s = jet.second
        if want_s:
            s = jnp.zeros(aval.shape, dtype) if s is None else s.astype(dtype)
        else:
            assert s is None
        return Jet(primal, t, s)

    def evaluate(
        self, jaxpr: core.Jaxpr, consts: Sequence[Any], jets: list[Jet]
    ) -> list[Jet]:
        return eval_jaxpr(self.ctx, jaxpr, consts, jets)

    def scan_axis_first(self, jet: Jet) -> Jet:
        return Jet(jet.primal, _move_k(jet.tangent, 1, 0), jet.second)

    def scan_axis_back(self, jet: Jet) -> Jet:
        return Jet(jet.primal, _move_k(jet.tangent, 0, 1), jet.second)


def _move_k(t: Any, src: int, dst: int) -> Any:
    return None if t is None else jnp.moveaxis(t, src, dst)


def _cond(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    return cond_rule(_Jets(ctx), eqn, jets)


def _scan(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    return scan_rule(_Jets(ctx), eqn, jets)


def _while(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    return while_rule(_Jets(ctx), eqn, jets)


# --------------------------------------------------------------------------------
# calls: recurse into the inner jaxpr


def _call_rule(*param_names: str) -> Rule:
    def rule(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
        inner = eqn.params[next(n for n in param_names if n in eqn.params)]
        if isinstance(inner, core.ClosedJaxpr):
            return eval_jaxpr(ctx, inner.jaxpr, inner.consts, jets)
        return eval_jaxpr(ctx, inner, (), jets)

    return rule


register_rule("cond", _cond)
register_rule("scan", _scan)
register_rule("while", _while)
# jit (what `filter_jit` and many jnp functions produce), remat and plain calls are
# inlined into the surrounding trace: they only structure the primal program.
# custom_jvp / custom_vjp functions follow their own derivative rules (`custom.py`).
# A call of an elementwise function (an activation) is one elementwise map
# instead (`composite.py`).
register_rule("jit", composite(_call_rule("jaxpr")))
register_rule("pjit", composite(_call_rule("jaxpr")))  # older name of "jit"
register_rule("remat2", _call_rule("jaxpr"))
register_rule("checkpoint", _call_rule("jaxpr"))
register_rule("closed_call", composite(_call_rule("call_jaxpr")))
register_rule("call", _call_rule("call_jaxpr"))
