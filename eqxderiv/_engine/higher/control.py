"""The order-K rules for control flow: `cond`, `scan` and `while` over jets, as
the order-2 ones (`../rules/control.py`): branches and loop bodies are
interpreted, and the jets they pass on are given one fixed structure (which
coefficients are present), the least one closed under the body."""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core

from .interpreter import eval_taylor_jaxpr
from .jet import TaylorContext, TaylorJet, coefficients
from .registry import register_taylor_rule


# Which coefficients (orders 1..K) a value carries.
Need = tuple[bool, ...]


def _need(jet: Any, aval: Any, order: int) -> Need:
    if not jnp.issubdtype(aval.dtype, jnp.inexact):
        return (False,) * order
    return tuple(c is not None for c in [*jet.lower, jet.top])


def _union(a: Sequence[Need], b: Sequence[Need]) -> list[Need]:
    return [tuple(x or y for x, y in zip(p, q)) for p, q in zip(a, b)]


def _instantiate(
    ctx: TaylorContext, jet: TaylorJet, aval: Any, need: Need
) -> TaylorJet:
    """`jet` with the structure `need`: zeros where a coefficient is needed but
    `None`, every array in the value's dtype."""
    dtype = aval.dtype
    R, J = ctx.weights.shape
    cs = coefficients(jet)[1:]
    out = []
    for k, (c, want) in enumerate(zip(cs, need), 1):
        if not want:
            assert c is None
            out.append(None)
            continue
        lead = J if k == ctx.order else R
        out.append(
            jnp.zeros((lead, *aval.shape), dtype)
            if c is None
            else jnp.asarray(c, dtype)
        )
    return TaylorJet(jnp.asarray(jet.primal, dtype), tuple(out[:-1]), out[-1])


def _instantiate_all(
    ctx: TaylorContext,
    jets: Sequence[TaylorJet],
    avals: Sequence[Any],
    needs: Sequence[Need],
) -> list[TaylorJet]:
    return [_instantiate(ctx, j, a, n) for j, a, n in zip(jets, avals, needs)]


def _needs_of(
    ctx: TaylorContext, jets: Sequence[Any], avals: Sequence[Any]
) -> list[Need]:
    return [_need(j, a, ctx.order) for j, a in zip(jets, avals)]


def _carry_needs(
    ctx: TaylorContext,
    step: Callable[..., tuple[list[TaylorJet], Any]],
    init: Sequence[TaylorJet],
    avals: Sequence[Any],
    *args: Any,
) -> list[Need]:
    """The least carry structure closed under the body (traced abstractly)."""
    needs = _needs_of(ctx, init, avals)
    for _ in range(ctx.order * len(needs) + 1):

        def once(carry: list[TaylorJet], *a: Any, needs: list[Need] = needs) -> Any:
            return step(_instantiate_all(ctx, carry, avals, needs), *a)[0]

        out = jax.eval_shape(once, list(init), *args)
        new = _union(needs, _needs_of(ctx, out, avals))
        if new == needs:
            return needs
        needs = new
    raise AssertionError("the carry structure did not reach a fixed point")


def _move(jet: TaylorJet, src: int, dst: int) -> TaylorJet:
    """Moves the axis `src` of every coefficient to `dst` (the scan axis before
    or after the leading direction axis)."""
    mv = lambda c: None if c is None else jnp.moveaxis(c, src, dst)  # noqa: E731
    return TaylorJet(jet.primal, tuple(mv(c) for c in jet.lower), mv(jet.top))


def _cond(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    """`cond(index, *ops)`: the chosen branch's interpretation, `lax.switch`ed
    on the (derivative-free) index; an output carries a coefficient if it does
    in any branch (the others give zeros, their exact derivative)."""
    branches: Sequence[core.ClosedJaxpr] = eqn.params["branches"]
    index, ops = jets[0], jets[1:]
    avals = [v.aval for v in eqn.outvars]

    def run(branch: core.ClosedJaxpr) -> Callable[[list[TaylorJet]], list[TaylorJet]]:
        return lambda ops: eval_taylor_jaxpr(ctx, branch.jaxpr, branch.consts, ops)

    needs: list[Need] = [(False,) * ctx.order] * len(avals)
    for branch in branches:
        needs = _union(needs, _needs_of(ctx, jax.eval_shape(run(branch), ops), avals))

    def instantiated(
        branch: core.ClosedJaxpr,
    ) -> Callable[[list[TaylorJet]], list[TaylorJet]]:
        return lambda ops: _instantiate_all(ctx, run(branch)(ops), avals, needs)

    return lax.switch(index.primal, [instantiated(b) for b in branches], ops)


def _scan(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    """`scan` over jets: consts closed over, the carry of fixed structure, the
    stacked inputs and outputs with the scan axis second in every coefficient
    (after the direction axis) and first inside the loop."""
    p = eqn.params
    body: core.ClosedJaxpr = p["jaxpr"]
    nc, nk = p["num_consts"], p["num_carry"]
    consts, init, xs = jets[:nc], jets[nc : nc + nk], jets[nc + nk :]
    avals = body.in_avals[nc : nc + nk]
    xs = [_move(x, 1, 0) for x in xs]

    def step(
        carry: list[TaylorJet], x: list[TaylorJet]
    ) -> tuple[list[TaylorJet], list[TaylorJet]]:
        outs = eval_taylor_jaxpr(ctx, body.jaxpr, body.consts, [*consts, *carry, *x])
        return outs[:nk], outs[nk:]

    def sliced(x: TaylorJet) -> Any:
        return jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], jnp.result_type(a)), x
        )

    needs = _carry_needs(ctx, step, init, avals, [sliced(x) for x in xs])

    def looped(
        carry: list[TaylorJet], x: list[TaylorJet]
    ) -> tuple[list[TaylorJet], list[TaylorJet]]:
        out, ys = step(carry, x)
        return _instantiate_all(ctx, out, avals, needs), ys

    carry, ys = lax.scan(
        looped,
        _instantiate_all(ctx, init, avals, needs),
        xs,
        length=p["length"],
        reverse=p["reverse"],
        unroll=p["unroll"],
    )
    return [*carry, *(_move(y, 0, 1) for y in ys)]


def _while(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    """`while` over jets: the predicate on the primals alone (it is piecewise
    constant), the body on the carry's jets of fixed structure. Forward only,
    like JAX's own `while_loop`."""
    p = eqn.params
    cond: core.ClosedJaxpr = p["cond_jaxpr"]
    body: core.ClosedJaxpr = p["body_jaxpr"]
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cond_consts = [j.primal for j in jets[:cn]]
    body_consts, init = jets[cn : cn + bn], jets[cn + bn :]
    avals = body.in_avals[bn:]

    def pred(carry: list[TaylorJet]) -> Any:
        args = [*cond_consts, *(c.primal for c in carry)]
        return core.jaxpr_as_fun(cond)(*args)[0]

    def step(carry: list[TaylorJet]) -> tuple[list[TaylorJet], None]:
        outs = eval_taylor_jaxpr(ctx, body.jaxpr, body.consts, [*body_consts, *carry])
        return outs, None

    needs = _carry_needs(ctx, step, init, avals)
    return lax.while_loop(
        pred,
        lambda carry: _instantiate_all(ctx, step(carry)[0], avals, needs),
        _instantiate_all(ctx, init, avals, needs),
    )


register_taylor_rule("cond", _cond)
register_taylor_rule("scan", _scan)
register_taylor_rule("while", _while)
