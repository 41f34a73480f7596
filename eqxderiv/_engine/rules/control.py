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
and then instantiated as explicit zeros where needed.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core

from ..interpreter import eval_jaxpr
from ..jet import Jet, JetContext, Rule, const_jets, primals_of
from ..registry import register_rule
from .composite import composite


__all__: list[str] = []


# (has a tangent, has a second-order term) for each value of a fixed structure.
Need = tuple[bool, bool]


def _need(jet: Jet, aval: Any) -> Need:
    """What `jet` carries. A second-order term without a tangent cannot come out
    of the rules, but is still read as needing a (zero) tangent, so that a
    tangent of `None` keeps meaning "no curvature either"."""
    if not jnp.issubdtype(aval.dtype, jnp.inexact):
        return False, False
    second = jet.second is not None
    return jet.tangent is not None or second, second


def _union(a: Sequence[Need], b: Sequence[Need]) -> list[Need]:
    return [(ta or tb, sa or sb) for (ta, sa), (tb, sb) in zip(a, b)]


def _instantiate(ctx: JetContext, jet: Jet, aval: Any, need: Need) -> Jet:
    """`jet` with the structure `need`: zeros where a term is needed but `None`,
    every term cast to the value's dtype (branch and loop outputs must agree in
    type too). Needs are unions, so a term is never present but unwanted."""
    dtype = aval.dtype
    primal = jnp.asarray(jet.primal, dtype)
    want_t, want_s = need
    if not want_t:
        assert jet.tangent is None and jet.second is None
        return Jet(primal, None, None)
    k = ctx.weights.shape[0]
    t = jet.tangent
    t = jnp.zeros((k, *aval.shape), dtype) if t is None else t.astype(dtype)
    s = jet.second
    if want_s:
        s = jnp.zeros(aval.shape, dtype) if s is None else s.astype(dtype)
    else:
        assert s is None
    return Jet(primal, t, s)


def _instantiate_all(
    ctx: JetContext, jets: Sequence[Jet], avals: Sequence[Any], needs: Sequence[Need]
) -> list[Jet]:
    return [_instantiate(ctx, j, a, n) for j, a, n in zip(jets, avals, needs)]


def _needs_of(jets: Sequence[Any], avals: Sequence[Any]) -> list[Need]:
    # Works on jets of arrays and on their `eval_shape` (ShapeDtypeStruct leaves):
    # only which terms are `None` is read.
    return [_need(j, a) for j, a in zip(jets, avals)]


def _carry_needs(
    ctx: JetContext,
    step: Callable[..., tuple[list[Jet], Any]],
    init: Sequence[Jet],
    avals: Sequence[Any],
    *args: Any,
) -> list[Need]:
    """The least structure for a loop carry that is closed under the body.

    A carry needs a tangent (second-order term) if its initial value has one, or
    if one iteration from the current structure gives it one; e.g. in
    `c <- c * x` started at a constant, `c` has no tangent before the first
    iteration and a second-order term only after the second. Each round adds at
    least one term, so this ends after at most `2 * len(init)` rounds. The body is
    only traced abstractly (`jax.eval_shape`); nothing runs.
    """
    needs = _needs_of(init, avals)
    for _ in range(2 * len(needs) + 1):

        def once(carry: list[Jet], *a: Any, needs: list[Need] = needs) -> list[Jet]:
            return step(_instantiate_all(ctx, carry, avals, needs), *a)[0]

        out = jax.eval_shape(once, list(init), *args)
        new = _union(needs, _needs_of(out, avals))
        if new == needs:
            return needs
        needs = new
    raise AssertionError("the carry structure did not reach a fixed point")


def _slice_struct(jet: Jet) -> Jet:
    """The abstract per-iteration slice of a stacked (scan axis first) jet."""
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], jnp.result_type(a)), jet
    )


def _move_k(t: Any, src: int, dst: int) -> Any:
    return None if t is None else jnp.moveaxis(t, src, dst)


# --------------------------------------------------------------------------------
# cond


