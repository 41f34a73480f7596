"""Brute-force nested autodiff, the reference every other method is tested
against."""

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._quantity import Need, PartialDerivative, Quantities, Quantity as Q
from .abstract import AbstractMethod, FieldProgram
from .autodiff import at_time


class Nested(AbstractMethod):
    """Brute-force nested autodiff, as one writes it by hand: `jax.jacobian`
    for first derivatives, `jax.hessian` traced for Laplacians, Jacobian of the
    trace of the Jacobian for the gradient of the divergence. Every quantity is
    computed separately. This is the reference the other methods are tested
    against; it builds a `(d, d)` Hessian per output for a Laplacian. For a
    field with a `while` loop, through which JAX has no reverse mode, every
    `jax.jacobian` is `jax.jacfwd` instead.

    ```python
    eqxderiv.GradDiv(net, method="nested")(x, t)  # or method=eqxderiv.Nested()
    ```
    """

    stochastic: ClassVar[bool] = False

    # (One line per parameter, as the formatter would have it, repeats the
    # signature of `AbstractJetMethod.compute` line for line.)
    def compute(self, field: FieldProgram, x: Array, t: Array | None,
                needs: frozenset[Need], key: Any) -> Quantities:  # fmt: skip
        fn, reverse, m = field.fn, field.reverse, field.size
        g = at_time(fn, t)
        q: Quantities = {Q.VALUE: g(x)}
        jac = jax.jacobian if reverse else jax.jacfwd
        hess = jax.hessian if reverse else lambda h: jax.jacfwd(jax.jacfwd(h))
        if needs & {Q.JACOBIAN, Q.DIVERGENCE, Q.ADVECTION}:
            q[Q.JACOBIAN] = jac(g)(x)
        if Q.DT in needs:
            if t is None:
                raise ValueError("The time derivative needs a time `t`.")
            q[Q.DT] = jac(lambda s: fn(x, s))(t).reshape(m)
        if Q.DIVERGENCE in needs:
            q[Q.DIVERGENCE] = jnp.trace(q[Q.JACOBIAN])
        if Q.LAPLACIAN in needs:
            q[Q.LAPLACIAN] = jnp.trace(hess(g)(x), axis1=-2, axis2=-1)
        if Q.GRADDIV in needs:
            q[Q.GRADDIV] = jac(lambda a: jnp.trace(jac(g)(a)))(x)
        if Q.ADVECTION in needs:
            q[Q.ADVECTION] = q[Q.JACOBIAN] @ q[Q.VALUE]
        if Q.HESSIAN in needs:
            q[Q.HESSIAN] = hess(g)(x)
        lap = lambda h: lambda a: jnp.trace(hess(h)(a), axis1=-2, axis2=-1)  # noqa: E731
        if Q.BIHARMONIC in needs:
            q[Q.BIHARMONIC] = lap(lap(g))(x)
        if Q.GRADLAPLACIAN in needs:
            q[Q.GRADLAPLACIAN] = jac(lap(g))(x)
        for p in needs:
            if isinstance(p, PartialDerivative):
                # Nested JVPs: `forward` is the field in a form they accept.
                q[p] = _partial(field.forward, x, t, p)
        return q


def _partial(fn: Any, x: Array, t: Array | None, p: PartialDerivative) -> Array:
    """`∂^α f` by one nested `jax.jvp` per index, along the coordinate."""
    if p.t and t is None:
        raise ValueError(f"The partial derivative {p} needs a time `t`.")
    d = x.shape[0]
    h = lambda a, s: fn(a, s)  # noqa: E731
    for i in p.x:
        e = jnp.zeros((d,), x.dtype).at[i].set(1)
        h = (lambda h, e: lambda a, s: jax.jvp(lambda b: h(b, s), (a,), (e,))[1])(h, e)
    for _ in range(p.t):
        h = (
            lambda h: (
                lambda a, s: jax.jvp(lambda r: h(a, r), (s,), (jnp.ones_like(s),))[1]
            )
        )(h)
    return h(x, t)
