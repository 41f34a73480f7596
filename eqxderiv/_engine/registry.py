"""The rule table: one entry per primitive, holding its collapsed Taylor-mode rule
and what the interpreter needs to know about it, and the fallback for primitives
without one (nested `jax.jvp`, with a `FallbackWarning`).

Keyed by primitive name: names are stable across jax versions where the primitive
objects exported by `jax.extend` are not.
"""

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox
import jax
import jax.numpy as jnp
import jaxtyping
from jax.extend import core
from jaxtyping import Array

from .jet import (
    Jet,
    JetContext,
    Rule,
    bind,
    const_jets,
    is_float,
    primals_of,
    zeros,
)


__all__ = ["FallbackWarning", "RuleInfo", "register_rule"]


class FallbackWarning(UserWarning):
    """A primitive without a collapsed Taylor-mode rule, or a custom-derivative
    function that is not elementwise, was evaluated through nested `jax.jvp`
    (one JVP of a JVP per direction). The result is exact, JAX's own, but the
    compiled program may be slower. Raised once per primitive; silence it with
    `warnings.simplefilter("ignore", eqxderiv.FallbackWarning)`, or give the
    primitive a rule with [`eqxderiv.register_rule`][]."""


class RuleInfo(NamedTuple):
    """A registered rule and what is known about its primitive.

    - `rule`: the rule, `(ctx, eqn, jets) -> jets`.
    - `linear_in`: the operand positions (a tuple, or a `slice` for a variable
        number of operands) in which the primitive is jointly affine, the others
        being parameters that carry no tangent (indices, a predicate); `None` if
        it is not affine.
    - `bilinear`: whether it is affine in each of its operands separately (a
        product), so affine when only one of them depends on the inputs.
    """

    rule: Rule
    linear_in: tuple[int, ...] | slice | None = None
    bilinear: bool = False

    def linear_positions(self, num_operands: int) -> set[int]:
        """The positions `linear_in` names, out of `num_operands`."""
        if self.linear_in is None:
            return set()
        if isinstance(self.linear_in, slice):
            return set(range(num_operands)[self.linear_in])
        return set(self.linear_in)

    def affine_in(self, live: Sequence[int], num_operands: int) -> bool:
        """Whether the output is affine in the operands at `live` (the ones that
        depend on the inputs) when the others are held fixed."""
        if self.bilinear and len(live) == 1:
            return True
        return self.linear_in is not None and set(live) <= self.linear_positions(
            num_operands
        )


RULES: dict[str, RuleInfo] = {}


def register_rule(
    primitive: core.Primitive | str,
    rule: Rule | None = None,
    *,
    linear_in: Sequence[int] | slice | None = None,
    bilinear: bool = False,
) -> None:
    """Registers a collapsed Taylor-mode rule for a primitive, so that the `Taylor`,
    `Hutchinson` and `SparseSampling` methods propagate through it without the
    nested-autodiff fallback (and its `FallbackWarning`).

    A rule is a function `rule(ctx, eqn, jets) -> list[Jet]`:

    - `ctx`: an [`eqxderiv.JetContext`][]; `ctx.weights` holds the K weights
        `w_k`, `ctx.wsum(x)` is `sum_k w_k x[k]` and `ctx.quad(a, b)` is
        `sum_k w_k a[k] b[k]`.
    - `eqn`: the `jax.extend.core.JaxprEqn`, with `eqn.primitive` and
        `eqn.params`; `eqn.primitive.bind(*args, **eqn.params)` evaluates it.
    - `jets`: one [`eqxderiv.Jet`][] `(primal, tangent, second)` per operand,
        where `tangent` has shape `(K, *primal.shape)` and `second` is
        `sum_k w_k d²/ds² u(x + s v_k)` with shape `primal.shape`; either may be
        `None`, meaning zero (a tangent of `None` implies a second of `None`).
        At least one operand has a tangent.

    It returns one `Jet` per output of the primitive: for `y = g(u)`,
    `T_y[k] = g'(u) T_u[k]` and `S_y = g'(u) S_u + sum_k w_k g''(u)[T_u[k], T_u[k]]`.

    **Example:**

    ```python
    def my_sin_rule(ctx, eqn, jets):
        (u,) = jets
        y = my_sin_p.bind(u.primal)
        t = jnp.cos(u.primal) * u.tangent
        s = -y * ctx.quad(u.tangent, u.tangent)
        if u.second is not None:
            s = s + jnp.cos(u.primal) * u.second
        return [eqxderiv.Jet(y, t, s)]

    eqxderiv.register_rule(my_sin_p, my_sin_rule)
    eqxderiv.register_rule(my_scale_p, linear_in=(0,))  # a linear primitive
    ```

    **Arguments:**

    - `primitive`: the primitive, or its name.
    - `rule`: the rule. May be omitted for a primitive that is linear in the
        operands `linear_in`: the tangents then go through the primitive itself,
        batched over the K directions with `jax.vmap` (so it needs a batching
        rule), and so do the second-order terms.
    - `linear_in`: the operand positions in which the primitive is jointly
        affine (the others are parameters such as indices), if it is. This lets
        the engine see through it: compress directions after it and take a last
        linear layer's contraction early.
    - `bilinear`: whether the primitive is affine in each operand separately (a
        product of two operands), if it is.

    **Returns:** nothing; a later registration for the same primitive replaces
    this one.
    """
    name = primitive if isinstance(primitive, str) else primitive.name
    if not isinstance(name, str):
        raise TypeError(f"`primitive` must be a Primitive or a name; got {primitive!r}")
    positions = linear_in
    if positions is not None and not isinstance(positions, slice):
        positions = tuple(int(i) for i in positions)
    if rule is None:
        if positions is None:
            raise ValueError(
                f"register_rule({name!r}): pass a `rule`, or `linear_in` for a "
                "linear primitive"
            )
        rule = linear_rule(positions)
    if not callable(rule):
        raise TypeError(f"`rule` must be callable; got {rule!r}")
    RULES[name] = RuleInfo(rule, positions, bool(bilinear))


