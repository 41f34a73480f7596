"""Methods: how a set of derivative quantities of one field is computed.

Every named operator asks its method for *quantities* of the flattened field
`fn(x, t) -> (m,)` at one sample `x` of shape `(d,)`:

| quantity     | shape       | meaning                                   |
| ------------ | ----------- | ----------------------------------------- |
| `value`      | `(m,)`      | $f(x, t)$                                 |
| `jacobian`   | `(m, d)`    | $\\partial f / \\partial x$               |
| `dt`         | `(m,)`      | $\\partial f / \\partial t$               |
| `divergence` | `()`        | $\\nabla \\cdot f$ (needs $m = d$)        |
| `laplacian`  | `(m,)`      | $\\Delta f_i$                             |
| `graddiv`    | `(d,)`      | $\\nabla (\\nabla \\cdot f)$              |
| `advection`  | `(d,)`      | $(f \\cdot \\nabla) f = J f$              |
| `hessian`    | `(m, d, d)` | $\\partial^2 f_i / \\partial x \\partial x$ |

A fused expression asks for the union of its terms' quantities at once, so a
method computes them from one shared propagation wherever it can.
"""

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._engine import trace_field
from ._misc import as_int, check_count


Fn = Callable[[Array, Array | None], Array]


class AbstractMethod(eqx.Module):
    """How derivative quantities of a field are computed. See `eqxderiv.Taylor`,
    `eqxderiv.Forward`, `eqxderiv.Nested`, `eqxderiv.Hutchinson` and
    `eqxderiv.SparseSampling`.
    """

    stochastic: ClassVar[bool]

    @abc.abstractmethod
    def compute(
        self, fn: Fn, x: Array, t: Array | None, needs: frozenset[str], key: Any
    ) -> dict[str, Array]:
        """Computes every quantity in `needs` at one sample."""


# The quantities a stochastic method estimates from its random directions. It
# computes every other one exactly (see `AbstractJetMethod.compute`), so an
# operator that needs none of these needs no key.
ESTIMATED = frozenset({"divergence", "laplacian", "graddiv"})


def needs_key(method: AbstractMethod, needs: frozenset[str]) -> bool:
    """Whether computing `needs` with `method` draws random numbers."""
    return method.stochastic and bool(needs & ESTIMATED)


def _call(fn: Fn, t: Array | None) -> Callable[[Array], Array]:
    return lambda x: fn(x, t)


def exact_jacobian(
    fn: Fn, x: Array, t: Array | None, reverse: bool = True
) -> tuple[Array, Array]:
    """Value and Jacobian `(m, d)`: forward tangents when `d <= m` (or when
    reverse mode does not apply, `reverse=False`), else reverse cotangents,
    whichever needs fewer passes."""
    g = _call(fn, t)
    if not reverse:
        return g(x), jax.jacfwd(g)(x)
    value, vjp = jax.vjp(g, x)
    m, d = value.shape[0], x.shape[0]
    if d <= m:
        eye = jnp.eye(d, dtype=x.dtype)
        _, cols = jax.vmap(lambda v: jax.jvp(g, (x,), (v,)))(eye)
        return value, cols.T
    eye = jnp.eye(m, dtype=value.dtype)
    (rows,) = jax.vmap(vjp)(eye)
    return value, rows


def time_derivative(fn: Fn, x: Array, t: Array) -> tuple[Array, Array]:
    return jax.jvp(lambda s: fn(x, s), (t,), (jnp.ones_like(t),))


def hessian(fn: Fn, x: Array, t: Array | None, reverse: bool = True) -> Array:
    # Forward-over-reverse: d forward passes over one reverse pass; forward over
    # forward where reverse mode does not apply (a `while` loop in the field).
    inner = jax.jacrev if reverse else jax.jacfwd
    return jax.jacfwd(inner(_call(fn, t)))(x)


# Up to this many directions, the gradient of the divergence and a Laplacian share
# one pass (see `AbstractJetMethod.compute`).
_SHARED_PASS_MAX_DIRECTIONS = 64


