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
from typing import Any

from jax.extend import core

from .jet import TaylorContext, TaylorJet


__all__ = ["TaylorRule", "lookup", "register_taylor_rule"]


TaylorRule = Callable[[TaylorContext, core.JaxprEqn, list[TaylorJet]], list[TaylorJet]]

RULES: dict[str, TaylorRule] = {}

# Set by `rules.py` on import: the rule for a primitive without an entry, and
# the rule of an elementwise primitive.
DEFAULT: list[TaylorRule] = []
ELEMENTWISE: list[TaylorRule] = []
# Set by `chains.py` on import: `chain_at(ctx, jaxpr, start, env, last_use)`,
# which evaluates a run of elementwise equations as one map (a `..chains.Chain`,
# or `None`).
CHAIN: list[Callable[..., Any]] = []


def register_taylor_rule(
    primitive: core.Primitive | str,
    rule: TaylorRule | None = None,
    *,
    elementwise: bool = False,
) -> None:
    """Registers the rule of a primitive for derivatives of order three and more
    (and mixed partials): the `Partial`, `Biharmonic` passes and the stochastic
    biharmonic. Without one, a primitive registered with
    [`eqxderiv.register_rule`][] as linear (`linear_in`) or as a product
    (`bilinear`) is handled at every order from that alone; any other goes
    through nested `jax.jvp` along each direction (exact, with a one-time
    `eqxderiv.FallbackWarning`).

    **Arguments:**

    - `primitive`: the primitive, or its name.
    - `rule`: `rule(ctx, eqn, jets) -> list[TaylorJet]`. `ctx` is an
        [`eqxderiv.TaylorContext`][] (`ctx.order` is `K`, `ctx.weights` the
        `(R, J)` weights, `ctx.wsum(x)` sums `(R, ...)` to `(J, ...)`); each jet
        is an [`eqxderiv.TaylorJet`][] `(primal, lower, top)`: `lower[k - 1]` the
        k-th derivatives `(R, *shape)` along the R directions, for
        `k < K`, and `top` the order-K derivatives summed with the weights,
        `(J, *shape)`; any of them may be `None` for zero. It returns one jet per
        output.
    - `elementwise`: instead of a `rule`, declare the primitive elementwise (each
        output entry a function of the same entries of the operands): its
        derivatives of every order are then taken from its own JVP rule, by
        Faà di Bruno's formula, which needs that rule to be differentiable.

    **Example:**

    ```python
    eqxderiv.register_rule(cube_p, cube_rule)  # orders 1 and 2
    eqxderiv.register_taylor_rule(cube_p, elementwise=True)  # order 3 and more
    ```
    """
    name = primitive if isinstance(primitive, str) else primitive.name
    if elementwise:
        if rule is not None:
            raise ValueError(
                f"register_taylor_rule({name!r}): pass a `rule` or "
                "`elementwise=True`, not both"
            )
        rule = ELEMENTWISE[0]
    if rule is None:
        raise ValueError(
            f"register_taylor_rule({name!r}): pass a `rule`, or `elementwise=True`"
        )
    if not callable(rule):
        raise TypeError(f"`rule` must be callable; got {rule!r}")
    RULES[name] = rule


def lookup(primitive: core.Primitive) -> TaylorRule:
    rule = RULES.get(primitive.name)
    return DEFAULT[0] if rule is None else rule
