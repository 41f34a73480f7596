"""The default exact method: collapsed Taylor-mode propagation."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp

from ._engine import collapsed_jet, collapsed_jet_contracted, compressed_second
from ._method import AbstractJetMethod
from ._misc import as_int, check_count


def taylor_jet(fn, x, t, tx, w, second, contract, compress=False, identity=False):
    """One collapsed pass: value, `K` tangents and `sum_k w_k D^2 f[v_k, v_k]`;
    `t` (possibly None) is held fixed. With `compress`, the tangents are not
    returned and the second-order term may be computed from fewer directions."""
    g, primals, tangents = (lambda a: fn(a, t)), (x,), (tx,)
    T = c = None
    if compress:
        y, S = compressed_second(g, primals, tangents, w, identity=identity)
    elif contract is None:
        y, T, S = collapsed_jet(g, primals, tangents, w)
    else:
        y, T, S, c = collapsed_jet_contracted(g, primals, tangents, w, contract)
    # Without a Laplacian the second-order chain is unused, and XLA removes it as
    # dead code; the interpreter's first-order propagation (the direction axis as
    # a free matmul dimension) measured faster than vectorised `jvp`s.
    return y, T, (S if second else None), c


class Taylor(AbstractJetMethod):
    """Exact derivatives by collapsed Taylor-mode (forward-Laplacian) propagation,
    the default method.

    One forward pass over the field's computation carries the value, the $d$
    first-order tangents $J e_k$ and a
    *single* summed second-order term
    $\\sum_k D^2 f[e_k, e_k] = \\Delta f$, instead of $d$ separate second-order
    terms or a $(d, d)$ Hessian (Li et al., *Forward Laplacian*, 2024; Dangel et
    al., *Collapsing Taylor mode automatic differentiation*, 2025). The
    propagation interprets the field's jaxpr, so it applies to any JAX function;
    primitives without a dedicated rule fall back to nested autodiff with a
    one-time warning. The gradient of the divergence is reverse mode over this
    forward pass, never reverse-over-reverse.

    For a Laplacian alone (no Jacobian or divergence from the same pass), once the
    computation narrows to an intermediate of $n < d$ entries that everything
    later depends on (the first layer of a network of width $n$), the $d$
    directions are replaced there by $n$ with the same second moment: the
    Laplacian only depends on $\\sum_k T_k T_k^\\top$, which a QR factor of the
    $(d, n)$ tangents reproduces. The rest of the pass then costs $n$ directions
    instead of $d$; since the directions are the same for every sample, the
    factorisation happens once per batch. When that intermediate is an affine
    function of the input (a first linear layer), its $d$ tangents are read off
    its $(n, d)$ Jacobian by $n$ reverse-mode passes, so the $(d, d)$ identity
    of the directions is never formed: an exact Laplacian at $d = 100{,}000$ costs
    about as much as the network's first layer.

    **Arguments:**

    - `chunk_size`: propagate at most this many input directions at a time, to
        bound memory for large `d` (the value is recomputed per chunk). `None`
        propagates all directions at once.
    - `compress`: allow the compression above (default `True`). Values and
        parameter gradients agree either way, also where the first layer's
        weights for the inputs are rank-deficient (say, whole rows set to zero).
        Second derivatives with respect to the parameters through such a layer
        are exact only with `compress=False`.
    """

    chunk_size: int | None = eqx.field(default=None, static=True, converter=as_int)
    compress: bool = eqx.field(default=True, static=True)
    stochastic: ClassVar[bool] = False

    def __check_init__(self):
        if not isinstance(self.compress, bool):
            raise ValueError(f"`compress` must be a bool; got {self.compress!r}.")
        # Shared with every method and the call-time `chunk_size`: `True` used to
        # pass here as 1, while `Forward` refused it.
        check_count(self.chunk_size, "chunk_size", optional=True)

    def directions(self, d, dtype, key):
        return jnp.eye(d, dtype=dtype), jnp.ones((d,), dtype), True

    def jet(self, fn, x, t, tx, w, second, contract, tangents=True):
        # The coordinate directions are the same for every sample, so a first
        # layer narrower than the input compresses them once per batch.
        compress = self.compress and second and not tangents and contract is None
        # Unchunked, `tx` is `directions(d)`: the identity, with unit weights. Its
        # first narrow layer's tangents then come from that layer's Jacobian.
        identity = compress and tx.shape[0] == tx.shape[1] == x.shape[0]
        return taylor_jet(fn, x, t, tx, w, second, contract, compress, identity)
