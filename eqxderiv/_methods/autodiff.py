"""Exact first and second derivatives by JAX's own autodiff, as the methods
share them."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array


Fn = Callable[[Array, Array | None], Array]


def at_time(fn: Fn, t: Array | None) -> Callable[[Array], Array]:
    """`fn` as a function of `x` alone, at the time `t`."""
    return lambda x: fn(x, t)


def exact_jacobian(
    fn: Fn, x: Array, t: Array | None, reverse: bool = True
) -> tuple[Array, Array]:
    """Value and Jacobian `(m, d)`: forward tangents when `d <= m` (or when
    reverse mode does not apply, `reverse=False`), else reverse cotangents,
    whichever needs fewer passes."""
    g = at_time(fn, t)
    if not reverse:
        return g(x), jax.jacfwd(g)(x)
    value, vjp = jax.vjp(g, x)
    m, d = value.shape[0], x.shape[0]
    if d <= m:
        eye = jnp.eye(d, dtype=x.dtype)
        _, cols = jax.vmap(lambda v: jax.jvp(g, (x,), (v,)))(eye)
        return value, cols.T
    eye = jnp.eye(m, dtype=value.dtype)
    (rows,) = jax.vmap(vjp)(eye)
    return value, rows


def time_derivative(fn: Fn, x: Array, t: Array) -> tuple[Array, Array]:
    """Value and time derivative `(m,)`, by one JVP along `t`."""
    return jax.jvp(lambda s: fn(x, s), (t,), (jnp.ones_like(t),))


def hessian(fn: Fn, x: Array, t: Array | None, reverse: bool = True) -> Array:
    """The Hessian `(m, d, d)` of every output."""
    # Forward-over-reverse: d forward passes over one reverse pass; forward over
    # forward where reverse mode does not apply (a `while` loop in the field).
    inner = jax.jacrev if reverse else jax.jacfwd
    return jax.jacfwd(inner(at_time(fn, t)))(x)
