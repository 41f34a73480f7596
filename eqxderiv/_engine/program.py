"""A field's traced program, as the methods need it: which primitives it uses
(a `while` loop rules out reverse mode), and a version of it that forward-mode
autodiff accepts (a `custom_vjp` function has no JVP in JAX)."""

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
from jax.extend import core

from .jet import bind, is_float
from .rules.custom import forward_rule_of_vjp


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


def _evaluate(
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
                outs = _evaluate(inner.jaxpr, inner.consts, ins, True)
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


def trace_field(fn: Callable[[Any, Any], Any], x: Any, t: Any) -> Program:
    """Traces `fn(x, t)` (one array out) once; see `Program`."""
    closed = jax.make_jaxpr(fn)(x, t)
    names = primitive_names(closed.jaxpr)
    aval = closed.out_avals[0]
    out = jax.ShapeDtypeStruct(aval.shape, aval.dtype)  # pyright: ignore
    consts = closed.consts

    def evaluator(forward_rules: bool) -> Callable[[Any, Any], Any]:
        def evaluate(x_: Any, t_: Any) -> Any:
            leaves = jax.tree.leaves((x_, t_))
            (y,) = _evaluate(closed.jaxpr, consts, leaves, forward_rules)
            return y

        return evaluate

    call = evaluator(False)
    custom_vjp = names & {"custom_vjp_call", "custom_vjp_call_jaxpr"}
    forward = evaluator(True) if custom_vjp else call

    return Program(out, "while" not in names, call, forward)
