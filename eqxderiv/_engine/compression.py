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
    directions instead of `K`. `R` is the triangular factor of a QR
    decomposition of `diag(sqrt(w)) T`: exact derivatives of every order as long
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


def _differentiable_factor(work: Array) -> Array:
    """`R` as a differentiable function of `work` (see `gram_factor`)."""
    q0, r0 = jnp.linalg.qr(lax.stop_gradient(work))
    diag = jnp.abs(jnp.diagonal(r0))
    tol = 16 * max(work.shape) * jnp.finfo(work.dtype).eps
    full = jnp.min(diag) > tol * jnp.max(diag)
    # Feed QR a well-conditioned matrix where `a` is rank-deficient, so that its
    # (unused) derivative there is finite and no NaN leaks through `where`.
    safe = jnp.where(full, work, jnp.eye(*work.shape, dtype=work.dtype))
    return jnp.where(full, jnp.linalg.qr(safe, mode="r"), q0.T @ work)


# Evaluated without derivatives, `R` is one QR factorisation; the second QR that
# keeps derivatives finite at rank deficiency runs only inside the JVP, so a
# forward-only Laplacian pays for one.
@jax.custom_jvp
def _factor(work: Array) -> Array:
    return jnp.linalg.qr(work, mode="r")


@_factor.defjvp
def _factor_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    return jax.jvp(_differentiable_factor, primals, tangents)


def gram_factor(a: Array) -> Array:
    """An `(n, n)` factor `R` with `R^T R = a^T a`, for `a` of shape `(K, n)`,
    `K > n`: the triangular factor of a QR decomposition.

    Its derivatives are QR's where `a` has full column rank. Where `a` is
    rank-deficient (a first layer with zero rows, as at some initialisations),
    QR has no derivative (its JVP divides by the zero diagonal of `R`, which
    gives NaN gradients); there `R` is computed as `Q^T a` with `Q` held
    constant, which is the same value and whose first derivative gives the exact
    first derivative of `R^T R` (as `Q Q^T a = a`), so parameter gradients stay
    exact. Half precision is factored in float32 (LAPACK has no float16 QR).
    """
    dtype = a.dtype
    work = a.astype(jnp.float32) if jnp.finfo(dtype).bits < 32 else a
    r = _factor(work)
    return r.astype(dtype)