class AbstractJetMethod(AbstractMethod):
    """A method built on one forward pass that pushes the value, `K` first-order
    tangents and one weighted sum of second-order terms through the field:

    $$T_k = J v_k, \\qquad S = \\sum_k w_k\\, D^2 f[v_k, v_k].$$

    Subclasses choose the directions $v_k$ and weights $w_k$ (`directions`) and
    how the pass is computed (`jet`). Exact methods use $v_k = e_k$, $w_k = 1$, so
    $T$ is the Jacobian and $S$ the Laplacian; stochastic ones use random probes.
    A time derivative is one separate JVP along `t`.
    The gradient of the divergence is reverse mode over this forward pass.
    """

    chunk_size: eqx.AbstractVar[int | None]

    @abc.abstractmethod
    def directions(self, d: int, dtype: Any, key: Any) -> tuple[Array, Array, bool]:
        """Returns `(V, w, exact)`: directions `(K, d)`, weights `(K,)`, and
        whether `V` is the identity (so that tangents give the Jacobian)."""

    @abc.abstractmethod
    def jet(
        self,
        fn: Fn,
        x: Array,
        t: Array | None,
        tx: Array,
        w: Array,
        second: bool,
        contract: Array | None,
        tangents: bool = True,
    ) -> tuple[Array, Array | None, Array | None, Array | None]:
        """Returns `(value (m,), tangents (K, m) or None, second (m,) or None,
        contraction () or None)`: the contraction is
        `sum_k w_k <contract[k], tangents[k]>` when `contract` (`(K, m)`) is
        given, which gives the divergence for `contract = V`. With
        `tangents=False` the caller does not want the tangents, and a method may
        return `None` for them."""

    def _chunked_jet(self, fn, x, t, tx, w, second, contract, tangents=True):
        k = tx.shape[0]
        c = self.chunk_size
        if c is None or k <= c:
            return self.jet(fn, x, t, tx, w, second, contract, tangents)
        # Bounded memory: propagate `c` directions at a time. Padding rows have
        # zero tangents and zero weight, so they add nothing.
        n = -(-k // c)
        pad = n * c - k

        def padded(a):
            a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)])
            return a.reshape((n, c) + a.shape[1:])

        args = (
            padded(tx),
            padded(w),
            None if contract is None else padded(contract),
        )

        def one(a):
            cx, cw, cc = a
            return self.jet(fn, x, t, cx, cw, second, cc, tangents)

        values, T, seconds, contracted = jax.lax.map(one, args)
        if T is not None:
            T = T.reshape((n * c,) + T.shape[2:])[:k]
        s = None if seconds is None else jnp.sum(seconds, axis=0)
        con = None if contracted is None else jnp.sum(contracted, axis=0)
        return values[0], T, s, con

    def compute(self, fn, x, t, needs, key):
        d = x.shape[0]
        want_dt = "dt" in needs
        if want_dt and t is None:
            raise ValueError("The time derivative needs a time `t`.")
        stochastic_q = needs & {"divergence", "laplacian", "graddiv"}
        want_jac = "jacobian" in needs
        V, w, exact = self.directions(d, x.dtype, key)
        # One trace of the field tells its output shape, whether reverse mode
        # applies, and gives forward rules to its `custom_vjp` functions.
        program = trace_field(fn, x, t)
        fn, reverse = program.forward, program.reverse
        m = program.out.shape[0]
        # The forward pass gives the Jacobian as a by-product for exact methods;
        # for a Jacobian alone, reverse mode is cheaper when m < d.
        use_dirs = bool(stochastic_q) or (exact and want_jac and d <= m)
        second = "laplacian" in needs
        q: dict[str, Array] = {}

        if not use_dirs:
            if want_jac:
                q["value"], q["jacobian"] = exact_jacobian(fn, x, t, reverse)
            if want_dt:
                q["value"], q["dt"] = time_derivative(fn, x, t)  # pyright: ignore
            if "value" not in q:
                q["value"] = fn(x, t)
        else:
            div = bool(needs & {"divergence", "graddiv"})

            def jet_pass(x_, with_second, with_div):
                # sum_k w_k v_k . (J v_k): the trace for V = I, w = 1. Only when
                # asked for: it needs m = d, which a Laplacian does not.
                contract = V if with_div else None
                # Without a divergence or Jacobian, only the second-order term is
                # wanted, which a method may compute from fewer directions.
                keep = with_div or want_jac or not with_second
                value, T, S, c = self._chunked_jet(
                    fn, x_, t, V, w, with_second, contract, keep
                )
                out = {"value": value}
                if with_div:
                    assert c is not None
                    out["divergence"] = c
                if exact and T is not None:
                    out["jacobian"] = T.T
                if S is not None:
                    out["laplacian"] = S
                return out

            if "graddiv" in needs:
                # Reverse mode over the forward pass (never reverse-over-reverse).
                # For small d a Laplacian rides along in the same pass as an
                # auxiliary output, sharing the primal and first-order tangents;
                # for larger d, reverse mode over a pass that carries the
                # second-order chain measured slower than two passes (at d = 128,
                # 3x; benchmarks/run.py), so the Laplacian gets its own pass.
                shared = second and len(V) <= _SHARED_PASS_MAX_DIRECTIONS

                def div_aux(x_):
                    out = jet_pass(x_, shared, True)
                    return out["divergence"], out

                if reverse:
                    grad = jax.value_and_grad(div_aux, has_aux=True)(x)
                    (_, q), q["graddiv"] = grad
                else:
                    # No reverse mode through a `while` loop: forward over the
                    # forward pass, d passes.
                    q = jet_pass(x, shared, True)
                    q["graddiv"] = jax.jacfwd(
                        lambda x_: jet_pass(x_, False, True)["divergence"]
                    )(x)
                if second and not shared:
                    q["laplacian"] = jet_pass(x, True, False)["laplacian"]
            else:
                q = jet_pass(x, second, div)
            if want_dt:
                # One JVP along t: cheaper than a (K+1)-th direction in the pass,
                # whose output tangents would then all be needed.
                _, q["dt"] = time_derivative(fn, x, t)  # pyright: ignore

        if want_jac and "jacobian" not in q:
            # Stochastic methods give exact Jacobians too.
            _, q["jacobian"] = exact_jacobian(fn, x, t, reverse)
        if "advection" in needs:
            if "jacobian" in q:
                q["advection"] = q["jacobian"] @ q["value"]
            else:
                # (f . grad) f is one JVP along f itself; no Jacobian is formed.
                _, q["advection"] = jax.jvp(_call(fn, t), (x,), (q["value"],))
        if "hessian" in needs:
            q["hessian"] = hessian(fn, x, t, reverse)
        return q


