"""Composite elementwise functions as one elementwise rule.

An activation such as `jax.nn.silu` (`a * logistic(a)`), `jax.nn.softplus` or
`jax.nn.elu` is a `jit` call of a few elementwise operations. Interpreted
operation by operation, each nonlinear piece and each product of two values
that carry tangents pays its own collapsed sum over the K directions
(`ctx.quad`); yet the whole call is one elementwise map `y = g(a)`, for which

$$T_y = g'(a) T_a, \\qquad S_y = g'(a) S_a + g''(a) \\sum_k w_k T_a[k]^2$$

costs one such sum (`elementwise_jet`), `g'` and `g''` being `jax.jvp`s of the
call along ones: JAX's own numbers, custom rules included.

A call takes this path when exactly one operand carries a tangent, its output
is one real array of that operand's shape, and `structure.diagonal_jvp` finds
the call, and the JVP that autodiff uses for it, elementwise in that operand.
Its curvature is skipped altogether when `structure.flat_jvp` finds JAX's
second derivative identically zero (`leaky_relu`, `clip`, ...). Any other call
is interpreted in place, as before.
"""

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax.extend import core

from ..elementwise import Curvature, elementwise_jet
from ..jet import Jet, JetContext, Rule, bind, is_real, primals_of
from ..structure import diagonal_jvp, elementwise_eqn, flat_jvp


__all__ = ["composite", "elementwise_call"]


# The verdict of `_curvature` per equation and live operand, as the structural
# checks trace the call's JVP. A `scan` or `cond` body is interpreted more than
# once (its carry's structure is a fixed point), and eqns have no weak
# references: each entry keeps its eqn, so an id is never read for another one.
_CACHE: dict[tuple[int, int], tuple[core.JaxprEqn, Curvature | None]] = {}
_CACHE_SIZE = 1024


def _curvature(
    eqn: core.JaxprEqn, i: int, fn: Callable[[Any], Any], z: Any
) -> Curvature | None:
    """`fn`'s curvature (`frozenset()`: none) if it is elementwise, else `None`."""
    key = (id(eqn), i)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is eqn:
        return hit[1]
    curvature: Curvature | None = None
    if diagonal_jvp(fn, z):
        curvature = frozenset() if flat_jvp(fn, z) else "all"
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.clear()
    _CACHE[key] = (eqn, curvature)
    return curvature


def elementwise_call(
    ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]
) -> list[Jet] | None:
    """The jet of the call `eqn` through one elementwise rule, or `None` where it
    does not qualify (see the module docstring)."""
    live = [i for i, j in enumerate(jets) if j.tangent is not None]
    if len(live) != 1 or len(eqn.outvars) != 1:
        return None
    (i,) = live
    aval: Any = eqn.outvars[0].aval
    z = jets[i].primal
    shape = jnp.shape(z)
    # Complex values keep the per-primitive rules (holomorphic or not).
    if not (is_real(z) and jnp.issubdtype(aval.dtype, jnp.floating)):
        return None
    if tuple(aval.shape) != shape:
        return None
    # The primal's structure first: it costs no tracing, and rules out most
    # calls (a jitted network, a norm) before their JVP is traced.
    if not elementwise_eqn(eqn, [n == i for n in range(len(jets))], shape):
        return None
    args = primals_of(jets)

    def fn(a: Any) -> Any:
        new = list(args)
        new[i] = a
        return bind(eqn, new)[0]

    curvature = _curvature(eqn, i, fn, jnp.asarray(z))
    if curvature is None:
        return None
    return elementwise_jet(ctx, fn, [jets[i]], curvature)


def composite(rule: Rule) -> Rule:
    """`rule` for calls, taking `elementwise_call`'s path where it applies."""

    def wrapped(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
        outs = elementwise_call(ctx, eqn, jets)
        return rule(ctx, eqn, jets) if outs is None else outs

    return wrapped
