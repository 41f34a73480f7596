from typing import ClassVar

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray

from ._custom_types import ChunkSize, Field, SpaceLike, TimeLike
from ._derivative import AbstractDerivative
from ._method import AbstractMethod, as_method


def _need_scalar(name, out):
    if tuple(out) != ():
        raise ValueError(
            f"{name} needs a scalar field (output shape () for one sample); got a "
            f"field with output shape {tuple(out)}. Use `Jacobian` for vector "
            "fields."
        )


class Jacobian(AbstractDerivative):
    """The Jacobian of a field with respect to `x`:
    $J_{ij} = \\partial f_i / \\partial x_j$.

    Computed with forward tangents when $d \\le m$ and reverse cotangents when
    $m < d$, whichever needs fewer passes.

    ```python
    J = eqxderiv.Jacobian(net)(x, t)  # x: (b, d), t: (b, 1) -> (b, m, d)
    ```

    **Arguments:**

    - `field`: a callable `f(x)` or `f(x, t)` on one sample, output `(*out)`.
    - `method`: `"auto"` (default), `"taylor"`, `"forward"`, `"nested"` or a
        method object.

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, *out, d)`.
    """

    field: Field
    method: AbstractMethod = eqx.field(default="auto", converter=as_method, static=True)
    needs: ClassVar[frozenset[str]] = frozenset({"jacobian"})

    @classmethod
    def result_shape(cls, out, d, has_t):
        return tuple(out) + (d,)

    @classmethod
    def assemble(cls, q, out, d):
        return q["jacobian"].reshape(tuple(out) + (d,))

    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Float[Array, "*batch_out d"]:
        return self._apply(x, t, key, chunk_size)


class Grad(AbstractDerivative):
    """The gradient of a scalar field: $\\nabla u = (\\partial u/\\partial x_i)_i$.

    One reverse pass per sample.

    ```python
    eqxderiv.Grad(lambda x: jnp.sum(x**2))(x)  # == 2 * x
    ```

    **Arguments:**

    - `field`: a scalar field `u(x)` or `u(x, t)` (output shape `()`).
    - `method`: see `Jacobian`.

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, d)`.
    """

    field: Field
    method: AbstractMethod = eqx.field(default="auto", converter=as_method, static=True)
    needs: ClassVar[frozenset[str]] = frozenset({"jacobian"})

    @classmethod
    def result_shape(cls, out, d, has_t):
        _need_scalar("Grad", out)
        return (d,)

    @classmethod
    def assemble(cls, q, out, d):
        return q["jacobian"].reshape((d,))

    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Float[Array, "*batch d"]:
        return self._apply(x, t, key, chunk_size)


class Hessian(AbstractDerivative):
    """The Hessian of a scalar field: $H_{ij} = \\partial^2 u / \\partial x_i
    \\partial x_j$, by forward-over-reverse mode.

    This is the one operator that builds a `(d, d)` array per sample; use
    `Laplacian` when only its trace is needed.

    **Arguments:**

    - `field`: a scalar field `u(x)` or `u(x, t)` (output shape `()`).
    - `method`: see `Jacobian`.

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, d, d)`.
    """

    field: Field
    method: AbstractMethod = eqx.field(default="auto", converter=as_method, static=True)
    needs: ClassVar[frozenset[str]] = frozenset({"hessian"})

    @classmethod
    def result_shape(cls, out, d, has_t):
        _need_scalar("Hessian", out)
        return (d, d)

    @classmethod
    def assemble(cls, q, out, d):
        return q["hessian"].reshape((d, d))

    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Float[Array, "*batch d d"]:
        return self._apply(x, t, key, chunk_size)
