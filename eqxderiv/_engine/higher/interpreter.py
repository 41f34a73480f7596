"""The order-K interpreter: evaluates a jaxpr on `TaylorJet`s, equation by
equation."""

import functools
from collections.abc import Sequence
from typing import Any

from jax.extend import core

from ..chains import RunCursor
from ..compression import last_uses
from ..jet import bind
from .jet import TaylorContext, TaylorJet, const_jets
from .registry import CHAIN, lookup


__all__ = ["eval_taylor_jaxpr"]


def eval_taylor_jaxpr(
    ctx: TaylorContext,
    jaxpr: core.Jaxpr,
    consts: Sequence[Any],
    args: Sequence[TaylorJet],
) -> list[TaylorJet]:
    """The output jets of `jaxpr` at the input jets `args`. A run of elementwise
    equations of one value is one elementwise map where that saves work
    (`chains.py`)."""
    env: dict[Any, TaylorJet] = dict(
        zip(jaxpr.constvars, const_jets(consts, ctx.order))
    )
    env.update(zip(jaxpr.invars, args))

    def read(v: Any) -> TaylorJet:
        if isinstance(v, core.Literal):
            return const_jets([v.val], ctx.order)[0]
        return env[v]

    last_use = last_uses(jaxpr)
    runs = RunCursor()
    i = 0
    while i < len(jaxpr.eqns):
        eqn = jaxpr.eqns[i]
        jets = [read(v) for v in eqn.invars]
        if any(j.live for j in jets) and CHAIN:
            find = functools.partial(CHAIN[0], ctx, jaxpr, i, env, last_use)
            chain = runs.take(i, find)
            if chain is not None and chain.jets is not None:
                env.update(chain.jets)
                i = chain.end
                continue
        with eqn.ctx.manager:
            if not any(j.live for j in jets):
                outs = const_jets(bind(eqn, [j.primal for j in jets]), ctx.order)
            else:
                outs = lookup(eqn.primitive)(ctx, eqn, jets)
        env.update(zip(eqn.outvars, outs))
        i += 1
    return [read(v) for v in jaxpr.outvars]
