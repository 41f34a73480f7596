"""The order-K engine's entry point."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ..program import collapsible, evaluate
from ..registry import warn_nested_second_derivatives
from .fallback import derivatives_along
from .interpreter import eval_taylor_jaxpr
from .jet import TaylorContext, TaylorJet, is_float


__all__ = ["collapsed_taylor"]


def collapsed_taylor(
    fn: Callable[[Array], Array],
    primal: Float[ArrayLike, " n"],
    directions: Float[ArrayLike, "R n"],
    weights: Float[ArrayLike, "R J"],
    order: int,
) -> tuple[Array, Array]:
    """Collapsed Taylor-mode evaluation of order `order` of `fn` at `primal`.

    **Arguments:**

    - `fn`: a function of one array `(n,)` returning one array.
    - `primal`: the point, `(n,)`.
    - `directions`: `R` directions `v_r`, `(R, n)`.
    - `weights`: `(R, J)`: column `j` weights the directions of the `j`-th sum.
    - `order`: `K >= 1`.

    **Returns:** `(fn(primal), top)` with `top` of shape `(J, *out)`,

    $$\\text{top}_j = \\sum_r W_{rj}\\, \\frac{d^K}{ds^K} f(x + s v_r)\\Big|_{s=0},$$

    computed in one pass that carries the derivatives of orders below `K` per
    direction and the order-`K` term summed (see `jet.py`). Every primitive is
    handled exactly: those without a rule by nested `jax.jvp` along each
    direction, with a one-time `eqxderiv.FallbackWarning`. Where a custom rule
    computes its value by other code than its function (see
    `eqxderiv._engine.program.collapsible`), nested autodiff differentiates that
    code, and so does this function: by `K` nested `jax.jvp`s of all of `fn`
    per direction, with the same warning.
    """
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"`order` must be an int >= 1; got {order!r}.")
    primal = jnp.asarray(primal)
    if primal.ndim != 1 or not is_float(primal):
        raise ValueError(
            f"`primal` must be a floating array of shape (n,); got "
            f"{primal.dtype}{list(primal.shape)}."
        )
    directions = jnp.asarray(directions).astype(primal.dtype)
    weights = jnp.asarray(weights)
    if directions.ndim != 2 or directions.shape[1] != primal.shape[0]:
        raise ValueError(
            f"`directions` must have shape (R, n) = (R, {primal.shape[0]}); got "
            f"{directions.shape}."
        )
    if weights.ndim != 2 or weights.shape[0] != directions.shape[0]:
        raise ValueError(
            f"`weights` must have shape (R, J) = ({directions.shape[0]}, J); got "
            f"{weights.shape}."
        )
    closed = jax.make_jaxpr(fn)(primal)
    if len(closed.jaxpr.outvars) != 1:
        raise ValueError(
            f"fn must return a single array; got {len(closed.jaxpr.outvars)} outputs"
        )
    real = jnp.real(jnp.zeros((), primal.dtype)).dtype
    weights = weights.astype(real)
    if not collapsible(closed.jaxpr):
        warn_nested_second_derivatives()
        return _nested(closed, primal, directions, weights, order)
    ctx = TaylorContext(order, weights)
    if order == 1:
        arg = TaylorJet(primal, (), weights.T.astype(primal.dtype) @ directions)
    else:
        arg = TaylorJet(primal, (directions,) + (None,) * (order - 2), None)
    # The engine broadcasts rank-0 and leading-axis operands on purpose (as the
    # order-2 engine does, `../entry.py`).
    with jax.numpy_rank_promotion("allow"):
        (out,) = eval_taylor_jaxpr(ctx, closed.jaxpr, closed.consts, [arg])
    y = jnp.asarray(out.primal)
    J = weights.shape[1]
    top = jnp.zeros((J, *y.shape), y.dtype) if out.top is None else out.top
    return y, top


def _nested(
    closed: Any, primal: Array, directions: Array, weights: Array, order: int
) -> tuple[Array, Array]:
    """`order` nested `jax.jvp`s of the traced function per direction (its
    `custom_vjp` functions given the transpose of their VJP as a forward rule,
    as `jax.hessian` sees them), weighted and summed."""

    def g(a: Array) -> Array:
        (y,) = evaluate(closed.jaxpr, closed.consts, [a], True)
        return y

    def one(v: Array) -> Array:
        zero = jnp.zeros((), weights.dtype)
        return derivatives_along(lambda s: g(primal + s * v), order)(zero)[order]

    tops = jax.vmap(one)(directions)
    top = jnp.tensordot(weights.astype(tops.dtype), tops, axes=[[0], [0]])
    return g(primal), top