def _forward_jet(fn, x, t, tx, w, second, contract):
    """Nested forward mode: one JVP (or JVP-of-JVP) per direction, vectorised.
    `t` (possibly None) is held fixed."""
    g = lambda a: fn(a, t)

    def one(v):
        if not second:
            y, dy = jax.jvp(g, (x,), (v,))
            return y, dy, y
        inner = lambda a: jax.jvp(g, (a,), (v,))
        (y, dy), (_, d2y) = jax.jvp(inner, (x,), (v,))
        return y, dy, d2y

    y, dy, d2y = jax.vmap(one)(tx)
    s = jnp.tensordot(w, d2y, axes=1) if second else None
    c = None if contract is None else jnp.einsum("k,km,km->", w, contract, dy)
    return y[0], dy, s, c


class Forward(AbstractJetMethod):
    """Exact derivatives by plain nested forward mode: one JVP per input
    direction for first-order terms, one JVP-of-JVP per direction for the
    Laplacian, reverse mode over that for the gradient of the divergence.

    The Laplacian costs $d$ second-order passes, where `Taylor` pays for one
    collapsed pass; this method is kept as a dependable, primitive-agnostic
    alternative.

    **Arguments:**

    - `chunk_size`: propagate at most this many input directions at a time
        (bounds memory for large `d`). `None` propagates all at once.
    """

    chunk_size: int | None = eqx.field(default=None, static=True, converter=as_int)
    stochastic: ClassVar[bool] = False

    def __check_init__(self):
        check_count(self.chunk_size, "chunk_size", optional=True)

    def directions(self, d, dtype, key):
        return jnp.eye(d, dtype=dtype), jnp.ones((d,), dtype), True

    def jet(self, fn, x, t, tx, w, second, contract, tangents=True):
        return _forward_jet(fn, x, t, tx, w, second, contract)


