"""The rule table of the order-K engine, and how a primitive without an entry is
handled.

A rule maps `(ctx, eqn, jets)` (at least one input jet live) to the output jets.
Most primitives need no entry of their own: what the order-2 engine's table
(`../registry.py`) records about them decides. A primitive registered there as
linear in some operands acts on every coefficient alike; one registered as
bilinear follows Leibniz's rule; an elementwise one with a single live operand
follows Faà di Bruno's formula with its derivatives taken from JAX; every other
one goes through nested `jax.jvp` per direction (`fallback.py`), which is exact.
"""

from collections.abc import Callable

from jax.extend import core

from .jet import TaylorContext, TaylorJet


__all__ = ["TaylorRule", "lookup", "register_taylor_rule"]


TaylorRule = Callable[[TaylorContext, core.JaxprEqn, list[TaylorJet]], list[TaylorJet]]

RULES: dict[str, TaylorRule] = {}

# Set by `rules.py` on import: the rule for a primitive without an entry.
DEFAULT: list[TaylorRule] = []


def register_taylor_rule(name: str, rule: TaylorRule) -> None:
    """Registers the order-K rule of the primitive called `name`."""
    if not callable(rule):
        raise TypeError(f"`rule` must be callable; got {rule!r}")
    RULES[name] = rule


def lookup(primitive: core.Primitive) -> TaylorRule:
    rule = RULES.get(primitive.name)
    return DEFAULT[0] if rule is None else rule
