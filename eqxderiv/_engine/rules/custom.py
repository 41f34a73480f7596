"""Functions with custom derivatives (`jax.custom_jvp`, `jax.custom_vjp`) in the
collapsed Taylor-mode engine: differentiated by their own rules, never through
their primal implementation.

A custom rule can differ from the derivative of the primal code: it picks a
value at a kink (`relu`), stays finite where the primal's derivative is NaN (a
safe norm, `xlogy` at 0), or is simply another function (a straight-through
estimator). Nested `jax.jacfwd` / `jax.hessian` follow the rule for the first
derivative and differentiate the rule for the second; so does this module:

- an *elementwise* custom function (primal and rule built from elementwise
  operations alone, as for the `jax.nn` activations, `logaddexp`, `xlogy`,
  `sinc`) goes through `elementwise_jet`, its partials taken by `jax.jvp` of the
  function, which applies its rule, once per application rather than once per
  direction;
- any other goes through `nested_jet`: a JVP of a JVP of the function per
  direction, so JAX applies the rule. It is exact and costs what nested autodiff
  costs.

A `custom_vjp` function has no forward rule in JAX: its forward derivative is
defined here as the transpose of its VJP (which is how `jax.hessian`, forward
over reverse, sees it).
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core

from ..elementwise import ELEMENTWISE, elementwise_jet, partial_derivative
from ..interpreter import eval_jaxpr
from ..jet import Jet, JetContext, bind, is_float, primals_of
from ..registry import nested_jet, register_rule


# Primitives that act elementwise on operands of one shape (or rank 0): the
# engine's table, and two whose derivative JAX defines as zero, which a custom
# rule's primal code may use.
_ELEMENTWISE = ELEMENTWISE | {"stop_gradient", "nextafter"}
# Calls whose inner jaxpr is checked in their place.
_CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
}


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(getattr(v.aval, "shape", ()))


def _elementwise_jaxpr(jaxpr: core.Jaxpr, shape: tuple[int, ...]) -> bool:
    """Whether every operation of `jaxpr` is elementwise on arrays of `shape`
    (rank-0 operands broadcast)."""
    fits = lambda v: _shape(v) in (shape, ())  # noqa: E731
    if not all(fits(v) for v in (*jaxpr.invars, *jaxpr.outvars, *jaxpr.constvars)):
        return False
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in _CALLS:
            inner = eqn.params.get(_CALLS[name])
            inner = getattr(inner, "jaxpr", inner)
            if not isinstance(inner, core.Jaxpr) or not _elementwise_jaxpr(
                inner, shape
            ):
                return False
            continue
        if name == "broadcast_in_dim":
            if _shape(eqn.invars[0]) != ():
                return False
        elif name not in _ELEMENTWISE:
            return False
        if not all(fits(v) for v in (*eqn.invars, *eqn.outvars)):
            return False
    return True


def _is_elementwise(fn: Callable[..., Any], primals: Sequence[Any]) -> bool:
    """Whether `fn` (one array out) and its derivative rule are elementwise."""
    out = jax.eval_shape(fn, *primals)
    if not isinstance(out, jax.ShapeDtypeStruct):
        return False
    if any(jnp.issubdtype(jnp.result_type(p), jnp.complexfloating) for p in primals):
        return False  # complex values: their derivatives are not complex partials
    shape = tuple(out.shape)

    def with_rule(*args: Any) -> Any:
        return jax.jvp(fn, args, tuple(jnp.ones_like(a) for a in args))

    return _elementwise_jaxpr(
        jax.make_jaxpr(fn)(*primals).jaxpr, shape
    ) and _elementwise_jaxpr(jax.make_jaxpr(with_rule)(*primals).jaxpr, shape)


def _vanishes(fn: Callable[..., Any], primals: Sequence[Any]) -> bool:
    """Whether `fn(*primals)` is identically zero: its output depends on none of
    its inputs (nor on traced constants) and evaluates to zero."""
    closed = jax.make_jaxpr(fn)(*primals)
    jaxpr = closed.jaxpr
    dep = set(jaxpr.invars) | set(jaxpr.constvars)
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, core.Literal) and v in dep for v in eqn.invars):
            dep.update(eqn.outvars)
    (out,) = jaxpr.outvars
    if isinstance(out, core.Literal):
        return not np.any(np.asarray(out.val))
    if out in dep:
        return False
    zeros = lambda vs: [np.zeros(v.aval.shape, v.aval.dtype) for v in vs]  # noqa: E731
    with jax.ensure_compile_time_eval():
        closed_zero = core.ClosedJaxpr(jaxpr, zeros(jaxpr.constvars))
        (value,) = core.jaxpr_as_fun(closed_zero)(*zeros(jaxpr.invars))
    return not np.any(np.asarray(value))


def _differentiable(jets: Sequence[Jet]) -> list[int]:
    return [i for i, j in enumerate(jets) if j.tangent is not None]


def _restricted(
    fn: Callable[..., list[Any]], jets: Sequence[Jet], live: Sequence[int]
) -> Callable[..., list[Any]]:
    """`fn` as a function of the operands at `live` alone, the others fixed."""
    args = primals_of(jets)

    def f(*xs: Any) -> list[Any]:
        new = list(args)
        for i, x in zip(live, xs):
            new[i] = x
        return list(fn(*new))

    return f


def custom_function_jet(
    ctx: JetContext, fn: Callable[..., list[Any]], jets: Sequence[Jet], what: str
) -> list[Jet]:
    """The jets of `fn(*primals)`, a list of outputs whose derivatives JAX's
    `jvp` defines (through a custom rule)."""
    live = _differentiable(jets)
    f = _restricted(fn, jets, live)
    sub = [jets[i] for i in live]
    outs = jax.eval_shape(f, *primals_of(sub))
    if len(outs) == 1 and is_float(jnp.zeros((), outs[0].dtype)):
        single = lambda *a: f(*a)[0]  # noqa: E731
        primals = [jnp.asarray(p) for p in primals_of(sub)]
        if _is_elementwise(single, primals):

            def curved(i: int, j: int) -> bool:
                return not _vanishes(
                    partial_derivative(partial_derivative(single, i), j), primals
                )

            return elementwise_jet(ctx, single, sub, curved)
    return nested_jet(ctx, f, sub, what)


# Predicates `(eqn, jets) -> bool` naming `custom_jvp` functions whose rule is
# known to be the derivative of their primal code (for the operands at hand), so
# that the primal can be interpreted with the collapsed rules instead of a nested
# JVP of the rule per direction. Rule modules append to it (`rules/linalg.py`:
# `det`, `slogdet`).
PRIMAL_IS_RULE: list[Callable[[core.JaxprEqn, Sequence[Jet]], bool]] = []


def _custom_jvp(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    if any(known(eqn, jets) for known in PRIMAL_IS_RULE):
        closed = eqn.params["call_jaxpr"]
        return eval_jaxpr(ctx, closed.jaxpr, closed.consts, jets)
    fn = lambda *a: bind(eqn, a)  # noqa: E731
    return custom_function_jet(ctx, fn, jets, "a custom_jvp function")


def forward_rule_of_vjp(fn: Callable[..., list[Any]]) -> Callable[..., tuple]:
    """`fn` (of float arrays, with a custom VJP somewhere) as a `jax.custom_jvp`
    function whose JVP is the transpose of its VJP, so that forward-mode autodiff
    applies to it; the second derivative then differentiates the VJP rule, as
    `jax.hessian` does."""

    @jax.custom_jvp
    def g(*args: Any) -> tuple:
        return tuple(fn(*args))

    @g.defjvp
    def g_jvp(primals: tuple, tangents: tuple) -> tuple:
        try:
            outs, vjp = jax.vjp(lambda *a: tuple(fn(*a)), *primals)
        except TypeError as e:
            if _JVP_OF_CUSTOM_VJP not in str(e):
                raise
            raise TypeError(_FWD_CALLS_CUSTOM_VJP) from e
        (touts,) = jax.linear_transpose(vjp, outs)(tuple(tangents))
        return outs, touts

    return g


# JAX's message when forward mode meets a `custom_vjp` function.
_JVP_OF_CUSTOM_VJP = "can't apply forward-mode autodiff (jvp) to a custom_vjp"
_FWD_CALLS_CUSTOM_VJP = (
    "A second derivative of this field (a Laplacian, a Hessian, a gradient of "
    "the divergence) differentiates the forward rule `fwd` of one of its "
    "`jax.custom_vjp` functions in forward mode, as `jax.hessian` does, and that "
    "rule calls a `custom_vjp` function itself (often the function it belongs "
    "to: `def fwd(x): return f(x), residuals`), which JAX cannot differentiate "
    "in forward mode; `jax.hessian` of the field fails the same way. Compute the "
    "value in `fwd` without calling a `custom_vjp` function (write out the "
    "function's body there). First derivatives (Jacobian, Divergence, Grad) are "
    "not affected."
)


def _custom_vjp(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    live = _differentiable(jets)
    fn = _restricted(lambda *a: bind(eqn, a), jets, live)
    g = forward_rule_of_vjp(fn)
    outs = custom_function_jet(
        ctx, lambda *a: list(g(*a)), [jets[i] for i in live], "a custom_vjp function"
    )
    return outs


register_rule("custom_jvp_call", _custom_jvp)
register_rule("custom_vjp_call", _custom_vjp)
register_rule("custom_vjp_call_jaxpr", _custom_vjp)  # older jax
