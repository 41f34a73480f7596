"""Elementwise maps: which primitives act elementwise, which of their second
partials may be nonzero, and the collapsed jet of an elementwise function with
its partial derivatives taken from JAX's own derivative rules (the rules in
`rules/elementwise.py`, `rules/composite.py` and `chains.py` are built on it).

For `y = g(a_1, ..., a_n)` applied elementwise,

$$T_y = \\sum_i g_i T_{a_i}, \\qquad
S_y = \\sum_i g_i S_{a_i} + \\sum_{i, j} g_{ij} \\sum_k w_k T_{a_i}[k] T_{a_j}[k],$$

where `g_i = ∂g/∂a_i` and `g_ij = ∂(g_i)/∂a_j` are computed by `jax.jvp` along a
tensor of ones, once per primitive application (not per direction). So every
convention JAX chooses, at a kink (`abs` at 0 has slope 1, `relu` at 0 slope 0),
at a tie (`max(a, a)` splits the derivative evenly, `clamp` at its bounds has
none) or at a special point (`pow(0, b)`, a custom rule's safe branch), is the one
nested `jax.jacfwd` / `jax.hessian` would use, and the mixed term uses `g_ij` and
`g_ji` exactly where nested autodiff does.

Which second partials vanish identically is metadata of each primitive (for
custom functions it is read off the traced second partial), so that a piecewise
linear function (`abs`, `max`, `relu`) pays for no second-order product.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .jet import Jet, JetContext, add_terms, lift, mul_terms, primals_of, single_jet


__all__ = [
    "CURVATURE",
    "ELEMENTWISE",
    "HOLOMORPHIC",
    "Curvature",
    "elementwise_jet",
    "partial_derivative",
]


# Which second partials `(i, j)` (`∂(∂g/∂a_i)/∂a_j`) may be nonzero: "all", or a
# set of pairs. Unary primitives with a curvature.
_CURVED_UNARY = (
    "tanh",
    "logistic",
    "exp",
    "exp2",
    "expm1",
    "log",
    "log1p",
    "sin",
    "cos",
    "tan",
    "sinh",
    "cosh",
    "asin",
    "acos",
    "atan",
    "asinh",
    "acosh",
    "atanh",
    "sqrt",
    "rsqrt",
    "cbrt",
    "erf",
    "erfc",
    "erf_inv",
    "lgamma",
    "digamma",
    "bessel_i0e",
    "bessel_i1e",
    "square",
)

Curvature = str | frozenset[tuple[int, int]]

CURVATURE: dict[str, Curvature] = {name: "all" for name in _CURVED_UNARY}
CURVATURE.update(
    {
        # a / b: linear in a.
        "div": frozenset({(0, 1), (1, 0), (1, 1)}),
        "pow": "all",
        "atan2": "all",
        # In the second argument only (the first is the order, or a parameter).
        "polygamma": frozenset({(1, 1)}),
        "igamma": "all",
        "igammac": "all",
        # Piecewise linear: JAX's first partials are piecewise constant.
        "abs": frozenset(),
        "max": frozenset(),
        "min": frozenset(),
        "clamp": frozenset(),
        "rem": frozenset(),
    }
)

# Holomorphic primitives: for complex operands, `T_y = g'(z) T` still holds with
# the complex derivative. Every other elementwise primitive on complex values
# (`abs` of a complex number, ...) goes through nested autodiff, which follows
# JAX's definition of a real directional derivative.
HOLOMORPHIC = (
    frozenset(_CURVED_UNARY)
    - {"exp2", "cbrt", "erf", "erfc", "erf_inv", "lgamma", "digamma"}
    - {"bessel_i0e", "bessel_i1e"}
) | {"integer_pow", "div", "pow"}


# The primitives that act elementwise on operands of one shape (or scalars).
ELEMENTWISE: frozenset[str] = frozenset(CURVATURE) | {
    "integer_pow",
    "add",
    "add_any",
    "sub",
    "mul",
    "neg",
    "sign",
    "floor",
    "ceil",
    "round",
    "is_finite",
    "convert_element_type",
    "reduce_precision",
    "select_n",
    "copy",
    "copy_p",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "and",
    "or",
    "not",
    "xor",
}


def partial_derivative(fn: Callable[..., Any], i: int) -> Callable[..., Any]:
    """`∂fn/∂a_i` of an elementwise `fn`, by JAX's `jvp` along ones."""

    def d(*args: Any) -> Any:
        def along(ai: Any) -> Any:
            new = list(args)
            new[i] = ai
            return fn(*new)

        ai = args[i]
        return jax.jvp(along, (ai,), (jnp.ones_like(ai),))[1]

    return d


def _curved(curvature: Curvature, i: int, j: int) -> bool:
    return curvature == "all" or (i, j) in frozenset(curvature)


def elementwise_jet(
    ctx: JetContext,
    fn: Callable[..., Any],
    jets: Sequence[Jet],
    curvature: Curvature | Callable[[int, int], bool],
) -> list[Jet]:
    """The output jet of the elementwise `fn(*primals) -> array`.

    `curvature` says which second partials may be nonzero (a `Curvature`, or a
    predicate on `(i, j)`); the others are skipped along with their products.
    """
    primals = [jnp.asarray(p) for p in primals_of(jets)]
    y = fn(*primals)
    if not jnp.issubdtype(y.dtype, jnp.inexact):
        return [Jet(y, None, None)]
    live = [i for i, j in enumerate(jets) if j.tangent is not None]
    ts = {i: lift(jets[i].tangent, y.ndim) for i in live}
    if callable(curvature):
        curved = curvature
    else:
        curved = lambda i, j: _curved(curvature, i, j)  # noqa: E731
    t = s = None
    for i in live:
        gi = partial_derivative(fn, i)(*primals)
        t = add_terms(t, mul_terms(gi, ts[i]))
        s = add_terms(s, mul_terms(gi, jets[i].second))
    for n, i in enumerate(live):
        for j in live[n:]:
            # The collapsed sum over directions pairs T_i with T_j and T_j with
            # T_i: nested autodiff uses ∂g_i/∂a_j for one and ∂g_j/∂a_i for the
            # other, which differ at some special points.
            pairs = [(i, j)] if i == j else [(i, j), (j, i)]
            coef = None
            for a, b in pairs:
                if curved(a, b):
                    coef = add_terms(
                        coef, partial_derivative(partial_derivative(fn, a), b)(*primals)
                    )
            if coef is not None:
                s = add_terms(s, coef * ctx.quad(ts[i], ts[j]))  # pyright: ignore
    return single_jet(y, t, s)
