"""Collapsed Taylor-mode rules for the linear-algebra primitives (registered into
the engine's rule table on import).

Every factorisation or solve `y = F(a)` here is defined implicitly by an identity
that is polynomial in `(a, y)`: `op(A) X = B`, `L L^H = A`, `L U = P A`,
`matvec(c, x) = b`. Differentiating the identity twice along a line `s -> a + s v`
and solving for the highest derivative of `y` gives its Taylor coefficients
recursively:

$$y' = \\mathcal{J}^{-1}(\\ldots a' \\ldots), \\qquad
y'' = \\mathcal{J}^{-1}\\big(\\ldots a'' \\ldots - Q(y', a')\\big),$$

with the same linear "inverse" for both orders and a quadratic term `Q` in the
first-order coefficients. Summed with the weights `w_k` of the K directions,
`Q` becomes one contraction over k (`sum_k w_k T_1[k] T_2[k]` as a single
`einsum`), and the inverse is applied once to the collapsed second-order term.

The rules follow JAX's own `jvp` rules exactly, including where those are a
convention rather than the derivative of what the primitive computes: only the
triangle of `A` that `triangular_solve` reads is differentiated, the pivoting of
`lu` is locally constant, the tangent of `cholesky` uses its whole (not
necessarily symmetric) input tangent, and `custom_linear_solve` is differentiated
through its `matvec` only.

Registered: `triangular_solve`, `cholesky`, `lu`, `custom_linear_solve` (what
`jnp.linalg.solve` / `inv` use), `eigh`, `lu_pivots_to_permutation` (integer),
and, for `jnp.linalg.det` / `slogdet`, an entry in `_rules_custom.PRIMAL_IS_RULE`
so that those `custom_jvp` functions' primal code is interpreted (see
`_PRIMAL_IS_RULE`). `qr` and the
other decompositions take the engine's fallback.
"""

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core

from ._rules_custom import PRIMAL_IS_RULE
from ._taylor import (
    _RULES,
    _bind,
    _consts,
    _Ctx,
    _eval_jaxpr,
    _fallback,
    _is_float,
    _Jet,
    _primals,
    _zeros,
)


__all__: list[str] = []


_HI = lax.Precision.HIGHEST


# --------------------------------------------------------------------------------
# Matrix helpers. Matrices are the last two axes; a tangent has the K axis in
# front of the matrix's own batch axes.


def _mT(x: Any) -> Any:
    return jnp.swapaxes(x, -1, -2)


def _mH(x: Any) -> Any:
    return jnp.conj(_mT(x))


def _mm(a: Any, b: Any) -> Any:
    """Batched matrix product (broadcasting leading axes, so a K axis on either
    side just rides along)."""
    return jnp.matmul(a, b, precision=_HI)


def _wmm(ctx: _Ctx, a: Any, b: Any) -> Any:
    """`sum_k w_k a[k] @ b[k]`, with k contracted in the same `einsum` as the
    matrix index: no `(K, ..., m, n)` product is formed."""
    w = ctx.weights.astype(a.dtype).reshape((-1,) + (1,) * (a.ndim - 1))
    return jnp.einsum("k...ij,k...jl->...il", w * a, b, precision=_HI)


def _per_k(fn: Any, t: Any) -> Any:
    """`fn` applied to every `t[k]` (as one batched call)."""
    return jax.vmap(fn)(t)


def _handled(eqn: core.JaxprEqn, jets: list[_Jet]) -> bool:
    """Whether a rule below handles this equation: real floating operands.
    Complex ones would need conjugates in places and are not tested, so they take
    the exact (slower) fallback instead."""
    return all(
        not jnp.issubdtype(jnp.result_type(j.primal), jnp.complexfloating) for j in jets
    ) and all(_is_float(j.primal) for j in jets if j.tangent is not None)


# --------------------------------------------------------------------------------
# triangular_solve: X = op(A)^{-1} B (left side) or X = B op(A)^{-1} (right side).


