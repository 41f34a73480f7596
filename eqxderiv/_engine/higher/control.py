"""The order-K rules for control flow: `cond`, `scan` and `while` over jets,
by the same logic as the order-2 ones (`../control_flow.py`): branches and loop
bodies are interpreted, and the jets they pass on are given one fixed structure
(which coefficients are present), the least one closed under the body."""

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from jax.extend import core

from ..control_flow import AbstractJets, Need, cond_rule, scan_rule, while_rule
from .interpreter import eval_taylor_jaxpr
from .jet import TaylorContext, TaylorJet, coefficients
from .registry import register_taylor_rule


class _Jets(AbstractJets[TaylorJet]):
    """Order-K jets for `control_flow`: a `Need` says which of the coefficients
    of orders `1, ..., K` are present; every coefficient of a stacked value has
    the scan axis second (after the direction axis)."""

    def __init__(self, ctx: TaylorContext):
        self.ctx = ctx

    @property
    def terms(self) -> int:
        return self.ctx.order

    def need(self, jet: Any, aval: Any) -> Need:
        if not jnp.issubdtype(aval.dtype, jnp.inexact):
            return (False,) * self.ctx.order
        return tuple(c is not None for c in [*jet.lower, jet.top])

    def instantiate(self, jet: TaylorJet, aval: Any, need: Need) -> TaylorJet:
        dtype = aval.dtype
        R, J = self.ctx.weights.shape
        out = []
        for k, (c, want) in enumerate(zip(coefficients(jet)[1:], need), 1):
            if not want:
                assert c is None
                out.append(None)
                continue
            lead = J if k == self.ctx.order else R
            out.append(
                jnp.zeros((lead, *aval.shape), dtype)
                if c is None
                else jnp.asarray(c, dtype)
            )
        return TaylorJet(jnp.asarray(jet.primal, dtype), tuple(out[:-1]), out[-1])

    def evaluate(
        self, jaxpr: core.Jaxpr, consts: Sequence[Any], jets: list[TaylorJet]
    ) -> list[TaylorJet]:
        return eval_taylor_jaxpr(self.ctx, jaxpr, consts, jets)

    def scan_axis_first(self, jet: TaylorJet) -> TaylorJet:
        return _move(jet, 1, 0)

    def scan_axis_back(self, jet: TaylorJet) -> TaylorJet:
        return _move(jet, 0, 1)


def _move(jet: TaylorJet, src: int, dst: int) -> TaylorJet:
    """Moves the axis `src` of every coefficient to `dst`."""
    mv = lambda c: None if c is None else jnp.moveaxis(c, src, dst)  # noqa: E731
    return TaylorJet(jet.primal, tuple(mv(c) for c in jet.lower), mv(jet.top))


def _cond(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    return cond_rule(_Jets(ctx), eqn, jets)


def _scan(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    return scan_rule(_Jets(ctx), eqn, jets)


def _while(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    return while_rule(_Jets(ctx), eqn, jets)


register_taylor_rule("cond", _cond)
register_taylor_rule("scan", _scan)
register_taylor_rule("while", _while)
