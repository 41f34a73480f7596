"""The default exact method: collapsed Taylor-mode propagation."""

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._engine import (
    collapsed_jet,
    collapsed_jet_contracted,
    compressed_second,
    divergence_in_closed_form,
    divergence_jet,
)
from .._quantity import Need, Quantities, Quantity as Q
from .._validation import as_int
from .abstract import FieldProgram
from .jet_method import AbstractJetMethod, JetPass, JetResult


_DIVERGENCES = frozenset({Q.DIVERGENCE, Q.GRADDIV})


def taylor_jet(p: JetPass, compress: bool = False, identity: bool = False) -> JetResult:
    """One collapsed pass: value, `K` tangents and `sum_k w_k D^2 f[v_k, v_k]`;
    `t` (possibly None) is held fixed. With `compress`, the tangents are not
    returned and the second-order term may be computed from fewer directions."""
    fn, t, w, contract = p.fn, p.t, p.w, p.contract
    g, primals, tangents = (lambda a: fn(a, t)), (p.x,), (p.tx,)
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
    return y, T, (S if p.second else None), c


class Taylor(AbstractJetMethod):
    """Exact derivatives by collapsed Taylor-mode propagation: the default method.

    One forward pass carries the value, the $d$ tangents $J e_k$ and a single
    summed second-order term, instead of a $(d, d)$ Hessian:

    $$\\Delta f = \\sum_k D^2 f[e_k, e_k].$$

    The gradient of the divergence is reverse mode over this pass, unless the
    field is a chain of affine maps and at most two elementwise layers, where
    the divergence and its gradient have a closed form (`closed_form`). For a
    Laplacian alone, the directions are compressed where the computation first
    narrows (a first layer narrower than `d`); see
    [Choosing a method](methods.md#exact-taylor-the-default) for how, and for
    the references (Li et al., 2024; Dangel et al., 2025). A divergence without
    a closed form costs, past such a layer $z = A x$ of width $n < d$, $n$
    directions instead of $d$: $\\nabla\\cdot f = \\operatorname{tr}(J_F A) =
    \\sum_{k \\le n} \\langle A_{k,:}, J_F e_k \\rangle$ for $f = F(z)$.

    ```python
    eqxderiv.Laplacian(u, method=eqxderiv.Taylor(chunk_size=64))(x, t)
    ```

    **Arguments:**

    - `chunk_size`: propagate at most this many input directions at a time, to
        bound memory for large `d` (the value is recomputed per chunk). `None`
        propagates all directions at once, except in passes of order three and
        more, which propagate at most 1024 directions at a time, and in the
        outer pass of the biharmonic, at most `4096 // d` (see
        [Higher-order operators](higher-order.md)).
    - `compress`: allow the compression, and the narrow divergence (default
        `True`). Values and parameter
        gradients agree either way; second derivatives with respect to the
        parameters through a rank-deficient first layer are exact only with
        `compress=False`.
    - `closed_form`: compute the divergence and its gradient in closed form where
        the field is a chain of affine maps and at most two elementwise layers,
        such as an MLP with two hidden layers (default `True`; found on the
        field's program, see
        [Choosing a method](methods.md#the-divergence-in-closed-form)). The
        divergence then costs about one forward pass and its gradient about
        three, instead of `d` directional derivatives. `chunk_size` does not
        apply to it (it propagates no directions).
    """

    chunk_size: int | None = eqx.field(default=None, static=True, converter=as_int)
    compress: bool = eqx.field(default=True, static=True)
    closed_form: bool = eqx.field(default=True, static=True)
    stochastic: ClassVar[bool] = False

    def __check_init__(self) -> None:
        for name in ("compress", "closed_form"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be a bool; got {value!r}.")

    def compute(
        self,
        field: FieldProgram,
        x: Array,
        t: Array | None,
        needs: frozenset[Need],
        key: Any,
    ) -> Quantities:
        wanted = needs & _DIVERGENCES
        closed = None
        if self.closed_form and wanted:
            closed = divergence_in_closed_form(field.fn, x, t)
        if closed is None:
            return super().compute(field, x, t, needs, key)
        rest = needs - wanted
        # The other quantities (a Jacobian, a Laplacian, a time derivative) by
        # the general path, without the divergence.
        q = super().compute(field, x, t, rest, key) if rest - {Q.VALUE} else {}
        if Q.GRADDIV in wanted:
            if field.reverse:
                grad = jax.value_and_grad(closed, has_aux=True)(x)
                (q[Q.DIVERGENCE], value), q[Q.GRADDIV] = grad
            else:
                q[Q.DIVERGENCE], value = closed(x)
                q[Q.GRADDIV] = jax.jacfwd(lambda a: closed(a)[0])(x)
        else:
            q[Q.DIVERGENCE], value = closed(x)
        q.setdefault(Q.VALUE, value)
        return q

    def directions(self, d: int, dtype: Any, key: Any) -> tuple[Array, Array, bool]:
        return jnp.eye(d, dtype=dtype), jnp.ones((d,), dtype), True

    def jet(self, p: JetPass) -> JetResult:
        # Unchunked, `tx` is `directions(d)`: the identity, with unit weights.
        square = p.tx.shape[0] == p.tx.shape[1] == p.x.shape[0]
        alone = p.contract is p.tx and not (p.second or p.tangents)
        if self.compress and square and alone:
            # A divergence alone (`contract` the directions themselves): where
            # the field narrows to n < d entries affine in x, it costs n
            # directions there; one trace of the field either way.
            g = lambda a: p.fn(a, p.t)  # noqa: E731
            y, div = divergence_jet(g, (p.x,), (p.tx,), p.w)
            return y, None, None, div
        # The coordinate directions are the same for every sample, so a first
        # layer narrower than the input compresses them once per batch.
        compress = self.compress and p.second and not p.tangents
        compress = compress and p.contract is None
        # With the identity, the first narrow layer's tangents come from that
        # layer's Jacobian.
        identity = compress and square
        return taylor_jet(p, compress, identity)
