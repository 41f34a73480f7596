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

Registered here: `triangular_solve`, `cholesky`, `lu`, `eigh`; in
`linear_solve.py`: `custom_linear_solve` (what `jnp.linalg.solve` / `inv` use),
`lu_pivots_to_permutation` (integer) and, for `jnp.linalg.det` / `slogdet`, an
entry in `custom.PRIMAL_IS_RULE` so that those `custom_jvp` functions' primal
code is interpreted. `qr` and the other decompositions take the engine's
fallback.
"""

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core

from ..jet import Jet, JetContext, bind, is_float
from ..registry import fallback, register_rule


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


def _wmm(ctx: JetContext, a: Any, b: Any) -> Any:
    """`sum_k w_k a[k] @ b[k]`, with k contracted in the same `einsum` as the
    matrix index: no `(K, ..., m, n)` product is formed."""
    w = ctx.weights.astype(a.dtype).reshape((-1,) + (1,) * (a.ndim - 1))
    return jnp.einsum("k...ij,k...jl->...il", w * a, b, precision=_HI)


def _per_k(fn: Any, t: Any) -> Any:
    """`fn` applied to every `t[k]` (as one batched call)."""
    return jax.vmap(fn)(t)


def _handled(eqn: core.JaxprEqn, jets: list[Jet]) -> bool:
    """Whether a rule below handles this equation: real floating operands.
    Complex ones would need conjugates in places and are not tested, so they take
    the exact (slower) fallback instead."""
    return all(
        not jnp.issubdtype(jnp.result_type(j.primal), jnp.complexfloating) for j in jets
    ) and all(is_float(j.primal) for j in jets if j.tangent is not None)


# --------------------------------------------------------------------------------
# triangular_solve: X = op(A)^{-1} B (left side) or X = B op(A)^{-1} (right side).


def _triangular_solve(
    ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]
) -> list[Jet]:
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
        return fallback(ctx, eqn, jets)
    a_jet, b_jet = jets
    p = eqn.params
    a = a_jet.primal
    (x,) = bind(eqn, [a, b_jet.primal])
    left = p["left_side"]

    def op(g: Any) -> Any:
        # The part of A's tangent the primitive depends on, as the operator it
        # applies (A, A^T, conj(A), A^H).
        shift = 1 if p["unit_diagonal"] else 0
        g = jnp.tril(g, -shift) if p["lower"] else jnp.triu(g, shift)
        g = _mT(g) if p["transpose_a"] else g
        return jnp.conj(g) if p["conjugate_a"] else g

    def solve(r: Any) -> Any:
        return bind(eqn, [a, r])[0]

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
    return [Jet(x, t, s)]


# --------------------------------------------------------------------------------
# cholesky: L L^H = A.


def _phi(x: Any) -> Any:
    """Lower triangle with the diagonal halved: for symmetric `M`, `Phi(M)` is the
    lower triangular `P` with `P + P^H = M`."""
    n = x.shape[-1]
    return jnp.tril(x) * (1 - 0.5 * jnp.eye(n, dtype=x.dtype))


def _cholesky(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
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
        return fallback(ctx, eqn, jets)
    (a_jet,) = jets
    assert a_jet.tangent is not None
    (out,) = bind(eqn, [a_jet.primal])
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
    return [Jet(out, t, s)]


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


def _lu(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
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
        return fallback(ctx, eqn, jets)
    (a_jet,) = jets
    assert a_jet.tangent is not None
    lu, pivots, perm = bind(eqn, [a_jet.primal])
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
    return [Jet(lu, t, s), Jet(pivots, None, None), Jet(perm, None, None)]


# --------------------------------------------------------------------------------
# eigh: A = V diag(w) V^T.


def _eigh(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
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
        return fallback(ctx, eqn, jets)
    assert a_jet.tangent is not None
    v, w = bind(eqn, [a_jet.primal])
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
    return [Jet(v, t_v, s_v), Jet(w, dw, s_w)]


register_rule("triangular_solve", _triangular_solve)
register_rule("cholesky", _cholesky)
register_rule("lu", _lu)
register_rule("eigh", _eigh)
