"""Runs of elementwise equations of one value at order K, as one elementwise
map (the order-K form of `../chains.py`).

An activation written inline, such as `jax.nn.gelu`, is eight equations, and
each of its curved steps pays Faà di Bruno's formula over the K orders: its
products of the lower coefficients along every direction. The run is one map
`y = g(a)` of the value `a` it reads, so it pays that formula once, with the
derivatives `g^(m)` of the run's own equations taken by nested `jax.jvp` along
ones (`rules.faa_di_bruno`): JAX's own numbers, as nested autodiff composes
them. What counts as a run, and when one is taken (at least two curved steps),
is `../chains.py`'s; a primitive with a rule of the user's at either order is
interpreted for its own equation.
"""

from typing import Any

from jax.extend import core

from .. import registry as order2
from ..chains import MIN_SUMS, Chain, find_run, read_after, restricted
from .jet import TaylorContext, TaylorJet
from .registry import CHAIN, RULES
from .rules import faa_di_bruno


__all__ = ["chain_at"]


def _builtin(name: str) -> bool:
    return order2.is_builtin(name) and name not in RULES


def _carries(jet: TaylorJet) -> bool:
    return jet.live


def chain_at(
    ctx: TaylorContext,
    jaxpr: core.Jaxpr,
    start: int,
    env: dict[Any, TaylorJet],
    last_use: dict[Any, int],
) -> Chain | None:
    """As `..chains.chain_at`, for order-K jets.

    **Arguments:**

    - `ctx`: the pass's context.
    - `jaxpr`: the jaxpr being interpreted.
    - `start`: the index of the equation to begin at.
    - `env`: the jets of the values computed before it.
    - `last_use`: `..compression.last_uses(jaxpr)`.

    **Returns:** a `Chain` (`jets` `None` where the run would not save work), or
    `None` where no run begins at `start`.
    """
    eqns = jaxpr.eqns
    run = find_run(eqns, start, env, _carries, _builtin)
    if run is None:
        return None
    if run.sums < MIN_SUMS:
        return Chain(run.end, None)
    root = env[run.root]
    jets = {}
    for v in read_after(eqns, run, start, last_use):
        fn = restricted(eqns[start : run.end], run.root, v, env)
        jets[v] = faa_di_bruno(ctx, fn, root, False)
    return Chain(run.end, jets)


CHAIN.append(chain_at)
