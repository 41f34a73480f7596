"""Collapsed Taylor-mode rules for `custom_linear_solve` (what `jnp.linalg.solve`
and `inv` use) and the determinant functions of `jax.numpy.linalg`, with the
notation and conventions of `linalg.py`."""

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core

from ..interpreter import eval_jaxpr
from ..jet import Jet, JetContext, bind, const_jets, is_float, primals_of, zeros
from ..registry import fallback, register_rule
from .custom import PRIMAL_IS_RULE
from .linear import zero_rule


__all__: list[str] = []

# --------------------------------------------------------------------------------
# custom_linear_solve: x = solve(b), defined as the solution of matvec(c, x) = b.


def _custom_linear_solve(
    ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]
) -> list[Jet]:
    """`x` solves `M(c, x) = b` with `M` linear in `x` (the `matvec` jaxpr, whose
    leading operands are the constants `c`). Differentiating twice,

    $$M(c, x') = b' - \\partial_c M[c'](x), \\qquad
    M(c, x'') = b'' - \\tfrac{d^2}{ds^2} M(c(s), x)\\big|_{x\\,\\text{fixed}}
    - 2\\,\\partial_c M[c'](x').$$

    As in JAX's rule, the inverse of `M(c, .)` is the primitive itself (its
    `solve` jaxpr at the primal constants), and the tangents of the constants of
    `solve` and of the transposed jaxprs are ignored: `solve` is taken to invert
    `matvec`. The terms in `M` come from running the interpreter over `matvec`:
    once with `x` fixed (first order: `d_c M[c'](x)`), once with `x` carrying
    `T_x` and no second-order term (second order: the `x`-fixed curvature plus
    the cross term `2 sum_k w_k d_c M[T_c[k]](T_x[k])`; `M` being linear in `x`
    has no `x`-`x` term). Under `jit` the unused halves of both passes are dead
    code. Auxiliary outputs (`has_aux`) carry no tangent, as in JAX.
    """
    p = eqn.params
    lengths, jaxprs = p["const_lengths"], p["jaxprs"]
    n_consts = sum(lengths)
    n_mv = lengths.matvec
    consts, b_jets = jets[:n_consts], jets[n_consts:]
    outs = bind(eqn, primals_of(jets))
    nb = len(b_jets)
    xs = outs[:nb]
    if not all(is_float(x) for x in xs):
        return fallback(ctx, eqn, jets)
    mv_jets = list(consts[:n_mv])
    live_c = any(j.tangent is not None for j in mv_jets)
    const_primals = primals_of(consts)
    matvec = jaxprs.matvec

    def apply_matvec(x_jets: list[Jet]) -> list[Jet]:
        return eval_jaxpr(ctx, matvec.jaxpr, matvec.consts, mv_jets + x_jets)

    def solve(*rhs: Any) -> list[Any]:
        return bind(eqn, [*const_primals, *rhs])[:nb]

    # First order: rhs_T = T_b - d_c M[T_c](x).
    rhs_t: list[Any] = [j.tangent for j in b_jets]
    if live_c:
        fixed = apply_matvec(const_jets(xs))
        rhs_t = [
            rt if f.tangent is None else (-f.tangent if rt is None else rt - f.tangent)
            for rt, f in zip(rhs_t, fixed)
        ]
    if all(rt is None for rt in rhs_t):
        # Only the constants of `solve` (or of the transposes) vary: JAX's rule
        # gives them no influence.
        return const_jets(outs)
    axes = [None if rt is None else 0 for rt in rhs_t]
    args = [zeros(x) if rt is None else rt for x, rt in zip(xs, rhs_t)]
    ts = jax.vmap(solve, in_axes=axes)(*args)

    # Second order: rhs_S = S_b - (curvature of M(c, x) + 2 cross term).
    rhs_s: list[Any] = [j.second for j in b_jets]
    if live_c:
        moving = apply_matvec([Jet(x, t, None) for x, t in zip(xs, ts)])
        rhs_s = [
            rs if f.second is None else (-f.second if rs is None else rs - f.second)
            for rs, f in zip(rhs_s, moving)
        ]
    if all(rs is None for rs in rhs_s):
        ss: list[Any] = [None] * nb
    else:
        ss = solve(*(zeros(x) if rs is None else rs for x, rs in zip(xs, rhs_s)))
    result = [Jet(x, t, s) for x, t, s in zip(xs, ts, ss)]
    return result + const_jets(outs[nb:])


# --------------------------------------------------------------------------------
# jnp.linalg.det / slogdet: custom_jvp functions whose rules are the derivatives
# of their primal code.

# `jax.numpy.linalg` functions with a custom JVP that, for real matrices, is the
# derivative of the primal implementation, so the rules above can interpret the
# primal (collapsed, instead of a nested JVP of the rule per direction):
# `d log|det A| = tr(A^{-1} dA)` is also what differentiating `sum log|U_ii|`
# of the LU factors gives (the pivoting and the sign being locally constant),
# and `_det = sign * exp(logdet)` then follows by the chain rule. The one
# difference is at an exactly singular matrix, where `_det`'s rule (a cofactor
# solve) stays finite and the primal's derivative does not.
_PRIMAL_IS_RULE = frozenset({"_det", "_slogdet_lu", "_slogdet_small"})
_JNP_LINALG = os.path.join("jax", "_src", "numpy", "linalg.py")


def _jnp_linalg_function(eqn: core.JaxprEqn) -> str | None:
    """The name of the `jax.numpy.linalg` function that a `custom_jvp_call`
    wraps, read off its jaxpr's debug info; `None` for any other function."""
    closed = eqn.params.get("call_jaxpr")
    info = getattr(getattr(closed, "jaxpr", None), "debug_info", None)
    src = getattr(info, "func_src_info", None)
    if not isinstance(src, str):
        return None
    name, _, where = src.partition(" at ")
    return name if _JNP_LINALG in where else None


def _det_primal_is_rule(eqn: core.JaxprEqn, jets: Sequence[Jet]) -> bool:
    real = all(jnp.issubdtype(jnp.result_type(j.primal), jnp.floating) for j in jets)
    return real and _jnp_linalg_function(eqn) in _PRIMAL_IS_RULE


register_rule("custom_linear_solve", _custom_linear_solve)
register_rule("lu_pivots_to_permutation", zero_rule)  # integer-valued
PRIMAL_IS_RULE.append(_det_primal_is_rule)