def _cond(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    """`cond(index, *ops)` picks one of `branches`; the jets go through the chosen
    branch's interpretation, `lax.switch`ed on the (tangent-free) index.

    An output has a tangent (second-order term) if it has one in any branch; the
    other branches give explicit zeros there, which is the exact derivative of a
    branch that does not depend on the inputs.
    """
    branches: Sequence[core.ClosedJaxpr] = eqn.params["branches"]
    index, ops = jets[0], jets[1:]
    avals = [v.aval for v in eqn.outvars]

    def run(branch: core.ClosedJaxpr) -> Callable[[list[Jet]], list[Jet]]:
        return lambda ops: eval_jaxpr(ctx, branch.jaxpr, branch.consts, ops)

    needs = [(False, False)] * len(avals)
    for branch in branches:
        needs = _union(needs, _needs_of(jax.eval_shape(run(branch), ops), avals))

    def instantiated(branch: core.ClosedJaxpr) -> Callable[[list[Jet]], list[Jet]]:
        return lambda ops: _instantiate_all(ctx, run(branch)(ops), avals, needs)

    return lax.switch(index.primal, [instantiated(b) for b in branches], ops)


# --------------------------------------------------------------------------------
# scan


def _scan(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    """`scan` over jets: the carry is a list of jets of fixed structure (see
    `_carry_needs`), the consts are closed over as they are (with or without
    tangents), and the stacked inputs and outputs are jets whose primal and
    second-order term have the scan axis first while the tangent has it second,
    `(K, L, ...)`; inside the body the tangent of a slice is `(K, ...)`.
    """
    p = eqn.params
    body: core.ClosedJaxpr = p["jaxpr"]
    nc, nk = p["num_consts"], p["num_carry"]
    consts, init, xs = jets[:nc], jets[nc : nc + nk], jets[nc + nk :]
    avals = body.in_avals[nc : nc + nk]
    # lax.scan slices along the leading axis: move the scan axis before K.
    xs = [Jet(x.primal, _move_k(x.tangent, 1, 0), x.second) for x in xs]

    def step(carry: list[Jet], x: list[Jet]) -> tuple[list[Jet], list[Jet]]:
        outs = eval_jaxpr(ctx, body.jaxpr, body.consts, [*consts, *carry, *x])
        return outs[:nk], outs[nk:]

    needs = _carry_needs(ctx, step, init, avals, [_slice_struct(x) for x in xs])

    def looped(carry: list[Jet], x: list[Jet]) -> tuple[list[Jet], list[Jet]]:
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
    ys = [Jet(y.primal, _move_k(y.tangent, 0, 1), y.second) for y in ys]
    return [*carry, *ys]


# --------------------------------------------------------------------------------
# while


def _while(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    """`while` over jets: the predicate is evaluated on the primals alone (it is
    piecewise constant in the inputs), the body on the carry's jets, whose
    structure is the fixed point of `_carry_needs`.

    The trip count depends on the values, so this is forward only: like JAX's own
    `while_loop`, the result cannot be differentiated in reverse mode.
    """
    p = eqn.params
    cond: core.ClosedJaxpr = p["cond_jaxpr"]
    body: core.ClosedJaxpr = p["body_jaxpr"]
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cond_consts = primals_of(jets[:cn])
    body_consts, init = jets[cn : cn + bn], jets[cn + bn :]
    avals = body.in_avals[bn:]

    def pred(carry: list[Jet]) -> Any:
        args = const_jets([*cond_consts, *primals_of(carry)])
        (out,) = eval_jaxpr(ctx, cond.jaxpr, cond.consts, args)
        return out.primal

    def step(carry: list[Jet]) -> tuple[list[Jet], None]:
        return eval_jaxpr(ctx, body.jaxpr, body.consts, [*body_consts, *carry]), None

    needs = _carry_needs(ctx, step, init, avals)
    return lax.while_loop(
        pred,
        lambda carry: _instantiate_all(ctx, step(carry)[0], avals, needs),
        _instantiate_all(ctx, init, avals, needs),
    )


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
