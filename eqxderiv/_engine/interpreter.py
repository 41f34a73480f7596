"""The interpreter: evaluates a jaxpr on jets, equation by equation, with the rule
registered for each primitive (or the fallback)."""

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

from jax.extend import core

from .chains import RunCursor, chain_at
from .compression import compressed, last_uses, narrows, only_dependent
from .jet import Jet, JetContext, bind, const_jets, primals_of
from .registry import lookup


__all__ = ["Evaluation", "eval_jaxpr", "initial_env", "run_jaxpr"]


class Evaluation(NamedTuple):
    """The result of `run_jaxpr`: the output jets, and the jet of every variable
    (what the contraction after the last linear layer reads)."""

    outs: list[Jet]
    env: dict[Any, Jet]


def initial_env(
    jaxpr: core.Jaxpr, consts: Sequence[Any], args: Sequence[Jet]
) -> dict[Any, Jet]:
    """The jets of `jaxpr`'s constants (no tangent) and inputs."""
    env: dict[Any, Jet] = dict(zip(jaxpr.constvars, const_jets(consts)))
    env.update(zip(jaxpr.invars, args))
    return env


def run_jaxpr(
    ctx: JetContext,
    jaxpr: core.Jaxpr,
    env: dict[Any, Jet],
    compress: bool = False,
    start: int = 0,
) -> Evaluation:
    """Evaluates the equations of `jaxpr` from index `start` on, given the jets in
    `env` (the inputs and constants, and the outputs of the equations before
    `start`), which is not modified.

    A run of elementwise equations of one value is evaluated as one elementwise
    map where that saves work (`chains.chain_at`); the jets of its intermediate
    values that nothing after it reads are then not in the returned `env`.

    With `compress`, the K directions are compressed (`compression.compressed`)
    at the first equation whose single output narrows (`compression.narrows`) and
    is, from then on, the only value still needed that carries a tangent.
    """
    env = dict(env)

    def read(v: Any) -> Jet:
        return Jet(v.val, None, None) if isinstance(v, core.Literal) else env[v]

    last_use = last_uses(jaxpr)
    i = start
    runs = RunCursor(start)
    while i < len(jaxpr.eqns):
        eqn = jaxpr.eqns[i]
        jets = [read(v) for v in eqn.invars]
        if all(j.tangent is None for j in jets):
            # Independent of the inputs: evaluated as is, at no extra cost.
            with eqn.ctx.manager:
                env.update(zip(eqn.outvars, const_jets(bind(eqn, primals_of(jets)))))
            i += 1
            continue
        chain = runs.take(i, functools.partial(chain_at, ctx, jaxpr, i, env, last_use))
        if chain is not None and chain.jets is not None:
            # A run of elementwise equations of one value, as one map; its
            # outputs carry curvature, so they are no place to compress.
            env.update(chain.jets)
            i = chain.end
            continue
        with eqn.ctx.manager:
            outs = lookup(eqn.primitive)(ctx, eqn, jets)
        env.update(zip(eqn.outvars, outs))
        if compress and len(eqn.outvars) == 1 and narrows(outs[0]):
            (var,) = eqn.outvars
            live = lambda u: u in env and env[u].tangent is not None  # noqa: E731
            if only_dependent(last_use, i, var, live):
                env[var], ctx = compressed(ctx, outs[0])
                compress = False
        i += 1
    return Evaluation([read(v) for v in jaxpr.outvars], env)


def eval_jaxpr(
    ctx: JetContext, jaxpr: core.Jaxpr, consts: Sequence[Any], args: Sequence[Jet]
) -> list[Jet]:
    """The output jets of `jaxpr` at the input jets `args`."""
    return run_jaxpr(ctx, jaxpr, initial_env(jaxpr, consts, args)).outs