class Nested(AbstractMethod):
    """Brute-force nested autodiff, as one writes it by hand: `jax.jacobian`
    for first derivatives, `jax.hessian` traced for Laplacians, Jacobian of the
    trace of the Jacobian for the gradient of the divergence. Every quantity is
    computed separately. This is the reference the other methods are tested
    against; it builds a `(d, d)` Hessian per output for a Laplacian. For a
    field with a `while` loop, through which JAX has no reverse mode, every
    `jax.jacobian` is `jax.jacfwd` instead.
    """

    stochastic: ClassVar[bool] = False

    def compute(self, fn, x, t, needs, key):
        g = _call(fn, t)
        q: dict[str, Array] = {"value": g(x)}
        m = q["value"].shape[0]
        reverse = trace_field(fn, x, t).reverse
        jac = jax.jacobian if reverse else jax.jacfwd
        hess = jax.hessian if reverse else lambda h: jax.jacfwd(jax.jacfwd(h))
        if needs & {"jacobian", "divergence", "advection"}:
            q["jacobian"] = jac(g)(x)
        if "dt" in needs:
            if t is None:
                raise ValueError("The time derivative needs a time `t`.")
            q["dt"] = jac(lambda s: fn(x, s))(t).reshape(m)
        if "divergence" in needs:
            q["divergence"] = jnp.trace(q["jacobian"])
        if "laplacian" in needs:
            q["laplacian"] = jnp.trace(hess(g)(x), axis1=-2, axis2=-1)
        if "graddiv" in needs:
            q["graddiv"] = jac(lambda a: jnp.trace(jac(g)(a)))(x)
        if "advection" in needs:
            q["advection"] = q["jacobian"] @ q["value"]
        if "hessian" in needs:
            q["hessian"] = hess(g)(x)
        return q


_NAMES = ("auto", "taylor", "forward", "nested", "hutchinson", "sparse")
# What to suggest to someone who passed a method's class instead of an instance.
_EXAMPLES = {
    "Hutchinson": "Hutchinson(num_probes=16)",
    "SparseSampling": "SparseSampling(num_samples=16)",
    "Taylor": "Taylor(chunk_size=64)",
    "Forward": "Forward(chunk_size=64)",
}


def as_method(method: Any) -> AbstractMethod:
    """Converts the `method=` argument of an operator to a method object."""
    if isinstance(method, AbstractMethod):
        return method
    if isinstance(method, str):
        if method == "auto" or method == "taylor":
            from ._taylor_method import Taylor

            return Taylor()
        if method == "forward":
            return Forward()
        if method == "nested":
            return Nested()
        if method == "hutchinson":
            from ._stochastic import Hutchinson

            return Hutchinson()
        if method == "sparse":
            from ._stochastic import SparseSampling

            return SparseSampling()
        raise ValueError(
            f"`method` must be one of {_NAMES} or a method object such as "
            f"`eqxderiv.Hutchinson(num_probes=16)`; got {method!r}."
        )
    if isinstance(method, type) and issubclass(method, AbstractMethod):
        name = method.__name__
        example = _EXAMPLES.get(name)
        also = "" if example is None else f" or `eqxderiv.{example}`"
        raise TypeError(
            f"`method` must be a method object, not the class `{name}`: "
            f"instantiate it, e.g. `method=eqxderiv.{name}()`{also}."
        )
    raise TypeError(
        f"`method` must be a string from {_NAMES} or an `eqxderiv` method object; "
        f"got {type(method).__name__}."
    )
