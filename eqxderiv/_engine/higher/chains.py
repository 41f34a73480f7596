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

from collections.abc import Callable
from typing import Any

from jax.extend import core

from .. import registry as order2
from ..chains import Chain, take_run
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
    """`..chains.chain_at` (same arguments and result) for order-K jets: each
    output of a taken run by one `faa_di_bruno` of its function of the root."""

    def evaluate(root: TaylorJet, primal: Any) -> Callable[[Callable], TaylorJet]:
        return lambda fn: faa_di_bruno(ctx, fn, root, False)

    return take_run(jaxpr, start, env, last_use, _carries, _builtin, evaluate)


CHAIN.append(chain_at)
