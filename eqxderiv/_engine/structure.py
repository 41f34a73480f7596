"""Structural facts about jaxprs: which equations act elementwise.

An elementwise map `a = g(z)` (every output entry a function of the same entry
of `z` alone) has a diagonal Jacobian, `diag(g'(z))`, and `g'(z)` is one
`jax.jvp` along a tensor of ones. The engine uses this to treat a composite
activation (`silu`, `gelu`, `softplus`, ...) as one elementwise function, and to
find the elementwise layers of a field (`factored.py`). The test is structural
and conservative: a primitive counts as elementwise only if it is in
`ELEMENTWISE` (or is a call of a jaxpr that passes the test), every operand that
depends on the inputs has the shape of the inputs, and every other operand is of
that shape or a scalar. A `custom_jvp` function passes only if its primal does;
`diagonal_jvp` also checks its derivative rule, which is what autodiff uses.
`flat_jvp` tells when such a map has no curvature (a piecewise linear
activation), so that no second-order product need be paid for it.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core

from .elementwise import ELEMENTWISE


__all__ = [
    "ELEMENTWISE",
    "diagonal_jvp",
    "elementwise_eqn",
    "elementwise_jaxpr",
    "flat_jvp",
]


# Calls of a jaxpr (the parameter that holds it), checked by recursion.
_CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
}


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(getattr(v.aval, "shape", ()))


def _inner(eqn: core.JaxprEqn) -> core.Jaxpr | None:
    name = _CALLS.get(eqn.primitive.name)
    if name is None:
        return None
    inner = eqn.params[name]
    return inner.jaxpr if isinstance(inner, core.ClosedJaxpr) else inner


def elementwise_eqn(
    eqn: core.JaxprEqn, dependent: Sequence[bool], shape: tuple[int, ...]
) -> bool:
    """Whether `eqn` acts elementwise on its operands marked `dependent`, all of
    shape `shape` (see the module docstring)."""
    if not any(dependent):
        return True
    for v, dep in zip(eqn.invars, dependent):
        s = _shape(v)
        if s != shape and (dep or s != ()):
            return False
    if any(_shape(v) != shape for v in eqn.outvars):
        return False
    inner = _inner(eqn)
    if inner is not None:
        return elementwise_jaxpr(inner, dependent, shape)
    return eqn.primitive.name in ELEMENTWISE


def elementwise_jaxpr(
    jaxpr: core.Jaxpr, dependent: Sequence[bool], shape: tuple[int, ...]
) -> bool:
    """Whether every output of `jaxpr` that depends on its inputs marked
    `dependent` (all of shape `shape`) is an elementwise function of them."""
    deps = {v for v, d in zip(jaxpr.invars, dependent) if d}
    for eqn in jaxpr.eqns:
        marks = [not isinstance(v, core.Literal) and v in deps for v in eqn.invars]
        if not elementwise_eqn(eqn, marks, shape):
            return False
        if any(marks):
            deps.update(eqn.outvars)
    return True


def diagonal_jvp(fn: Callable[[Any], Any], z: Any) -> bool:
    """Whether `fn` (of one array) and its JVP, as JAX's autodiff traces it
    (custom rules included), are elementwise in `z` and its tangent, so that its
    Jacobian at every point is `diag(jvp(fn, z, ones))`."""
    shape = tuple(z.shape)
    try:
        closed = jax.make_jaxpr(lambda a, da: jax.jvp(fn, (a,), (da,)))(z, z)
    except (TypeError, NotImplementedError, ValueError):  # no JVP (custom_vjp)
        return False
    return elementwise_jaxpr(closed.jaxpr, [True, True], shape)


# Primitives with a float output whose derivative JAX defines as zero (they are
# piecewise constant). A value of another dtype (a comparison, an integer) has
# no derivative at all, and the predicate of `select_n` none either.
_ZERO_DERIVATIVE = frozenset({"sign", "floor", "ceil", "round", "stop_gradient"})


def _differentiable(v: Any) -> bool:
    dtype = getattr(v.aval, "dtype", None)
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.inexact))


def _derivative_flows(jaxpr: core.Jaxpr, dependent: Sequence[bool]) -> list[bool]:
    """For each output of `jaxpr`, whether JAX's derivative of it with respect to
    the inputs marked `dependent` may be nonzero: whether it depends on them
    through some path of operations that JAX differentiates as other than zero."""
    deps = {v for v, d in zip(jaxpr.invars, dependent) if d}
    read = lambda v: not isinstance(v, core.Literal) and v in deps  # noqa: E731
    for eqn in jaxpr.eqns:
        marks = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "select_n":
            marks[0] = False
        if not any(marks) or name in _ZERO_DERIVATIVE:
            continue
        inner = _inner(eqn) if name != "custom_jvp_call" else None
        # A custom rule may differentiate where its primal code does not: any
        # dependent operand of a custom_jvp function makes all its outputs so.
        flows = [True] * len(eqn.outvars)
        if inner is not None:
            flows = _derivative_flows(inner, marks)
        deps.update(v for v, f in zip(eqn.outvars, flows) if f and _differentiable(v))
    return [read(v) for v in jaxpr.outvars]


def flat_jvp(fn: Callable[[Any], Any], z: Any) -> bool:
    """Whether JAX's second derivative of the elementwise `fn` (of one array) is
    identically zero, exactly: whether its JVP along ones, as autodiff traces it
    (custom rules included), depends on `z` only through operations that JAX
    differentiates as zero (comparisons, `sign`, `floor`, the predicate of a
    `select_n`). So it holds for `relu`, `leaky_relu`, `abs`, `clip`, and not for
    a function with curvature, whose second partial must be computed."""

    def slope(a: Any) -> Any:
        return jax.jvp(fn, (a,), (jnp.ones(a.shape, a.dtype),))[1]

    try:
        closed = jax.make_jaxpr(slope)(z)
    except (TypeError, NotImplementedError, ValueError):  # no JVP (custom_vjp)
        return False
    return not any(_derivative_flows(closed.jaxpr, [True]))
