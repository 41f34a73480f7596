"""The order-K rules for `custom_linear_solve` (what `jnp.linalg.solve`, `inv`
and `det` use) and `triangular_solve`.

`x` solves `M(c, x) = b`, `M` linear in `x`. Differentiating `k` times along a
direction, with `x(s)` the solution along the curve,

$$M(c, x_k) = b_k - \\big[M(c(s), \\tilde x(s))\\big]_k,$$

where `x~` carries the coefficients `x_1, ..., x_{k-1}` already found and no
`x_k`: the right side is one run of the interpreter over the `matvec` jaxpr.
So the coefficients are found order by order, each by the primitive itself at
the primal constants (its `solve` jaxpr), as JAX's rule does: the constants of
`solve` and of the transposed jaxprs are taken not to vary (`solve` inverts
`matvec`).
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core

from ..jet import bind, zeros
from .interpreter import eval_taylor_jaxpr
from .jet import TaylorContext, TaylorJet, const_jets, is_float
from .registry import register_taylor_rule


def _custom_linear_solve(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    K = ctx.order
    p = eqn.params
    lengths, matvec = p["const_lengths"], p["jaxprs"].matvec
    n_consts = sum(lengths)
    consts, b_jets = jets[:n_consts], jets[n_consts:]
    primals = [j.primal for j in jets]
    outs = bind(eqn, primals)
    nb = len(b_jets)
    xs = outs[:nb]
    if not all(is_float(x) for x in xs):
        return const_jets(outs, K)
    mv = list(consts[: lengths.matvec])
    live_c = any(j.live for j in mv)

    def solve(*rhs: Any) -> list[Any]:
        return bind(eqn, [*primals[:n_consts], *rhs])[:nb]

    found: list[list[Any]] = [[None] * nb for _ in range(K)]  # found[k-1][i]
    for k in range(1, K + 1):
        rhs = [(j.lower[k - 1] if k < K else j.top) for j in b_jets]
        if live_c:
            # [M(c(s), x~(s))]_k, with x~ = x + sum_{j<k} s^j/j! x_j.
            x_jets = [
                TaylorJet(
                    x,
                    tuple(found[j][i] if j < k - 1 else None for j in range(K - 1)),
                    None,
                )
                for i, x in enumerate(xs)
            ]
            moved = eval_taylor_jaxpr(ctx, matvec.jaxpr, matvec.consts, mv + x_jets)
            terms = [(m.lower[k - 1] if k < K else m.top) for m in moved]
            rhs = [
                r if m is None else (-m if r is None else r - m)
                for r, m in zip(rhs, terms)
            ]
        if all(r is None for r in rhs):
            continue
        axes = [None if r is None else 0 for r in rhs]
        args = [zeros(x) if r is None else r for x, r in zip(xs, rhs)]
        found[k - 1] = list(jax.vmap(solve, in_axes=axes)(*args))
    result = [
        TaylorJet(
            x,
            tuple(jnp.asarray(found[k][i]) if found[k][i] is not None else None
                  for k in range(K - 1)),
            found[K - 1][i],
        )
        for i, x in enumerate(xs)
    ]  # fmt: skip
    return result + const_jets(outs[nb:], K)


register_taylor_rule("custom_linear_solve", _custom_linear_solve)


def _triangular_solve(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    """`x = triangular_solve(a, b)` solves `op(A) x = b` (or `x op(A) = b`),
    `A` the triangle of `a` that the parameters name (with a unit diagonal if
    `unit_diagonal`). Differentiating `k` times,

    $$op(A)\\, x_k = b_k - \\sum_{j=1}^k \\binom kj op(A_j)\\, x_{k-j},$$

    solved order by order by the primitive at the primal `a`; the order-K
    products of lower coefficients are summed over the directions at once."""
    K = ctx.order
    p = eqn.params
    a, b = jets
    (x0,) = bind(eqn, [a.primal, b.primal])
    n = jnp.shape(a.primal)[-1]
    mask = jnp.tril(jnp.ones((n, n), bool), -1 if p["unit_diagonal"] else 0)
    if not p["lower"]:
        mask = mask.T

    def op(A: Any) -> Any:
        A = jnp.where(mask, A, jnp.zeros((), A.dtype))
        if p["conjugate_a"]:
            A = jnp.conj(A)
        return jnp.swapaxes(A, -1, -2) if p["transpose_a"] else A

    def times(A: Any, x: Any) -> Any:
        return jnp.matmul(op(A), x) if p["left_side"] else jnp.matmul(x, op(A))

    def solve(rhs: Any) -> Any:
        return bind(eqn, [a.primal, rhs])[0]

    acoef = [a.primal, *a.lower, a.top]
    bcoef = [b.primal, *b.lower, b.top]
    xs: list[Any] = [x0] + [None] * K
    for k in range(1, K + 1):
        rhs = bcoef[k]
        inner = None
        for j in range(1, k + 1):
            A_j, x = acoef[j], xs[k - j]
            if A_j is None or x is None:
                continue
            term = math.comb(k, j) * times(A_j, x)
            if k == K and 0 < j < K:
                # Both per direction: summed with the weights below.
                inner = term if inner is None else inner + term
            else:
                rhs = -term if rhs is None else rhs - term
        if inner is not None:
            top = -ctx.wsum(inner)
            rhs = top if rhs is None else rhs + top
        if rhs is not None:
            xs[k] = jax.vmap(solve)(rhs)
    return [TaylorJet(x0, tuple(xs[1:K]), xs[K])]


register_taylor_rule("triangular_solve", _triangular_solve)
