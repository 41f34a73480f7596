"""Compression of the K directions where the computation narrows.

Once the computation narrows to one intermediate `z` with `n < K` entries that is
affine in the inputs and, from then on, the only value still needed that depends
on them (a first layer narrower than the input), every later second-order term
depends on the tangents only through their weighted second moment at `z`. The K
directions can then be replaced there by `n` with the same moment. One analysis
decides where that is: `narrows` and `only_dependent`, applied to the jets while
interpreting (`interpreter.run_jaxpr`) or to the jaxpr alone before any tangent
exists (`affine_bottleneck`).
"""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core
from jaxtyping import Array

from .jet import Jet, JetContext, is_real
from .registry import affine_in


__all__ = [
    "affine_bottleneck",
    "compressed",
    "gram_factor",
    "last_uses",
    "narrows",
    "only_dependent",
]


def last_uses(jaxpr: core.Jaxpr) -> dict[Any, int]:
    """For each variable, the index of the last equation that reads it
    (`len(jaxpr.eqns)` for an output)."""
    last: dict[Any, int] = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if not isinstance(v, core.Literal):
                last[v] = i
    for v in jaxpr.outvars:
        if not isinstance(v, core.Literal):
            last[v] = len(jaxpr.eqns)
    return last


def _narrow(shape: tuple[int, ...], dtype: Any, num: int) -> bool:
    # Real floating values only: complex ones have no real Gram factor.
    return math.prod(shape) < num and bool(jnp.issubdtype(dtype, jnp.floating))


def narrows(jet: Jet) -> bool:
    """Whether `jet` has fewer entries than there are directions, while still an
    affine function of the inputs (no second-order term), so its tangents are
    typically the same for every sample."""
    t = jet.tangent
    if t is None or jet.second is not None or not is_real(t):
        return False
    return _narrow(t.shape[1:], t.dtype, t.shape[0])


def only_dependent(
    last_use: dict[Any, int], index: int, var: Any, depends: Callable[[Any], bool]
) -> bool:
    """Whether, after equation `index`, `var` is the only variable still needed
    for which `depends` holds."""
    return not any(
        u is not var and last > index and depends(u) for u, last in last_use.items()
    )


def affine_bottleneck(jaxpr: core.Jaxpr, x: Any, d: int) -> int | None:
    """The index of the first equation whose single output `z` is affine in the
    input `x` (shape `(d,)`), narrows (fewer than `d` real entries), and is, once
    computed, the only value still needed that depends on `x`; `None` if there is
    none before the first non-affine step. Affine means registered as such
    (`registry.RuleInfo.affine_in`): the static counterpart of a jet without a
    second-order term."""
    last_use = last_uses(jaxpr)
    dep = {x}
    for i, eqn in enumerate(jaxpr.eqns):
        ins = [
            j
            for j, v in enumerate(eqn.invars)
            if not isinstance(v, core.Literal) and v in dep
        ]
        if not ins:
            continue
        if len(eqn.outvars) != 1 or not affine_in(eqn, ins):
            return None
        (z,) = eqn.outvars
        dep.add(z)
        shape, dtype = getattr(z.aval, "shape", None), getattr(z.aval, "dtype", None)
        if shape is None or dtype is None:
            return None
        if _narrow(shape, dtype, d) and only_dependent(
            last_use, i, z, dep.__contains__
        ):
            return i
    return None


def compressed(ctx: JetContext, jet: Jet) -> tuple[Jet, JetContext]:
    """Replaces the K tangents `T` of `jet` (weights `w >= 0`) by `n < K` ones `R`
    with the same weighted second moment, `R^T R = T^T diag(w) T`, and unit
    weights.

    Every later second-order term depends on the tangents only through that
    moment (`J (sum_k w_k T_k T_k^T) J^T` at each step), so when nothing else that
    carries a tangent is still needed, the rest of the pass is exact with `n`
    directions instead of `K`. `R` is a factor of the Gram matrix of
    `diag(sqrt(w)) T` (`gram_factor`): exact derivatives of every order as long
    as `T` has full column rank (a first layer whose weights for the inputs have
    full rank).
    """
    assert jet.tangent is not None
    t = jet.tangent
    k, shape = t.shape[0], t.shape[1:]
    n = math.prod(shape)
    w = jnp.sqrt(jnp.maximum(ctx.weights.astype(t.dtype), 0))
    r = gram_factor(w[:, None] * t.reshape(k, n))
    new = Jet(jet.primal, r.reshape((n, *shape)), jet.second)
    # Unit weights in the tangents' dtype: a float32 pass gets no float64 array.
    return new, JetContext(jnp.ones((n,), t.dtype))


