"""Collapsed Taylor-mode rules for linear (and affine) primitives and for the
piecewise constant ones.

A linear map `L` acts on every term alike: `T_y = L(T_u)`, `S_y = L(S_u)`; a
piecewise constant one has no derivative at all.
"""

import jax.numpy as jnp
from jax.extend import core

from ..jet import (
    Jet,
    JetContext,
    add_terms,
    bind,
    const_jets,
    lift,
    primals_of,
    single_jet,
)
from ..registry import linear_rule, register_rule


__all__: list[str] = []


def zero_rule(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    return const_jets(bind(eqn, primals_of(jets)))


def _convert_element_type(
    ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]
) -> list[Jet]:
    if not jnp.issubdtype(eqn.params["new_dtype"], jnp.inexact):
        return zero_rule(ctx, eqn, jets)
    return linear_rule([0])(ctx, eqn, jets)


def _add_sub(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    a, b = jets
    (y,) = bind(eqn, [a.primal, b.primal])
    sign = -1 if eqn.primitive.name == "sub" else 1
    tb, sb = lift(b.tangent, jnp.ndim(y)), b.second
    t = add_terms(lift(a.tangent, jnp.ndim(y)), None if tb is None else sign * tb)
    s = add_terms(a.second, None if sb is None else sign * sb)
    return single_jet(y, t, s)


def _neg(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    (x,) = jets
    assert x.tangent is not None
    s = None if x.second is None else -x.second
    return [Jet(-jnp.asarray(x.primal), -x.tangent, s)]


# Linear in operand 0; any others (start indices, gather indices) carry no tangent.
_LINEAR_IN_FIRST = (
    "reshape",
    "broadcast_in_dim",
    "transpose",
    "squeeze",
    "rev",
    "slice",
    "copy",
    "reduce_sum",
    "cumsum",
    "reduce_precision",
    "real",
    "imag",
    "conj",
    "dynamic_slice",
    "gather",
    "sharding_constraint",
    "tile",
    "split",
    "unstack",
    "fft",  # every FFT type is linear over the reals
)
_LINEAR_IN_ALL = ("concatenate", "stack", "device_put", "optimization_barrier")
# Piecewise constant, or zero derivative by definition.
_CONSTANT = ("sign", "floor", "ceil", "round", "stop_gradient")


def _register() -> None:
    for name in _CONSTANT:
        register_rule(name, zero_rule)
    for name in _LINEAR_IN_FIRST:
        register_rule(name, linear_in=(0,))
    for name in _LINEAR_IN_ALL:
        register_rule(name, linear_in=slice(None))
    register_rule("pad", linear_in=(0, 1))  # pad(x, c) is affine in (x, c)
    register_rule("dynamic_update_slice", linear_in=(0, 1))
    register_rule("scatter-add", linear_in=(0, 2))  # (operand, indices, updates)
    # The predicate is boolean or integer and never carries a tangent.
    register_rule("select_n", linear_in=slice(1, None))
    # Linear to a floating type; to an integer type, constant.
    register_rule("convert_element_type", _convert_element_type, linear_in=(0,))
    for name in ("add", "sub", "add_any"):
        register_rule(name, _add_sub, linear_in=(0, 1))
    register_rule("neg", _neg, linear_in=(0,))


_register()