# The rules the engine registers itself, recorded once the `rules` package is
# imported (`freeze_builtin_rules`). A user's registration replaces a primitive's
# `RuleInfo`, so `is_builtin` then no longer holds for it: code that reasons
# about a primitive's mathematics in place of its rule (`chains.py`) checks it.
_BUILTIN: dict[str, RuleInfo] = {}


def freeze_builtin_rules() -> None:
    """Records the rules registered so far as the engine's own."""
    _BUILTIN.update(RULES)


def is_builtin(name: str) -> bool:
    """Whether the primitive `name` has the engine's own rule (not a user's)."""
    info = RULES.get(name)
    return info is not None and _BUILTIN.get(name) is info


def lookup(primitive: core.Primitive) -> Rule:
    info = RULES.get(primitive.name)
    return fallback if info is None else info.rule


def affine_in(eqn: core.JaxprEqn, live: Sequence[int]) -> bool:
    """Whether `eqn`'s output is affine in its operands at `live` (registered as
    such; an unregistered primitive is not)."""
    info = RULES.get(eqn.primitive.name)
    return info is not None and info.affine_in(live, len(eqn.invars))


# ---- the rule for linear primitives ----------------------------------------------


def linear_rule(positions: Sequence[int] | slice | None = None) -> Rule:
    """Rule for a primitive that is linear in the operands at `positions` (all if
    `None`) and merely parameterised by the others (indices, predicates).

    The tangents go through the primitive itself, `vmap`ped over the K axis: that is
    the same op with one more leading dimension, so it costs nothing extra at run
    time. An affine operand without a tangent (the constant in `concatenate([x, c])`,
    the padding value, ...) contributes a zero.
    """

    def rule(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
        if positions is None:
            lin: Sequence[int] = range(len(jets))
        elif isinstance(positions, slice):
            lin = range(len(jets))[positions]
        else:
            lin = positions
        outs = bind(eqn, primals_of(jets))

        def through(field: str) -> list[Any] | None:
            terms = [getattr(jets[i], field) for i in lin]
            if all(t is None for t in terms):
                return None
            args: list[Any] = primals_of(jets)
            axes: list[int | None] = [None] * len(jets)
            for i in lin:
                term = getattr(jets[i], field)
                args[i] = zeros(jets[i].primal) if term is None else term
                if field == "tangent" and term is not None:
                    axes[i] = 0
            if field == "second":
                return bind(eqn, args)
            return jax.vmap(lambda *a: bind(eqn, a), in_axes=axes)(*args)

        ts, ss = through("tangent"), through("second")
        return [
            Jet(o, ts[i], None if ss is None else ss[i])
            if ts is not None and is_float(o)
            else Jet(o, None, None)
            for i, o in enumerate(outs)
        ]

    return rule


# ---- fallback: nested autodiff ---------------------------------------------------

# The primitives (and functions) that have warned, once per process.
_WARNED: set[str] = set()


def _internal_dirs() -> tuple[str, ...]:
    # The whole eqxderiv package (the engine's parent), not only the engine: the
    # warning names the user's call, not an operator's.
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mods = (jax, equinox, jaxtyping, contextlib, warnings)
    dirs = [package]
    dirs += [os.path.dirname(os.path.abspath(m.__file__ or "")) for m in mods]
    return tuple(d + os.sep for d in dirs)


def _warn_at_user_call(message: str) -> None:
    """Warns `FallbackWarning` at the first frame outside eqxderiv, JAX, Equinox,
    jaxtyping and the standard library: the user's call that led to it."""
    internal = _internal_dirs()
    frame = sys._getframe(1)
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(internal)
        or frame.f_code.co_filename.startswith("<frozen")
    ):
        frame = frame.f_back
    module = frame.f_globals.get("__name__", "<unknown>")
    registry = frame.f_globals.setdefault("__warningregistry__", {})
    warnings.warn_explicit(
        message,
        FallbackWarning,
        frame.f_code.co_filename,
        frame.f_lineno,
        module,
        registry,
    )


