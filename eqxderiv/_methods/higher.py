"""Mixed partial derivatives of any order and the biharmonic: for each order K
asked for, one pass of order K over the directions that polarize every
quantity of that order (`eqxderiv._engine.polarization`), whose collapsed
top-order terms are the quantities themselves (one weight column each)."""

from collections.abc import Callable
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._engine import collapsed_taylor
from .._engine.higher import derivatives_along
from .._engine.polarization import partial_directions
from .._quantity import PartialDerivative, Quantities, Quantity as Q
from .autodiff import Fn


# `jet(g, z, V, W, K) -> (J, m)`: `top[j] = sum_r W[r, j] d^K/ds^K g(z + s V[r])`.
DirectionalJet: TypeAlias = Callable[
    [Callable[[Array], Array], Array, Array, Array, int], Array
]

# Higher-order passes propagate at most this many directions at a time when the
# method sets no `chunk_size`: the biharmonic at d = 128 has 16,384, each with
# three coefficient arrays per value.
DEFAULT_CHUNK = 1024


def is_higher(n: Any) -> bool:
    """Whether `n` is computed by `higher_quantities`."""
    return isinstance(n, PartialDerivative) or n == Q.BIHARMONIC


def taylor_directional(
    g: Callable[[Array], Array], z: Array, V: Array, W: Array, K: int
) -> Array:
    """One collapsed Taylor-mode pass of order `K` (a `DirectionalJet`)."""
    return collapsed_taylor(g, z, V, W, K)[1]


def nested_directional(
    g: Callable[[Array], Array], z: Array, V: Array, W: Array, K: int
) -> Array:
    """`K` nested `jax.jvp`s per direction, weighted and summed (a
    `DirectionalJet`)."""

    def one(v: Array) -> Array:
        return derivatives_along(lambda s: g(z + s * v), K)(jnp.zeros((), z.dtype))[K]

    return jnp.tensordot(W.astype(z.dtype), jax.vmap(one)(V), axes=[[0], [0]])


def chunked(jet: DirectionalJet, chunk: int | None) -> DirectionalJet:
    """`jet` over at most `chunk` directions at a time (zero padding rows add
    nothing: a zero direction has zero derivatives)."""
    size = DEFAULT_CHUNK if chunk is None else chunk

    def run(g: Callable[[Array], Array], z: Array, V: Array, W: Array, K: int) -> Array:
        R = V.shape[0]
        if R <= size:
            return jet(g, z, V, W, K)
        n = -(-R // size)
        pad = n * size - R

        def padded(a: Array) -> Array:
            a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])
            return a.reshape((n, size, *a.shape[1:]))

        tops = jax.lax.map(lambda a: jet(g, z, a[0], a[1], K), (padded(V), padded(W)))
        return jnp.sum(tops, axis=0)

    return run


def higher_quantities(
    fn: Fn,
    x: Array,
    t: Array | None,
    needs: frozenset[Any],
    jet: DirectionalJet,
    biharmonic: tuple[Array, Array] | None,
) -> Quantities:
    """The quantities of `needs` that `is_higher` names, at one sample.

    `biharmonic`: the directions `(R, d)` and weights `(R,)` with
    `Δ² f = sum_r w[r] D^4_{V[r]} f` (exact, or an estimator's), where needed.
    """
    d = x.shape[0]
    has_t = t is not None
    n = d + int(has_t)
    if has_t:
        z = jnp.concatenate([x, jnp.reshape(t, (1,)).astype(x.dtype)])
        g = lambda a: fn(a[:d], jnp.reshape(a[d], jnp.shape(t)).astype(t.dtype))  # noqa: E731
    else:
        z, g = x, (lambda a: fn(a, None))  # noqa: E731
    partials = sorted(p for p in needs if isinstance(p, PartialDerivative))
    for p in partials:
        if p.t and not has_t:
            raise ValueError(f"The partial derivative {p} needs a time `t`.")
    orders = {p.order for p in partials}
    if Q.BIHARMONIC in needs:
        orders.add(4)
    q: Quantities = {}
    for K in sorted(orders):
        cols = [p for p in partials if p.order == K]
        bih = K == 4 and Q.BIHARMONIC in needs
        blocks_v, blocks_w = [], []
        if cols:
            V, W = partial_directions([p.multi_index(n) for p in cols], n)
            blocks_v.append(jnp.asarray(V, x.dtype))
            blocks_w.append(np.pad(W, ((0, 0), (0, 1))) if bih else W)
        J = len(cols) + int(bih)
        if bih:
            assert biharmonic is not None
            Vb, wb = biharmonic
            if has_t:
                Vb = jnp.pad(Vb, ((0, 0), (0, 1)))
            blocks_v.append(Vb.astype(x.dtype))
            col = jnp.zeros((Vb.shape[0], J), x.dtype).at[:, -1].set(wb.astype(x.dtype))
            blocks_w.append(col)
        V_all = jnp.concatenate(blocks_v)
        W_all = jnp.concatenate([jnp.asarray(w, x.dtype) for w in blocks_w])
        top = jet(g, z, V_all, W_all, K)
        for j, p in enumerate(cols):
            q[p] = top[j]
        if bih:
            q[Q.BIHARMONIC] = top[-1]
    return q