def _triangular_solve(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    """Left side, `op(A) X = B`, differentiated twice:

    $$op(A) X' = B' - op(A') X, \\qquad
    op(A) X'' = B'' - op(A'') X - 2\\, op(A') X'.$$

    Collapsed, `S_X = op(A)^{-1}(S_B - op(S_A) X - 2 sum_k w_k op(T_A[k]) T_X[k])`;
    on the right side, `X op(A) = B`, the products are mirrored. `op` is the
    transpose and/or conjugate of the triangle that the primitive reads (the
    strict triangle with `unit_diagonal`), so the tangents of `A` are masked to it,
    as in JAX's own rule. The inverse is the primitive itself, on the K tangents
    as one extra batch axis.
    """
    if not _handled(eqn, jets):
        return _fallback(ctx, eqn, jets)
    a_jet, b_jet = jets
    p = eqn.params
    a = a_jet.primal
    (x,) = _bind(eqn, [a, b_jet.primal])
    left = p["left_side"]

    def op(g: Any) -> Any:
        # The part of A's tangent the primitive depends on, as the operator it
        # applies (A, A^T, conj(A), A^H).
        shift = 1 if p["unit_diagonal"] else 0
        g = jnp.tril(g, -shift) if p["lower"] else jnp.triu(g, shift)
        g = _mT(g) if p["transpose_a"] else g
        return jnp.conj(g) if p["conjugate_a"] else g

    def solve(r: Any) -> Any:
        return _bind(eqn, [a, r])[0]

    def times_x(g: Any) -> Any:
        return _mm(g, x) if left else _mm(x, g)

    # First order: op(A) T_X = T_B - op(T_A) X.
    r_t = b_jet.tangent
    ta = None if a_jet.tangent is None else op(a_jet.tangent)
    if ta is not None:
        r_t = -times_x(ta) if r_t is None else r_t - times_x(ta)
    assert r_t is not None
    t = _per_k(solve, r_t)

    # Second order.
    terms = []
    if b_jet.second is not None:
        terms.append(b_jet.second)
    if a_jet.second is not None:
        terms.append(-times_x(op(a_jet.second)))
    if ta is not None:
        cross = _wmm(ctx, ta, t) if left else _wmm(ctx, t, ta)
        terms.append(-2 * cross)
    s = solve(sum(terms[1:], terms[0])) if terms else None
    return [_Jet(x, t, s)]


# --------------------------------------------------------------------------------
# cholesky: L L^H = A.


def _phi(x: Any) -> Any:
    """Lower triangle with the diagonal halved: for symmetric `M`, `Phi(M)` is the
    lower triangular `P` with `P + P^H = M`."""
    n = x.shape[-1]
    return jnp.tril(x) * (1 - 0.5 * jnp.eye(n, dtype=x.dtype))


def _cholesky(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    """JAX's tangent is `L' = L P` with `P = Phi(M)`, `M = L^{-1} A' L^{-H}`.
    Differentiating that once more (with `L^{-1} L' = P`):

    $$M' = L^{-1} A'' L^{-H} - P M - M P^H, \\qquad
    L'' = L' P + L \\Phi(M') = L \\big(P P + \\Phi(M')\\big),$$

    so collapsed, with `N = L^{-1} S_A L^{-H}`,

    $$S_L = L \\Big(\\textstyle\\sum_k w_k P_k P_k
    + \\Phi\\big(N - \\sum_k w_k (P_k M_k + M_k P_k^H)\\big)\\Big).$$

    For a symmetric `A'` this equals `L Phi(L^{-1}(S_A - 2 sum_k w_k T_L[k]
    T_L[k]^H) L^{-H})`, the derivative of `L L^H = A`; the longer form also agrees
    with JAX when the input's tangent is not symmetric (`jnp.linalg.cholesky`
    symmetrises first, `lax.linalg.cholesky` need not).
    """
    if not _handled(eqn, jets):
        return _fallback(ctx, eqn, jets)
    (a_jet,) = jets
    assert a_jet.tangent is not None
    (out,) = _bind(eqn, [a_jet.primal])
    # Only the lower triangle of the primitive's output is the factor (the rest
    # is whatever the backend left there); JAX's rule masks it the same way.
    low = jnp.tril(out)

    def sandwich(y: Any) -> Any:
        """`L^{-1} y L^{-H}`."""
        y = lax.linalg.triangular_solve(
            low, y, left_side=False, lower=True, transpose_a=True, conjugate_a=True
        )
        return lax.linalg.triangular_solve(low, y, left_side=True, lower=True)

    m = _per_k(sandwich, a_jet.tangent)
    pk = _phi(m)
    t = _mm(low, pk)
    inner = -(_wmm(ctx, pk, m) + _wmm(ctx, m, _mH(pk)))
    if a_jet.second is not None:
        inner = inner + sandwich(a_jet.second)
    s = _mm(low, _wmm(ctx, pk, pk) + _phi(inner))
    return [_Jet(out, t, s)]


# --------------------------------------------------------------------------------
# lu: L U = P A, with P the (locally constant) row permutation.


def _lu_factors(lu: Any, m: int, n: int) -> tuple[Any, Any]:
    """The unit lower `L` (m, m) and upper `U` (n, n) factors packed in `lu`
    (m, n), padded with identity blocks where the matrix is not square, as in
    JAX's rule (so that both are invertible)."""
    k = min(m, n)
    dtype = lu.dtype
    batch = lu.shape[:-2]
    lower = jnp.tril(lu[..., :, :k], -1)
    lower = jnp.concatenate([lower, jnp.zeros((*batch, m, m - k), dtype)], axis=-1)
    lower = lower + jnp.eye(m, dtype=dtype)
    upper = jnp.triu(lu[..., :k, :])
    upper = jnp.concatenate([upper, jnp.zeros((*batch, n - k, n), dtype)], axis=-2)
    upper = upper + jnp.diag(jnp.concatenate([jnp.zeros(k), jnp.ones(n - k)])).astype(
        dtype
    )
    return lower, upper


def _lu(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    """With `G = L^{-1} P A' U^{-1}` JAX's tangent is
    `lu' = L tril(G, -1) + triu(G) U` (the strict lower part is `L'`, the rest
    `U'`). Differentiating `L U = P A` twice,

    $$L^{-1} L'' + U'' U^{-1} = L^{-1} P A'' U^{-1} - 2 (L^{-1} L') (U' U^{-1}),$$

    where the left side is again split into its strictly lower (`L^{-1} L''`) and
    upper (`U'' U^{-1}`) parts. With `L^{-1} L' = tril(G, -1)` and
    `U' U^{-1} = triu(G)` (restricted to the leading `min(m, n)` columns and rows
    where the matrix is not square), collapsed:

    $$N = L^{-1} P S_A U^{-1} - 2 \\textstyle\\sum_k w_k\\,
    tril(G_k, -1)_{:, :r}\\, triu(G_k)_{:r, :}, \\qquad
    S_{lu} = L\\, tril(N, -1) + triu(N)\\, U,$$

    which is also what nesting JAX's rule gives. The pivots and the permutation
    are integers and carry nothing.
    """
    if not _handled(eqn, jets):
        return _fallback(ctx, eqn, jets)
    (a_jet,) = jets
    assert a_jet.tangent is not None
    lu, pivots, perm = _bind(eqn, [a_jet.primal])
    m, n = lu.shape[-2:]
    r = min(m, n)
    lower, upper = _lu_factors(lu, m, n)

    def permute(y: Any) -> Any:
        # (P y)[i] = y[perm[i]]: row i of the factored matrix is row perm[i].
        return jnp.take_along_axis(y, perm[..., :, None], axis=-2)

    def sandwich(y: Any) -> Any:
        """`L^{-1} P y U^{-1}`."""
        y = lax.linalg.triangular_solve(
            lower, permute(y), left_side=True, lower=True, unit_diagonal=True
        )
        return lax.linalg.triangular_solve(upper, y, left_side=False, lower=False)

    def assemble(g: Any) -> Any:
        return _mm(lower, jnp.tril(g, -1)) + _mm(jnp.triu(g), upper)

    g = _per_k(sandwich, a_jet.tangent)
    t = assemble(g)
    nn = -2 * _wmm(ctx, jnp.tril(g, -1)[..., :, :r], jnp.triu(g)[..., :r, :])
    if a_jet.second is not None:
        nn = nn + sandwich(a_jet.second)
    s = assemble(nn)
    return [_Jet(lu, t, s), _Jet(pivots, None, None), _Jet(perm, None, None)]


# --------------------------------------------------------------------------------
# eigh: A = V diag(w) V^T.


def _eigh(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    """JAX's rule, with `C = V^T A' V` and `F_ij = 1 / (w_j - w_i)` off the
    diagonal (0 on it): `w' = diag(C)`, `V' = V (F o C)`. Nesting it (JAX
    evaluates the eigenvectors and eigenvalues of `sym(A) = (A + A^T) / 2`, whose
    first-order terms use `C_s = sym(C)`; `E = F o C`, `E_s = F o C_s`):

    $$C' = E_s^T C + V^T A'' V + C E_s, \\qquad w'' = diag(C'),$$
    $$V'' = V \\big(E_s E + F' o C + F o C'\\big), \\qquad
    F'_{ij} = -F_{ij}^2 (w'_j - w'_i),$$

    each product of two first-order terms collapsed over k. Real symmetric
    matrices only (complex Hermitian ones take the fallback), and only the full
    decomposition, for which JAX defines derivatives. The rule uses the
    primitive's own eigenvectors, which are JAX's (those of `sym(A)`) whenever
    `A` is symmetric, as `jnp.linalg.eigh` makes it.
    """
    p = eqn.params
    (a_jet,) = jets
    n = jnp.shape(a_jet.primal)[-1]
    subset = p.get("subset_by_index")
    if not _handled(eqn, jets) or subset not in (None, (0, n)):
        return _fallback(ctx, eqn, jets)
    assert a_jet.tangent is not None
    v, w = _bind(eqn, [a_jet.primal])
    eye = jnp.eye(n, dtype=v.dtype)
    f = 1 / (eye + w[..., None, :] - w[..., :, None]) - eye

    c = _mm(_mT(v), _mm(a_jet.tangent, v))  # (K, ..., n, n)
    e = f * c
    e_s = f * (0.5 * (c + _mT(c)))
    dw = jnp.diagonal(c, axis1=-2, axis2=-1)  # (K, ..., n)
    t_v = _mm(v, e)

    s_c = _wmm(ctx, _mT(e_s), c) + _wmm(ctx, c, e_s)
    if a_jet.second is not None:
        s_c = s_c + _mm(_mT(v), _mm(a_jet.second, v))
    gap = dw[..., None, :] - dw[..., :, None]  # (K, ..., n, n): w'_j - w'_i
    df_c = -f * f * ctx.wsum(gap * c)
    s_v = _mm(v, _wmm(ctx, e_s, e) + df_c + f * s_c)
    s_w = jnp.diagonal(s_c, axis1=-2, axis2=-1)
    return [_Jet(v, t_v, s_v), _Jet(w, dw, s_w)]


# --------------------------------------------------------------------------------
# custom_linear_solve: x = solve(b), defined as the solution of matvec(c, x) = b.


def _custom_linear_solve(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
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
    outs = _bind(eqn, _primals(jets))
    nb = len(b_jets)
    xs = outs[:nb]
    if not all(_is_float(x) for x in xs):
        return _fallback(ctx, eqn, jets)
    mv_jets = list(consts[:n_mv])
    live_c = any(j.tangent is not None for j in mv_jets)
    const_primals = _primals(consts)
    matvec = jaxprs.matvec

    def apply_matvec(x_jets: list[_Jet]) -> list[_Jet]:
        return _eval_jaxpr(ctx, matvec.jaxpr, matvec.consts, mv_jets + x_jets)

    def solve(*rhs: Any) -> list[Any]:
        return _bind(eqn, [*const_primals, *rhs])[:nb]

    # First order: rhs_T = T_b - d_c M[T_c](x).
    rhs_t: list[Any] = [j.tangent for j in b_jets]
    if live_c:
        fixed = apply_matvec(_consts(xs))
        rhs_t = [
            rt if f.tangent is None else (-f.tangent if rt is None else rt - f.tangent)
            for rt, f in zip(rhs_t, fixed)
        ]
    if all(rt is None for rt in rhs_t):
        # Only the constants of `solve` (or of the transposes) vary: JAX's rule
        # gives them no influence.
        return _consts(outs)
    axes = [None if rt is None else 0 for rt in rhs_t]
    args = [_zeros(x) if rt is None else rt for x, rt in zip(xs, rhs_t)]
    ts = jax.vmap(solve, in_axes=axes)(*args)

    # Second order: rhs_S = S_b - (curvature of M(c, x) + 2 cross term).
    rhs_s: list[Any] = [j.second for j in b_jets]
    if live_c:
        moving = apply_matvec([_Jet(x, t, None) for x, t in zip(xs, ts)])
        rhs_s = [
            rs if f.second is None else (-f.second if rs is None else rs - f.second)
            for rs, f in zip(rhs_s, moving)
        ]
    if all(rs is None for rs in rhs_s):
        ss: list[Any] = [None] * nb
    else:
        ss = solve(*(_zeros(x) if rs is None else rs for x, rs in zip(xs, rhs_s)))
    result = [_Jet(x, t, s) for x, t, s in zip(xs, ts, ss)]
    return result + _consts(outs[nb:])


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


def _det_primal_is_rule(eqn: core.JaxprEqn, jets: Sequence[_Jet]) -> bool:
    real = all(jnp.issubdtype(jnp.result_type(j.primal), jnp.floating) for j in jets)
    return real and _jnp_linalg_function(eqn) in _PRIMAL_IS_RULE


# --------------------------------------------------------------------------------
# Integer-valued: no tangent.


def _integer_rule(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    return _consts(_bind(eqn, _primals(jets)))


_RULES["triangular_solve"] = _triangular_solve
_RULES["cholesky"] = _cholesky
_RULES["lu"] = _lu
_RULES["custom_linear_solve"] = _custom_linear_solve
_RULES["eigh"] = _eigh
_RULES["lu_pivots_to_permutation"] = _integer_rule
PRIMAL_IS_RULE.append(_det_primal_is_rule)