def _cholesky_factor(g: Array) -> Array:
    """The upper triangular `R` with `R^T R = g`: NaN where `g` is not
    numerically positive definite."""
    return jnp.linalg.cholesky(g).T


def _full_rank(r: Array) -> Array:
    """Whether the Cholesky factor `r` is finite and far enough from singular for
    the derivative of `_factor_jvp`, which solves with it."""
    diag = jnp.abs(jnp.diagonal(r))
    tol = 8 * jnp.sqrt(jnp.finfo(r.dtype).eps)
    return jnp.all(jnp.isfinite(r)) & (jnp.min(diag) > tol * jnp.max(diag))


def _eigen_factor(g: Array) -> tuple[Array, Array, Array]:
    """`(R, lam, u)` with `R = diag(sqrt(lam)) u^T`, so `R^T R = g`, from the
    eigendecomposition `g = u diag(lam) u^T` (negative round-off clipped)."""
    lam, u = jnp.linalg.eigh(g)
    lam = jnp.maximum(lam, 0)
    return jnp.sqrt(lam)[:, None] * u.T, lam, u


# Evaluated without derivatives, `R` is the Cholesky factor of the `(n, n)` Gram
# matrix (or, where that is singular, a factor from its eigendecomposition); no
# factorisation of the `(K, n)` matrix itself, whose LAPACK QR ran multithreaded
# and took 10-40x longer on a loaded machine than single-threaded.
@jax.custom_jvp
def _factor(work: Array) -> Array:
    g = work.T @ work
    r = _cholesky_factor(g)
    return lax.cond(_full_rank(r), lambda: r, lambda: _eigen_factor(g)[0])


@_factor.defjvp
def _factor_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (work,), (dwork,) = primals, tangents
    g = work.T @ work
    chol = _cholesky_factor(g)
    full = _full_rank(chol)
    # Both branches are computed and one selected (`lax.cond` here would not
    # transpose under `vmap`, where it becomes a select itself); each branch gets
    # inputs on which it is finite, so the other's NaN never leaks through `where`.
    eye = jnp.eye(g.shape[0], dtype=g.dtype)
    r_full = jnp.where(full, chol, eye)
    # Full rank: dR = R^-T a^T da. Then d(R^T R) = a^T da + da^T a exactly, and,
    # as this holds for every `a`, at every order of differentiation (with `R`
    # in it differentiated by this same rule). It is not Cholesky's own
    # derivative (it does not keep `R` triangular), which nothing needs: every
    # later quantity depends on `R` through `R^T R` only.
    rhs = work.T @ dwork
    t_full = jax.scipy.linalg.solve_triangular(r_full, rhs, trans="T", lower=False)
    # Rank-deficient: `R = Q^T a` for the orthonormal `Q = a u diag(lam)^(-1/2)`
    # (columns of zero eigenvalues dropped), with `Q` held constant: `Q Q^T a = a`,
    # so the first derivative of `R^T R` is exactly that of `a^T a`.
    r_def, lam, u = _eigen_factor(jnp.where(full, eye, g))
    keep = lam > 16 * g.shape[0] * jnp.finfo(g.dtype).eps * jnp.max(lam)
    scale = jnp.where(keep, lax.rsqrt(jnp.where(keep, lam, 1)), 0)
    q = lax.stop_gradient((work @ u) * scale[None, :])
    t_def = q.T @ dwork
    return jnp.where(full, r_full, r_def), jnp.where(full, t_full, t_def)


def gram_factor(a: Array) -> Array:
    """An `(n, n)` factor `R` with `R^T R = a^T a`, for `a` of shape `(K, n)`.

    Only `a^T a` is factored: its Cholesky factor where it is numerically
    positive definite, with derivatives of every order exact for `R^T R`;
    elsewhere (a first layer with
    zero rows, as at some initialisations) a factor from its eigendecomposition,
    whose first derivative is taken so that that of `R^T R` is exact (see
    `_factor_jvp`), so parameter gradients stay exact and finite. Half precision
    is factored in float32 (LAPACK has no float16 factorisations).
    """
    dtype = a.dtype
    work = a.astype(jnp.float32) if jnp.finfo(dtype).bits < 32 else a
    r = _factor(work)
    return r.astype(dtype)
