"""A field's traced program, as the methods need it: which primitives it uses
(a `while` loop rules out reverse mode), whether its second derivatives can be
collapsed (`collapsible`), and a version of it that forward-mode autodiff
accepts (a `custom_vjp` function has no JVP in JAX)."""

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend import core

from .jet import Jet, bind, is_float
from .rules.custom import PRIMAL_IS_RULE, forward_rule_of_vjp


def _inner_jaxprs(params: dict[str, Any]) -> Iterator[core.Jaxpr]:
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, core.Jaxpr):
                yield v


def primitive_names(jaxpr: core.Jaxpr) -> set[str]:
    """The names of every primitive in `jaxpr`, nested jaxprs included."""
    names: set[str] = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for inner in _inner_jaxprs(eqn.params):
            names |= primitive_names(inner)
    return names


_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr"}


def _producer(jaxpr: core.Jaxpr, var: Any) -> core.JaxprEqn | None:
    """The equation that computes `var`, looking through `jit` calls."""
    for eqn in jaxpr.eqns:
        if var in eqn.outvars:
            name = eqn.primitive.name
            if name in ("jit", "pjit"):
                inner = eqn.params["jaxpr"].jaxpr
                out = inner.outvars[eqn.outvars.index(var)]
                return None if isinstance(out, core.Literal) else _producer(inner, out)
            return eqn
    return None


def _same_function(a: core.JaxprEqn, b: core.JaxprEqn) -> bool:
    """Whether two `custom_jvp_call`s are calls of one function: one primal and
    one rule (its source, as JAX records it)."""
    if a.primitive.name != b.primitive.name:
        return False

    def rule_source(eqn: core.JaxprEqn) -> Any:
        info = getattr(eqn.params.get("jvp_jaxpr_fun"), "debug_info", None)
        return getattr(info, "func_src_info", None)

    src = rule_source(a)
    return (
        src is not None
        and src == rule_source(b)
        and str(a.params["call_jaxpr"]) == str(b.params["call_jaxpr"])
    )


def _rule_calls_itself(eqn: core.JaxprEqn) -> bool:
    """Whether the rule of the `custom_jvp_call` `eqn` computes its primal
    output by calling the function itself (as `defjvps` and the `jax.nn` and
    `jax.numpy` functions do).

    Nested autodiff differentiates whatever code the rule computes its primal
    output with: when that is the function itself, the outer derivative applies
    the rule again, so the output varies along the rule's own tangent, which is
    what the collapsed propagation assumes. When it is other code, (a rule
    returning `jnp.round(x), dx`, a straight-through estimator), the output's
    variation seen by the second derivative is that code's derivative, which
    differs from the rule's tangent in general."""
    avals: list[Any] = [v.aval for v in eqn.invars]
    args = [jnp.zeros(a.shape, a.dtype) for a in avals]
    live = [i for i, a in enumerate(args) if is_float(a)]

    def f(*xs: Any) -> list[Any]:
        new = list(args)
        for i, x in zip(live, xs):
            new[i] = x
        return bind(eqn, new)

    xs = [args[i] for i in live]
    try:
        closed = jax.make_jaxpr(lambda a, da: jax.jvp(f, a, da))(xs, xs)
    except Exception:  # noqa: BLE001 - a rule JAX cannot trace: assume the worst
        return False
    jaxpr = closed.jaxpr
    for out in jaxpr.outvars[: len(eqn.outvars)]:
        if isinstance(out, core.Literal) or out in jaxpr.invars:
            return False
        producer = _producer(jaxpr, out)
        if producer is None or not _same_function(producer, eqn):
            return False
    return True


def collapsible(jaxpr: core.Jaxpr) -> bool:
    """Whether the collapsed propagation gives nested autodiff's second
    derivatives for `jaxpr`: false if a `custom_vjp` function, or a
    `custom_jvp` function whose rule does not call the function itself
    (`_rule_calls_itself`), may make the output of a custom function vary, to
    second order, otherwise than along its rule's tangent."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("custom_vjp_call", "custom_vjp_call_jaxpr"):
            return False
        if name == "custom_jvp_call":
            avals: list[Any] = [v.aval for v in eqn.invars]
            jets = [Jet(jnp.zeros((), a.dtype), None, None) for a in avals]
            if any(known(eqn, jets) for known in PRIMAL_IS_RULE):
                # Interpreted through its primal code, which is its rule.
                if not collapsible(eqn.params["call_jaxpr"].jaxpr):
                    return False
            elif not _rule_calls_itself(eqn):
                return False
            continue
        if not all(collapsible(inner) for inner in _inner_jaxprs(eqn.params)):
            return False
    return True


def evaluate(
    jaxpr: core.Jaxpr, consts: Any, args: Any, forward_rules: bool
) -> list[Any]:
    """Evaluates `jaxpr`. With `forward_rules`, every `custom_vjp` call is bound
    as a function whose JVP is the transpose of its VJP (`forward_rule_of_vjp`),
    and calls that contain one are inlined."""
    env: dict[Any, Any] = {}
    read = lambda v: v.val if isinstance(v, core.Literal) else env[v]  # noqa: E731
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        with eqn.ctx.manager:
            if not forward_rules:
                outs = bind(eqn, ins)
            elif name in ("custom_vjp_call", "custom_vjp_call_jaxpr"):
                live = [i for i, a in enumerate(ins) if is_float(a)]

                def f(*xs: Any, eqn: Any = eqn, ins: Any = ins, live: Any = live):
                    new = list(ins)
                    for i, x in zip(live, xs):
                        new[i] = x
                    return bind(eqn, new)

                outs = list(forward_rule_of_vjp(f)(*(ins[i] for i in live)))
            elif name in _CALLS and "custom_vjp_call" in primitive_names(
                eqn.params[_CALLS[name]].jaxpr
            ):
                inner = eqn.params[_CALLS[name]]
                outs = evaluate(inner.jaxpr, inner.consts, ins, True)
            else:
                outs = bind(eqn, ins)
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


class Program(NamedTuple):
    """The field `fn(x, t)` traced once at one sample."""

    out: jax.ShapeDtypeStruct
    # Whether reverse-mode autodiff applies (JAX has none through `while`).
    reverse: bool
    # The traced program as a function of `(x, t)`: the same computation as `fn`,
    # without calling `fn`'s Python code again.
    call: Callable[[Any, Any], Any]
    # `call`, or, when the program uses `custom_vjp` functions, the same program
    # with forward rules for them, so that `jax.jvp` applies.
    forward: Callable[[Any, Any], Any]
    # Whether the collapsed propagation gives nested autodiff's second
    # derivatives (see `collapsible`).
    collapsible: bool = True


def trace_field(fn: Callable[[Any, Any], Any], x: Any, t: Any) -> Program:
    """Traces `fn(x, t)` (one array out) once; see `Program`."""
    closed = jax.make_jaxpr(fn)(x, t)
    names = primitive_names(closed.jaxpr)
    aval = closed.out_avals[0]
    out = jax.ShapeDtypeStruct(aval.shape, aval.dtype)  # pyright: ignore
    consts = closed.consts

    def evaluator(forward_rules: bool) -> Callable[[Any, Any], Any]:
        def call(x_: Any, t_: Any) -> Any:
            leaves = jax.tree.leaves((x_, t_))
            (y,) = evaluate(closed.jaxpr, consts, leaves, forward_rules)
            return y

        return call

    call = evaluator(False)
    custom_vjp = names & {"custom_vjp_call", "custom_vjp_call_jaxpr"}
    forward = evaluator(True) if custom_vjp else call

    return Program(out, "while" not in names, call, forward, collapsible(closed.jaxpr))
