"""The engine's entry points: collapsed second-order Taylor-mode evaluation of a
function (see `jet.py` for the jets it propagates)."""

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core
from jaxtyping import Array, ArrayLike, Float, Shaped

from .compression import affine_bottleneck, gram_factor
from .contraction import contract
from .interpreter import initial_env, run_jaxpr
from .jet import Jet, JetContext, bind, is_float


__all__ = [
    "collapsed_jet",
    "collapsed_jet_contracted",
    "compressed_second",
    "divergence_jet",
]


# The arguments every entry point takes: the function, its primal arguments, one
# `(K, *primal.shape)` array of tangents per argument (`None` for an argument
# without), and the `K` weights of the second-order sum.
Fn: TypeAlias = Callable[..., Array]
Primals: TypeAlias = tuple[ArrayLike, ...]
Tangents: TypeAlias = tuple[Float[ArrayLike, "K ..."] | None, ...]
Weights: TypeAlias = Shaped[ArrayLike, " K"]


class _Traced(NamedTuple):
    closed: core.ClosedJaxpr
    primals: tuple[Array, ...]
    args: list[Jet]
    weights: Array


def _trace(
    fn: Callable[..., Array],
    primals: tuple[ArrayLike, ...],
    tangents: tuple[ArrayLike | None, ...],
    weights: ArrayLike,
) -> _Traced:
    """Checks the arguments and traces `fn` at `primals`."""
    if len(primals) != len(tangents):
        raise ValueError(f"got {len(primals)} primals but {len(tangents)} tangents")
    weights = jnp.asarray(weights)
    if weights.ndim != 1:
        raise ValueError(f"weights must have shape (K,); got {weights.shape}")
    num = weights.shape[0]
    primals = tuple(jnp.asarray(p) for p in primals)
    args = []
    for i, (p, t) in enumerate(zip(primals, tangents)):
        if t is not None:
            t = jnp.asarray(t)
            if t.shape != (num, *p.shape):
                raise ValueError(
                    f"tangents[{i}] has shape {t.shape}; expected "
                    f"(K, *primals[{i}].shape) = {(num, *p.shape)}"
                )
            if not is_float(p):
                raise ValueError(
                    f"primals[{i}] has dtype {p.dtype}; only floating inputs can "
                    "carry a tangent (pass None)"
                )
            t = t.astype(p.dtype)
        args.append(Jet(p, t, None))
    closed = jax.make_jaxpr(fn)(*primals)
    if len(closed.jaxpr.outvars) != 1:
        raise ValueError(
            f"fn must return a single array; got {len(closed.jaxpr.outvars)} outputs"
        )
    return _Traced(closed, primals, args, weights)


@contextlib.contextmanager
def _engine_promotion() -> Iterator[None]:
    # The user's code was traced under the user's own settings. The engine's own
    # array code broadcasts rank-0 and K-leading operands on purpose, so it allows
    # rank promotion even where the user asked for `jax_numpy_rank_promotion=
    # "raise"`. Dtype promotion is left at the user's setting: every dtype in the
    # engine is explicit (weights and directions are cast to the value they meet),
    # so it runs under `jax_numpy_dtype_promotion="strict"` too (the test suite
    # runs that way), and a standard-promotion context here would only let a
    # float64 weight silently widen a float32 pass. (The user's own rules traced
    # during the pass, `custom_jvp` ones say, also see the user's setting.)
    with jax.numpy_rank_promotion("allow"):
        yield


def _evaluate(traced: _Traced, compress: bool = False) -> tuple[Array, Jet, Any]:
    """The output value, its jet and every variable's jet."""
    closed = traced.closed
    env = initial_env(closed.jaxpr, closed.consts, traced.args)
    ctx = JetContext(traced.weights)
    (out,), env = run_jaxpr(ctx, closed.jaxpr, env, compress)
    return jnp.asarray(out.primal), out, env


def _second(y: Array, out: Jet) -> Array:
    """The output's second-order term, zeros where `None`."""
    return jnp.zeros(y.shape, y.dtype) if out.second is None else out.second


def _terms(y: Array, out: Jet, num: int) -> tuple[Array, Array]:
    """The output's tangents and second-order term, zeros where `None`."""
    t = jnp.zeros((num, *y.shape), y.dtype) if out.tangent is None else out.tangent
    return t, _second(y, out)