def warn_nested_second_derivatives() -> None:
    """The one-time `FallbackWarning` for a field whose second derivatives are
    computed by nested `jax.jvp`s because of a custom rule (`program.py`)."""
    what = "custom rule not called by itself"
    if what in _WARNED:
        return
    _WARNED.add(what)
    _warn_at_user_call(
        "eqxderiv: the field has a custom_vjp function, or a custom_jvp function "
        "whose rule computes its primal output by other code than the function "
        "itself; nested autodiff's second derivatives (and parameter gradients "
        "of derivatives) then differentiate that code, so the field's derivatives "
        "are computed by jvps of the whole field, as nested autodiff does (exact, "
        "but slower). A rule that returns `f(x)` (the custom function itself) as "
        "its primal output avoids this."
    )


def fallback(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    """Any primitive, through `jax.jvp` on `bind` (see `nested_jet`)."""
    return nested_jet(
        ctx, lambda *a: bind(eqn, a), jets, f"primitive '{eqn.primitive.name}'"
    )


def nested_jet(
    ctx: JetContext,
    fn: Callable[..., list[Any]],
    jets: Sequence[Jet],
    what: str,
) -> list[Jet]:
    """The jets of `fn(*primals)` (a list of outputs) by nested `jax.jvp`, so by
    JAX's own derivative rules, custom ones included.

    Per direction k, a `jvp` of a `jvp` gives both the first-order term and
    `d²/ds² fn(x + s T[k])`; this is `vmap`ped over K and weight-summed. The
    incoming second-order terms enter through one more (first-order) `jvp`.
    `what` names `fn` in the one-time `FallbackWarning`.
    """
    outs = list(fn(*primals_of(jets)))
    float_outs = [i for i, o in enumerate(outs) if is_float(o)]
    if not float_outs:  # comparisons, argmax, iota, ...: nothing to differentiate
        return const_jets(outs)
    if what not in _WARNED:
        _WARNED.add(what)
        _warn_at_user_call(
            f"eqxderiv: {what} has no collapsed Taylor-mode rule; it is "
            "evaluated through nested autodiff (a jvp of a jvp per direction), "
            "which may be slower."
        )

    diff = [i for i, j in enumerate(jets) if j.tangent is not None]

    def f(*xs: Array) -> tuple[Array, ...]:
        args = primals_of(jets)
        for i, x in zip(diff, xs):
            args[i] = x
        res = list(fn(*args))
        return tuple(res[i] for i in float_outs)

    primals = tuple(jnp.asarray(jets[i].primal) for i in diff)

    def along(t: tuple[Any, ...]) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
        (_, tk), (_, hk) = jax.jvp(lambda *xs: jax.jvp(f, xs, t), primals, t)
        return tk, hk

    ts, hs = jax.vmap(along)(tuple(jets[i].tangent for i in diff))
    ss = [ctx.wsum(h) for h in hs]
    if any(jets[i].second is not None for i in diff):
        s_in = tuple(
            zeros(p) if jets[i].second is None else jets[i].second
            for i, p in zip(diff, primals)
        )
        _, js = jax.jvp(f, primals, s_in)
        ss = [s + j for s, j in zip(ss, js)]

    result = const_jets(outs)
    for n, i in enumerate(float_outs):
        result[i] = Jet(outs[i], ts[n], ss[n])
    return result
