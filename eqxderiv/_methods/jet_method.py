"""Methods built on one forward pass of directional derivatives (a jet)."""

import abc
from typing import Any, NamedTuple, TypeAlias

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._engine import warn_nested_second_derivatives
from .._quantity import ESTIMATED, Quantities, Quantity as Q
from .._validation import check_count
from .abstract import AbstractMethod, FieldProgram
from .autodiff import Fn, at_time, exact_jacobian, hessian, time_derivative
from .higher import (
    DirectionalJet,
    chunked,
    higher_quantities,
    is_higher,
    nested_directional,
    taylor_directional,
)


class JetPass(NamedTuple):
    """One jet pass to compute (see `AbstractJetMethod.jet`).

    **Fields:**

    - `fn`: the flattened field `fn(x, t) -> (m,)`; `t` is held fixed.
    - `x`: the point, `(d,)`; `t`: its time or `None`.
    - `tx`: the `K` directions, `(K, d)`; `w`: their weights, `(K,)`.
    - `second`: whether the weighted second-order term is wanted.
    - `contract`: `(K, m)` or `None`; see `AbstractJetMethod.jet`.
    - `tangents`: whether the caller wants the `K` output tangents.
    """

    fn: Fn
    x: Array
    t: Array | None
    tx: Array
    w: Array
    second: bool
    contract: Array | None
    tangents: bool = True


# What a jet pass returns: the value `(m,)`, the tangents `(K, m)` or `None`, the
# second-order term `(m,)` or `None` and the contraction `()` or `None`.
JetResult: TypeAlias = tuple[Array, Array | None, Array | None, Array | None]


def forward_jet(p: JetPass) -> JetResult:
    """Nested forward mode: one JVP (or JVP-of-JVP) per direction, vectorised.
    `t` (possibly None) is held fixed."""
    fn, x, t, tx, w, second, contract = p[:7]
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