def collapsed_jet(
    fn: Fn, primals: Primals, tangents: Tangents, weights: Weights
) -> tuple[Array, Array, Array]:
    """Collapsed second-order Taylor-mode evaluation of `fn` at `primals`.

    **Arguments:**

    - `fn`: a function of `len(primals)` arrays returning one array.
    - `primals`: the point to expand around.
    - `tangents`: for each primal, an array of shape `(K, *primal.shape)` whose row
        `k` is that input's part of the direction `v_k`, or `None` to hold that input
        fixed (no work is spent on it; required for integer inputs).
    - `weights`: shape `(K,)`; may be traced.

    **Returns:** `(out, out_tangents, out_second)` where

    - `out = fn(*primals)`;
    - `out_tangents[k]` is the derivative of `fn` along `v_k`, shape
        `(K, *out.shape)`;
    - `out_second = sum_k weights[k] d²/ds² fn(primals + s v_k)` at `s = 0`, shape
        `out.shape`.

    With the coordinate directions of `x` and unit weights `out_second` is the
    Laplacian; with random probes and weights `1/K`, Hutchinson's estimator.

    Works under `jax.jit`, `jax.vmap` and reverse-mode autodiff (also with respect to
    arrays that `fn` closes over). A primitive without a registered rule is
    evaluated through nested `jax.jvp` and raises a `FallbackWarning` once per
    primitive. Functions with custom derivatives (`jax.custom_jvp`/`custom_vjp`)
    follow their own rules (see `rules/custom.py`).
    """
    traced = _trace(fn, primals, tangents, weights)
    with _engine_promotion():
        y, out, _ = _evaluate(traced)
        return (y, *_terms(y, out, traced.weights.shape[0]))


def collapsed_jet_contracted(
    fn: Fn,
    primals: Primals,
    tangents: Tangents,
    weights: Weights,
    contract_with: Float[ArrayLike, "K ..."],
) -> tuple[Array, Array, Array, Array]:
    """`collapsed_jet` and the contraction of its tangents with `contract_with`.

    **Arguments:** as for `collapsed_jet`, and

    - `contract_with`: shape `(K, *out.shape)`.

    **Returns:** `(out, out_tangents, out_second, contraction)` with the first three
    as for `collapsed_jet` and
    `contraction = sum_k weights[k] <contract_with[k], out_tangents[k]>`: with
    `contract_with` the input directions themselves this is the divergence (or its
    Hutchinson estimate). It is computed before the field's trailing affine
    equations (a last linear layer, a residual block's sum and linear layer),
    which saves their tangent products per sample (`contraction.contract`).
    """
    traced = _trace(fn, primals, tangents, weights)
    with _engine_promotion():
        y, out, env = _evaluate(traced)
        t, s = _terms(y, out, traced.weights.shape[0])
        c = contract(
            traced.closed.jaxpr, env, t, traced.weights, jnp.asarray(contract_with)
        )
        return y, t, s, c


def _known(x: Any) -> np.ndarray | None:
    """The value of `x` if it is known while tracing, else `None`."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_identity(traced: _Traced, tangents: tuple[Any, ...]) -> int:
    """The index of the one input with a tangent, after checking that its tangents
    are the identity and the weights all one (their values, when they are known
    while tracing; their shapes always)."""
    live = [i for i, t in enumerate(tangents) if t is not None]
    if len(live) != 1:
        raise ValueError(
            f"identity=True needs exactly one input with a tangent; got {len(live)}"
        )
    (index,) = live
    x, num = traced.primals[index], traced.weights.shape[0]
    if x.shape != (num,):
        raise ValueError(
            f"identity=True needs primals[{index}] of shape (K,) = ({num},); got "
            f"{x.shape}"
        )
    t, w = tangents[index], traced.weights
    t, w = _known(t), _known(w)
    if t is not None and not np.array_equal(t, np.eye(num)):
        raise ValueError(f"identity=True but tangents[{index}] is not the identity")
    if w is not None and not np.array_equal(w, np.ones(num)):
        raise ValueError("identity=True but the weights are not all one")
    return index


class _Bottleneck(NamedTuple):
    """Where the computation narrows to an intermediate `z` affine in one input
    (see `compression.affine_bottleneck`): the index of `z`'s equation, `z`, the
    value of every variable up to it, and `z`'s `(n, d)` Jacobian."""

    index: int
    z: Any
    values: dict[Any, Any]
    jacobian: Array


def _bottleneck(
    closed: core.ClosedJaxpr, primals: tuple[Array, ...], index: int
) -> _Bottleneck | None:
    """The bottleneck of `closed` in `primals[index]`, a vector, if there is one.
    The Jacobian of `z` comes from reverse mode (`n` passes) instead of pushing
    the identity matrix of the `d` coordinate directions through; `z` being
    affine, it is the same for every sample, so under `vmap` it is computed
    once."""
    jaxpr = closed.jaxpr
    x = primals[index]
    if x.ndim != 1:
        return None
    d = x.shape[0]
    i = affine_bottleneck(jaxpr, jaxpr.invars[index], d)
    if i is None:
        return None
    (z,) = jaxpr.eqns[i].outvars

    def prefix(xv: Array) -> dict[Any, Any]:
        values: dict[Any, Any] = dict(zip(jaxpr.constvars, closed.consts))
        values.update(zip(jaxpr.invars, primals))
        values[jaxpr.invars[index]] = xv
        read = lambda v: v.val if isinstance(v, core.Literal) else values[v]
        for eqn in jaxpr.eqns[: i + 1]:
            with eqn.ctx.manager:
                outs = bind(eqn, [read(v) for v in eqn.invars])
            values.update(zip(eqn.outvars, outs))
        return values

    values = prefix(x)
    jac = jax.jacrev(lambda xv: prefix(xv)[z])(x)  # (*z.shape, d)
    return _Bottleneck(i, z, values, jac.reshape(-1, d))


