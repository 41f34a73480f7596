"""The default exact method: collapsed Taylor-mode propagation."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp

from ._method import AbstractJetMethod, _forward_jet


def taylor_jet(fn, x, t, tx, tt, w, second):
    """One collapsed pass: value, `K` tangents and `sum_k w_k D^2 f[v_k, v_k]`."""
    if not second:
        # First-order terms alone are plain vectorised JVPs; nothing to collapse.
        return _forward_jet(fn, x, t, tx, tt, w, False)
    from ._taylor import collapsed_jet

    if tt is None:
        # No time direction: `t` (possibly None) is held fixed.
        return collapsed_jet(lambda a: fn(a, t), (x,), (tx,), w)
    return collapsed_jet(fn, (x, t), (tx, tt), w)


class Taylor(AbstractJetMethod):
    """Exact derivatives by collapsed Taylor-mode (forward-Laplacian) propagation,
    the default method.

    One forward pass over the field's computation carries the value, the $d$
    first-order tangents $J e_k$ (plus $\\partial_t f$ when asked for) and a
    *single* summed second-order term
    $\\sum_k D^2 f[e_k, e_k] = \\Delta f$, instead of $d$ separate second-order
    terms or a $(d, d)$ Hessian (Li et al., *Forward Laplacian*, 2024; Dangel et
    al., *Collapsing Taylor mode automatic differentiation*, 2025). The
    propagation interprets the field's jaxpr, so it applies to any JAX function;
    primitives without a dedicated rule fall back to nested autodiff with a
    one-time warning. The gradient of the divergence is reverse mode over this
    forward pass, never reverse-over-reverse.

    **Arguments:**

    - `chunk_size`: propagate at most this many input directions at a time, to
        bound memory for large `d` (the value is recomputed per chunk). `None`
        propagates all directions at once.
    """

    chunk_size: int | None = eqx.field(default=None, static=True)
    stochastic: ClassVar[bool] = False

    def __check_init__(self):
        if self.chunk_size is not None and (
            not isinstance(self.chunk_size, int) or self.chunk_size < 1
        ):
            raise ValueError(
                f"`chunk_size` must be a positive int or None; got {self.chunk_size!r}."
            )

    def directions(self, d, dtype, key):
        return jnp.eye(d, dtype=dtype), jnp.ones((d,), dtype), True

    def jet(self, fn, x, t, tx, tt, w, second):
        return taylor_jet(fn, x, t, tx, tt, w, second)