# The outer pass of the exact biharmonic carries (directions x d) coefficients
# per value; without a `chunk_size`, at most this many.
_OUTER_VALUES = 4096

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
    def jet(self, p: JetPass) -> JetResult:
        """Computes the pass `p`.

        Returns `(value (m,), tangents (K, m) or None, second (m,) or None,
        contraction () or None)`: the contraction is
        `sum_k w_k <contract[k], tangents[k]>` when `contract` (`(K, m)`) is
        given, which gives the divergence for `contract = V`. With
        `tangents=False` the caller does not want the tangents, and a method may
        return `None` for them."""

    def _chunked_jet(
        self, p: JetPass, nested: bool = False, chunk: int | None = None
    ) -> JetResult:
        """The pass `p`, at most `chunk` (default: `chunk_size`) directions at a
        time; by nested forward mode with `nested`."""
        jet = forward_jet if nested else self.jet
        k = p.tx.shape[0]
        c = self.chunk_size if chunk is None else chunk
        if c is None or k <= c:
            return jet(p)
        # Bounded memory: propagate `c` directions at a time. Padding rows have
        # zero tangents and zero weight, so they add nothing.
        n = -(-k // c)
        pad = n * c - k

        def padded(a):
            a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)])
            return a.reshape((n, c) + a.shape[1:])

        args = (
            padded(p.tx),
            padded(p.w),
            None if p.contract is None else padded(p.contract),
        )

        def one(a):
            cx, cw, cc = a
            return jet(p._replace(tx=cx, w=cw, contract=cc))

        values, T, seconds, contracted = jax.lax.map(one, args)
        if T is not None:
            T = T.reshape((n * c,) + T.shape[2:])[:k]
        s = None if seconds is None else jnp.sum(seconds, axis=0)
        con = None if contracted is None else jnp.sum(contracted, axis=0)
        return values[0], T, s, con

    def __check_init__(self) -> None:
        # Every jet method's `chunk_size`, checked once (a bool is refused).
        check_count(self.chunk_size, "chunk_size", optional=True)

    def biharmonic_directions(
        self, d: int, dtype: Any, key: Any
    ) -> tuple[Array, Array] | None:
        """`None` for the exact biharmonic, the Laplacian of the Laplacian (see
        `compute`); a stochastic method returns `(V, w)`: directions `(R, d)`
        and weights `(R,)` with `Δ² f = E[sum_r w_r D^4 f[V_r]^4]`, for one
        pass of order 4."""
        return None

    def higher_jet(self) -> DirectionalJet:
        """How a pass of order three or more (or a mixed partial) is computed:
        one collapsed Taylor-mode pass by default."""
        return taylor_directional

    def compute(
        self,
        field: FieldProgram,
        x: Array,
        t: Array | None,
        needs: frozenset[Any],
        key: Any,
    ) -> Quantities:
        higher = frozenset(n for n in needs if is_higher(n))
        grad_lap = Q.GRADLAPLACIAN in needs
        bih = None
        if Q.BIHARMONIC in higher:
            bih = self.biharmonic_directions(
                x.shape[0],
                x.dtype,
                jax.random.fold_in(key, 4) if key is not None else None,
            )
        exact_bih = Q.BIHARMONIC in higher and bih is None
        base = needs - higher - {Q.GRADLAPLACIAN}
        # The gradient of the Laplacian, and the exact biharmonic (the Laplacian
        # of the Laplacian), give the Laplacian as their primal.
        if grad_lap or exact_bih:
            base = base - {Q.LAPLACIAN}
        q = self._compute_to_second(field, x, t, base, key)
        if grad_lap:
            q[Q.LAPLACIAN], q[Q.GRADLAPLACIAN] = self._grad_laplacian(field, x, t, key)
        if exact_bih:
            lap, q[Q.BIHARMONIC] = self._laplacian_of_laplacian(field, x, t)
            if Q.LAPLACIAN in needs:
                q.setdefault(Q.LAPLACIAN, lap)
            higher = higher - {Q.BIHARMONIC}
        if higher:
            # As for second derivatives, a custom rule that computes its value by
            # other code than its function is followed as nested autodiff does
            # only by jvps of the whole field.
            jet = self.higher_jet() if field.collapsible else nested_directional
            if not field.collapsible:
                warn_nested_second_derivatives()
            q.update(
                higher_quantities(
                    field.forward, x, t, higher, chunked(jet, self.chunk_size), bih
                )
            )
        return q

    def _laplacian_of_laplacian(
        self, field: FieldProgram, x: Array, t: Array | None
    ) -> tuple[Array, Array]:
        """`(Δf, Δ²f)`, both `(m,)`, exact: a collapsed Laplacian pass over the
        program of a collapsed Laplacian pass, whose value is the Laplacian.

        The inner pass sums its second-order terms over the `d` directions
        before the outer pass differentiates them, so the largest values it
        carries are `(d, d, n)` for a layer of width `n`: one array of `d²`
        directional coefficients, where a single pass of order 4 over the `d²`
        directions of the polarized biharmonic carries three, and pays Faà di
        Bruno's products on each (measured 2.6x to 3.9x slower on the
        benchmark's MLP at d = 8 and 32; `benchmarks/run.py`).
        """
        d = x.shape[0]
        V, w = jnp.eye(d, dtype=x.dtype), jnp.ones((d,), x.dtype)
        nested = not field.collapsible

        def laplacian(fn: Fn, a: Array, chunk: int | None) -> tuple[Array, Array]:
            p = JetPass(fn, a, t, V, w, True, None, False)
            value, _, S, _ = self._chunked_jet(p, nested, chunk)
            assert S is not None
            return value, S

        # The outer pass's values are d times the inner pass's: without a
        # `chunk_size`, it propagates at most `_OUTER_VALUES // d` directions at
        # a time.
        outer_chunk = self.chunk_size or max(1, _OUTER_VALUES // d)
        inner = lambda a, s: laplacian(field.forward, a, self.chunk_size)[1]  # noqa: E731
        return laplacian(inner, x, outer_chunk)

    def _grad_laplacian(
        self, field: FieldProgram, x: Array, t: Array | None, key: Any
    ) -> tuple[Array, Array]:
        """`(Δf (m,), ∇Δf (m, d))`: reverse mode over the Laplacian pass (of
        the same directions as the Laplacian, so the same estimate for a
        stochastic method)."""
        V, w, _ = self.directions(x.shape[0], x.dtype, key)
        nested = not field.collapsible

        def laplacian(a: Array) -> Array:
            p = JetPass(field.forward, a, t, V, w, True, None, False)
            S = self._chunked_jet(p, nested)[2]
            assert S is not None
            return S

        if not field.reverse:
            return laplacian(x), jax.jacfwd(laplacian)(x)
        S, vjp = jax.vjp(laplacian, x)
        (rows,) = jax.vmap(vjp)(jnp.eye(S.shape[0], dtype=S.dtype))
        return S, rows

    def _compute_to_second(
        self,
        field: FieldProgram,
        x: Array,
        t: Array | None,
        needs: frozenset[Q],
        key: Any,
    ) -> Quantities:
        d = x.shape[0]
        want_dt = Q.DT in needs
        if want_dt and t is None:
            raise ValueError("The time derivative needs a time `t`.")
        stochastic_q = needs & ESTIMATED
        want_jac = Q.JACOBIAN in needs
        V, w, exact = self.directions(d, x.dtype, key)
        fn, reverse = field.forward, field.reverse
        m = field.size
        # The forward pass gives the Jacobian as a by-product for exact methods;
        # for a Jacobian alone, reverse mode is cheaper when m < d.
        use_dirs = bool(stochastic_q) or (exact and want_jac and d <= m)
        second = Q.LAPLACIAN in needs
        # Where a custom function's rule may disagree with the code that computes
        # its primal output, derivatives of derivatives (a Laplacian, a gradient
        # of the divergence, and parameter gradients of any derivative) follow
        # nested autodiff exactly only through `jax.jvp`s of the field (see
        # `eqxderiv._engine.program`).
        nested = not field.collapsible
        if nested:
            warn_nested_second_derivatives()
        q: Quantities = {}

        if not use_dirs:
            if want_jac:
                q[Q.VALUE], q[Q.JACOBIAN] = exact_jacobian(fn, x, t, reverse)
            if want_dt:
                q[Q.VALUE], q[Q.DT] = time_derivative(fn, x, t)  # pyright: ignore
            if Q.VALUE not in q:
                q[Q.VALUE] = fn(x, t)
        else:
            div = bool(needs & {Q.DIVERGENCE, Q.GRADDIV})

            def jet_pass(x_, with_second, with_div):
                # sum_k w_k v_k . (J v_k): the trace for V = I, w = 1. Only when
                # asked for: it needs m = d, which a Laplacian does not.
                contract = V if with_div else None
                # The tangents themselves are wanted only for a Jacobian (or a
                # pass with nothing else to give); a divergence or second-order
                # term alone a method may compute from fewer directions.
                keep = want_jac or not (with_second or with_div)
                value, T, S, c = self._chunked_jet(
                    JetPass(fn, x_, t, V, w, with_second, contract, keep), nested
                )
                out: Quantities = {Q.VALUE: value}
                if with_div:
                    assert c is not None
                    out[Q.DIVERGENCE] = c
                if exact and T is not None:
                    out[Q.JACOBIAN] = T.T
                if S is not None:
                    out[Q.LAPLACIAN] = S
                return out

            if Q.GRADDIV in needs:
                # Reverse mode over the forward pass (never reverse-over-reverse).
                # For small d a Laplacian rides along in the same pass as an
                # auxiliary output, sharing the primal and first-order tangents;
                # for larger d, reverse mode over a pass that carries the
                # second-order chain measured slower than two passes (at d = 128,
                # 3x; benchmarks/run.py), so the Laplacian gets its own pass.
                shared = second and len(V) <= _SHARED_PASS_MAX_DIRECTIONS

                def div_aux(x_):
                    out = jet_pass(x_, shared, True)
                    return out[Q.DIVERGENCE], out

                if reverse:
                    grad = jax.value_and_grad(div_aux, has_aux=True)(x)
                    (_, q), q[Q.GRADDIV] = grad
                else:
                    # No reverse mode through a `while` loop: forward over the
                    # forward pass, d passes.
                    q = jet_pass(x, shared, True)
                    q[Q.GRADDIV] = jax.jacfwd(
                        lambda x_: jet_pass(x_, False, True)[Q.DIVERGENCE]
                    )(x)
                if second and not shared:
                    q[Q.LAPLACIAN] = jet_pass(x, True, False)[Q.LAPLACIAN]
            else:
                q = jet_pass(x, second, div)
            if want_dt:
                # One JVP along t: cheaper than a (K+1)-th direction in the pass,
                # whose output tangents would then all be needed.
                _, q[Q.DT] = time_derivative(fn, x, t)  # pyright: ignore

        if want_jac and Q.JACOBIAN not in q:
            # Stochastic methods give exact Jacobians too.
            _, q[Q.JACOBIAN] = exact_jacobian(fn, x, t, reverse)
        if Q.ADVECTION in needs:
            if Q.JACOBIAN in q:
                q[Q.ADVECTION] = q[Q.JACOBIAN] @ q[Q.VALUE]
            else:
                # (f . grad) f is one JVP along f itself; no Jacobian is formed.
                _, q[Q.ADVECTION] = jax.jvp(at_time(fn, t), (x,), (q[Q.VALUE],))
        if Q.HESSIAN in needs:
            q[Q.HESSIAN] = hessian(fn, x, t, reverse)
        return q