def _run_from(
    jaxpr: core.Jaxpr, b: _Bottleneck, tangents: Array
) -> tuple[Array, Jet, dict[Any, Jet]]:
    """The rest of the pass after the bottleneck, with `tangents` `(n, n)` for
    `z` (unit weights): the output value, its jet and every variable's jet."""
    zv = jnp.asarray(b.values[b.z])
    n = zv.size
    env: dict[Any, Jet] = {v: Jet(val, None, None) for v, val in b.values.items()}
    env[b.z] = Jet(zv, tangents.reshape((n, *zv.shape)), None)
    ctx = JetContext(jnp.ones((n,), zv.dtype))
    (out,), env = run_jaxpr(ctx, jaxpr, env, start=b.index + 1)
    return jnp.asarray(out.primal), out, env


def _identity_compressed(
    closed: core.ClosedJaxpr, primals: tuple[Array, ...], index: int
) -> tuple[Array, Array] | None:
    """`(out, out_second)` for the coordinate directions of `primals[index]` with
    unit weights, where the computation narrows (`_bottleneck`): `z`'s tangents
    along the `d` coordinate directions are the columns of its Jacobian,
    compressed to `n` rows as in `compression.compressed`."""
    b = _bottleneck(closed, primals, index)
    if b is None:
        return None
    y, out, _ = _run_from(closed.jaxpr, b, gram_factor(b.jacobian.T))
    return y, _second(y, out)


def _identity_divergence(
    closed: core.ClosedJaxpr, primals: tuple[Array, ...], index: int
) -> tuple[Array, Array] | None:
    """`(out, tr(d out / d primals[index]))` where the computation narrows to
    `z = A x + c` with `n < d` entries (`_bottleneck`): with `out = F(z)`,

    $$\\operatorname{tr}(J_F A) = \\sum_{k=1}^n \\langle A_{k,:}, J_F e_k \\rangle,$$

    `n` directions at `z` instead of `d` at the input, contracted with the rows
    of `A` (and before the trailing affine equations: `contraction.contract`).
    """
    b = _bottleneck(closed, primals, index)
    if b is None:
        return None
    n, d = b.jacobian.shape
    if closed.out_avals[0].shape != (d,):
        return None
    y, out, env = _run_from(closed.jaxpr, b, jnp.eye(n, dtype=b.jacobian.dtype))
    t = _terms(y, out, n)[0]
    ones = jnp.ones((n,), y.dtype)
    return y, contract(closed.jaxpr, env, t, ones, b.jacobian)


def compressed_second(
    fn: Fn,
    primals: Primals,
    tangents: Tangents,
    weights: Weights,
    identity: bool = False,
) -> tuple[Array, Array]:
    """The value and collapsed second-order term of `fn`, with the K directions
    compressed where the computation narrows.

    Where the computation narrows to one intermediate with `n < K` entries (a
    first layer narrower than the input), the K directions are replaced there by
    `n` with the same weighted second moment, which leaves `out_second` exact and
    makes the rest of the pass cost `n` directions instead of `K`
    (see `compression.py`). Only for `weights >= 0`.

    **Arguments:** as for `collapsed_jet`, and

    - `identity`: that the one input with a tangent is a vector of size `K`, its
        tangents the identity matrix and the weights all one (checked where the
        values are known while tracing). The narrowing intermediate's tangents
        then come from its Jacobian by reverse mode, and the identity matrix is
        never used.

    **Returns:** `(out, out_second)` as in `collapsed_jet`.
    """
    traced = _trace(fn, primals, tangents, weights)
    with _engine_promotion():
        if identity:
            index = _check_identity(traced, tangents)
            found = _identity_compressed(traced.closed, traced.primals, index)
            if found is not None:
                return found
        y, out, _ = _evaluate(traced, compress=True)
        return y, _second(y, out)


def divergence_jet(
    fn: Fn, primals: Primals, tangents: Tangents, weights: Weights
) -> tuple[Array, Array]:
    """The value and divergence of `fn` in its one input with a tangent, a vector
    of size `K` whose tangents are the identity and whose weights are all one
    (checked as for `compressed_second(identity=True)`), from one trace of `fn`.

    Where the computation narrows to an intermediate `z` affine in that input
    with `n < K` entries, and `fn`'s output is a vector of size `K`, the
    divergence costs `n` directions instead of `K` (see
    `_identity_divergence`); elsewhere it is the contraction of
    `collapsed_jet_contracted` with the directions themselves.

    **Arguments:** as for `collapsed_jet`.

    **Returns:** `(out, divergence)`, of shapes `(K,)` and `()`.
    """
    traced = _trace(fn, primals, tangents, weights)
    with _engine_promotion():
        index = _check_identity(traced, tangents)
        found = _identity_divergence(traced.closed, traced.primals, index)
        if found is not None:
            return found
        y, out, env = _evaluate(traced)
        t, _ = _terms(y, out, traced.weights.shape[0])
        directions = traced.args[index].tangent
        assert directions is not None
        c = contract(traced.closed.jaxpr, env, t, traced.weights, directions)
        return y, c
