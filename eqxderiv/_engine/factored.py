"""The divergence in closed form for fields made of at most two elementwise layers
between affine maps, found on the jaxpr.

A field whose computation from `x` is a chain

$$x \\xrightarrow{A_0} z_1 \\xrightarrow{\\phi_1} a_1 \\xrightarrow{A_1} z_2
\\xrightarrow{\\phi_2} a_2 \\xrightarrow{A_2} f$$

of affine maps `A_i` (Jacobians, constant matrices, also written `A_i`) and
elementwise maps `phi_i` (Jacobians `diag(g_i)`, `g_i = phi_i'(z_i)`) has the
Jacobian `A_2 D_2 A_1 D_1 A_0`, and by the cyclic property of the trace

$$\\nabla\\cdot f = \\operatorname{tr}(D_2 A_1 D_1 A_0 A_2)
= g_2^\\top \\bigl(A_1 \\odot (A_0 A_2)^\\top\\bigr) g_1 .$$

The matrix `A_1 ⊙ (A_0 A_2)ᵀ` depends on the parameters only, not on the sample,
so under `vmap` it is computed once per batch, and the divergence of each
sample costs one matrix-vector product next to its forward pass, instead of `d`
directional derivatives. Its gradient in `x` is reverse mode over that: about two
more forward passes. With one elementwise layer the trace is
`g_1 · diag(A_0 A_1)`, and with none `tr(A_0)`.

This is the two-hidden-layer MLP (the network of the question eqxderiv was built
for) with any elementwise activations, whatever library built it: the test is on
the jaxpr. `find_layers` accepts a program only when (conservatively) every
equation that depends on `x` is registered as affine in its `x`-dependent
operands, with coefficients that do not depend on the sample (`x` or `t`), or is
elementwise (`structure.py`), and when each layer reads only the output of the
layer before it (no skip connection). Anything else returns `None` and the caller
uses the general path. Every derivative is taken by JAX's own autodiff of the
field's equations (`g_i` is one `jax.jvp` along ones, whose rule
`structure.diagonal_jvp` checks is diagonal), so kinks and custom rules give what
nested `jax.jacfwd` gives.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend import core
from jaxtyping import Array

from .jet import bind
from .registry import affine_in
from .structure import diagonal_jvp, elementwise_eqn


__all__ = ["Layers", "divergence_in_closed_form", "factored_divergence", "find_layers"]


Kind = Literal["affine", "elementwise"]

# Affine primitives whose operands without `x` may depend on the sample: they are
# offsets (`add`), or placed beside the `x`-dependent ones (`concatenate`), never
# coefficients of the map.
_OFFSETS = frozenset({"add", "add_any", "sub", "concatenate"})

# At most this many elementwise layers have a closed form (see the module
# docstring).
_MAX_ELEMENTWISE = 2


class Layers(NamedTuple):
    """A program split into layers (see `find_layers`)."""

    jaxpr: core.Jaxpr
    # The value of every variable that does not depend on `x`.
    consts: dict[Any, Any]
    # The input of each layer (`cuts[0]` is `x`), and its kind.
    cuts: tuple[Any, ...]
    kinds: tuple[Kind, ...]
    # The equations `ranges[i]` (start, stop) that compute layer `i`'s output
    # from its input.
    ranges: tuple[tuple[int, int], ...]


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(getattr(v.aval, "shape", ()))


def _complex(v: Any) -> bool:
    dtype = getattr(v.aval, "dtype", None)
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.complexfloating))


# Calls of a jaxpr, looked into (`jnp.hstack` wraps its operands in `jit`s).
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr"}


def _affine(
    eqn: core.JaxprEqn, dependent: Sequence[bool], sample: Sequence[bool]
) -> bool:
    """Whether `eqn` is affine in its operands marked `dependent`, with
    coefficients (the other operands, but offsets) that do not depend on the
    sample (marked `sample`)."""
    name = eqn.primitive.name
    if name in _CALLS:
        inner = eqn.params[_CALLS[name]]
        inner = inner.jaxpr if isinstance(inner, core.ClosedJaxpr) else inner
        dep = {v for v, d in zip(inner.invars, dependent) if d}
        smp = {v for v, s in zip(inner.invars, sample) if s} | dep
        for e in inner.eqns:
            d_ = [not isinstance(v, core.Literal) and v in dep for v in e.invars]
            s_ = [not isinstance(v, core.Literal) and v in smp for v in e.invars]
            if any(s_):
                smp.update(e.outvars)
            if not any(d_):
                continue
            if not _affine(e, d_, s_):
                return False
            dep.update(e.outvars)
        return True
    live = [n for n, d in enumerate(dependent) if d]
    coefficients = any(s and not d for d, s in zip(dependent, sample))
    return affine_in(eqn, live) and (name in _OFFSETS or not coefficients)


def _classify(
    jaxpr: core.Jaxpr, x: Any, sample: set[Any]
) -> tuple[list[Any], list[Kind | None], list[int]] | None:
    """The layer structure of `jaxpr` from `x`: the cuts, the kind of each layer
    (`None` while a layer has only met maps that are both affine and
    elementwise), and the index of the equation defining each cut (`-1` for `x`).
    `sample` holds the variables that depend on the sample (it is extended)."""
    cuts: list[Any] = [x]
    kinds: list[Kind | None] = [None]
    defined: dict[Any, int] = {x: -1}
    starts = [-1]
    layer: dict[Any, int] = {x: 0}
    # The value an output of maps both affine and elementwise (`neg`, a scaling,
    # an offset) comes from: it may open an elementwise layer after such maps
    # have been applied to it (`gelu` scales its input before and after `erfc`).
    root: dict[Any, Any] = {}
    for i, eqn in enumerate(jaxpr.eqns):
        ins = [None if isinstance(v, core.Literal) else v for v in eqn.invars]
        if any(v in sample for v in ins if v is not None):
            sample.update(eqn.outvars)
        for v in eqn.outvars:
            defined[v] = i
        marks = [v is not None and v in layer for v in ins]
        if not any(marks):
            continue
        if any(_complex(v) for v in eqn.outvars):
            # An elementwise map of complex values need not be complex-diagonal
            # as a real map (`abs`, `conj`); the general path handles them.
            return None
        current = len(cuts) - 1
        cut = cuts[current]
        live_vars = {v for v, m in zip(ins, marks) if m}
        if any(layer[v] != current and root.get(v) is not cut for v in live_vars):
            return None  # reads a layer that is already closed: a skip connection
        affine = _affine(eqn, marks, [v is not None and v in sample for v in ins])
        elementwise = elementwise_eqn(eqn, marks, _shape(cut))
        kind = kinds[current]
        fits = (affine and kind != "elementwise") or (elementwise and kind != "affine")
        if fits:
            if kind is None and affine != elementwise:
                kinds[current] = "affine" if affine else "elementwise"
        else:
            # A new layer starts at the one value this equation reads.
            starts_at = {root.get(v, v) for v in live_vars}
            if len(starts_at) != 1:
                return None
            (v,) = starts_at
            if kind != "elementwise" and elementwise_eqn(eqn, marks, _shape(v)):
                new: Kind = "elementwise"
            elif kind == "elementwise" and affine:
                new = "affine"
            else:
                return None
            if v is cut:
                # Only maps both affine and elementwise so far: this layer has
                # the new kind.
                if kind is not None:
                    return None
                kinds[current] = new
            else:
                if kind is None:
                    kinds[current] = "affine"
                cuts.append(v)
                kinds.append(new)
                starts.append(defined[v])
                layer[v] = current + 1
        for v in eqn.outvars:
            layer[v] = len(cuts) - 1
        (v_in,) = live_vars if len(live_vars) == 1 else (None,)
        if (
            v_in is not None
            and len(eqn.outvars) == 1
            and affine
            and elementwise_eqn(eqn, marks, _shape(v_in))
        ):
            root[eqn.outvars[0]] = root.get(v_in, v_in)
    (out,) = jaxpr.outvars
    if isinstance(out, core.Literal) or layer.get(out) != len(cuts) - 1:
        return None
    return cuts, kinds, starts


def find_layers(fn: Callable[[Array, Any], Array], x: Array, t: Any) -> Layers | None:
    """Splits `fn(x, t)` (`x` and the output vectors of one size `d`) into the
    layers of the module docstring, or returns `None`."""
    closed = jax.make_jaxpr(fn)(x, t)
    jaxpr = closed.jaxpr
    if len(jaxpr.outvars) != 1 or _shape(jaxpr.outvars[0]) != tuple(x.shape):
        return None
    xv, *others = jaxpr.invars
    found = _classify(jaxpr, xv, set(jaxpr.invars))
    if found is None:
        return None
    cuts, kinds, starts = found
    # Layers that only met maps both affine and elementwise are affine.
    kinds_: list[Kind] = [k or "affine" for k in kinds]
    if sum(k == "elementwise" for k in kinds_) > _MAX_ELEMENTWISE:
        return None
    ranges = tuple(zip(starts, [*starts[1:], len(jaxpr.eqns) - 1]))
    ranges = tuple((a + 1, b + 1) for a, b in ranges)
    # The values of everything that does not depend on x (the sample's time,
    # constants of the program), computed once.
    consts: dict[Any, Any] = dict(zip(jaxpr.constvars, closed.consts))
    consts.update(zip(others, jax.tree.leaves(t)))
    dependent = {xv}
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, core.Literal) and v in dependent for v in eqn.invars):
            dependent.update(eqn.outvars)
            continue
        read = [v.val if isinstance(v, core.Literal) else consts[v] for v in eqn.invars]
        with eqn.ctx.manager:
            consts.update(zip(eqn.outvars, bind(eqn, read)))
    return Layers(jaxpr, consts, tuple(cuts), tuple(kinds_), ranges)


def _layer_fn(layers: Layers, i: int) -> Callable[[Array], Array]:
    """Layer `i` as a function of its input."""
    jaxpr, (start, stop) = layers.jaxpr, layers.ranges[i]
    cut = layers.cuts[i]
    target = layers.cuts[i + 1] if i + 1 < len(layers.cuts) else jaxpr.outvars[0]

    def fn(value: Array) -> Array:
        env = {cut: value}

        def read(v: Any) -> Any:
            if isinstance(v, core.Literal):
                return v.val
            return env[v] if v in env else layers.consts[v]

        for eqn in jaxpr.eqns[start:stop]:
            if not any(
                not isinstance(v, core.Literal) and v in env for v in eqn.invars
            ):
                continue  # computed once, in `layers.consts`
            with eqn.ctx.manager:
                env.update(zip(eqn.outvars, bind(eqn, [read(v) for v in eqn.invars])))
        return env[target]

    return fn


def _matrix(fn: Callable[[Array], Array], like: Any) -> Array:
    """The constant Jacobian `(out, in)` of the affine `fn`, flattened."""
    zero = jnp.zeros(_shape(like), like.aval.dtype)
    n_in = zero.size
    n_out = math.prod(jax.eval_shape(fn, zero).shape)
    jac = (jax.jacfwd if n_in <= n_out else jax.jacrev)(fn)(zero)
    return jnp.reshape(jac, (n_out, n_in))


def _check_diagonal(layers: Layers) -> bool:
    for i, kind in enumerate(layers.kinds):
        if kind == "elementwise":
            cut = layers.cuts[i]
            zero = jnp.zeros(_shape(cut), cut.aval.dtype)
            if not diagonal_jvp(_layer_fn(layers, i), zero):
                return False
    return True


def factored_divergence(
    layers: Layers,
) -> Callable[[Array], tuple[Array, Array]] | None:
    """`x -> (divergence, value)` for a program split by `find_layers`, or `None`
    if one of its elementwise layers has a derivative rule that is not
    diagonal. The matrices the trace needs are computed here, once; the
    returned function is differentiable in `x` (and, through the matrices and
    the layers, in the field's parameters)."""
    if not _check_diagonal(layers):
        return None
    kinds = list(layers.kinds)
    fns = [_layer_fn(layers, i) for i in range(len(kinds))]
    mats: dict[int, Array] = {
        i: _matrix(fns[i], layers.cuts[i]) for i, k in enumerate(kinds) if k == "affine"
    }
    # The chain as [A_0, phi_1, A_1, ...]: an identity stands for a missing
    # affine map at either end or between two elementwise layers (impossible:
    # they would be one layer).
    d = int(jnp.size(jnp.zeros(_shape(layers.cuts[0]))))
    affine = [mats[i] for i, k in enumerate(kinds) if k == "affine"]
    if kinds[0] == "elementwise":
        affine.insert(0, jnp.eye(d, dtype=layers.cuts[0].aval.dtype))
    if kinds[-1] == "elementwise":
        affine.append(jnp.eye(d, dtype=layers.cuts[0].aval.dtype))
    n_elementwise = sum(k == "elementwise" for k in kinds)
    # The batch-independent part of the trace: tr(A_0) without an elementwise
    # layer, diag(A_0 A_1) with one, A_1 ⊙ (A_0 A_2)ᵀ with two.
    if n_elementwise == 0:
        (a0,) = affine
        weight = jnp.trace(a0)
    elif n_elementwise == 1:
        a0, a1 = affine
        weight = jnp.sum(a0 * a1.T, axis=1)
    else:
        a0, a1, a2 = affine
        weight = a1 * (a0 @ a2).T

    def divergence(x: Array) -> tuple[Array, Array]:
        value = x
        slopes = []
        for fn, kind in zip(fns, kinds):
            if kind == "elementwise":
                ones = jnp.ones_like(value)
                value, slope = jax.jvp(fn, (value,), (ones,))
                slopes.append(jnp.reshape(slope, (-1,)))
            else:
                value = fn(value)
        if not slopes:
            div = weight
        elif len(slopes) == 1:
            div = jnp.dot(slopes[0], weight.astype(slopes[0].dtype))
        else:
            w = weight.astype(slopes[0].dtype)
            div = slopes[1].astype(w.dtype) @ w @ slopes[0]
        return div.astype(value.dtype), value

    return divergence


def divergence_in_closed_form(
    fn: Callable[[Array, Any], Array], x: Array, t: Any
) -> Callable[[Array], tuple[Array, Array]] | None:
    """`x -> (divergence of fn(., t) at x, fn(x, t))` in closed form when `fn`'s
    program has the structure of the module docstring, else `None`. Traces the
    function `fn` once (it should evaluate a traced program, not run a user's
    Python code)."""
    layers = find_layers(fn, x, t)
    return None if layers is None else factored_divergence(layers)
