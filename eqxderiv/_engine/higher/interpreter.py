"""The order-K interpreter: evaluates a jaxpr on `TaylorJet`s, equation by
equation."""

from collections.abc import Sequence
from typing import Any

from jax.extend import core

from ..jet import bind
from .jet import TaylorContext, TaylorJet, const_jets
from .registry import lookup


__all__ = ["eval_taylor_jaxpr"]


def eval_taylor_jaxpr(
    ctx: TaylorContext,
    jaxpr: core.Jaxpr,
    consts: Sequence[Any],
    args: Sequence[TaylorJet],
) -> list[TaylorJet]:
    """The output jets of `jaxpr` at the input jets `args`."""
    env: dict[Any, TaylorJet] = dict(
        zip(jaxpr.constvars, const_jets(consts, ctx.order))
    )
    env.update(zip(jaxpr.invars, args))

    def read(v: Any) -> TaylorJet:
        if isinstance(v, core.Literal):
            return const_jets([v.val], ctx.order)[0]
        return env[v]

    for eqn in jaxpr.eqns:
        jets = [read(v) for v in eqn.invars]
        with eqn.ctx.manager:
            if not any(j.live for j in jets):
                outs = const_jets(bind(eqn, [j.primal for j in jets]), ctx.order)
            else:
                outs = lookup(eqn.primitive)(ctx, eqn, jets)
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]
