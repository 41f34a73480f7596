from typing import ClassVar

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray

from ._custom_types import ChunkSize, Field, SpaceLike, TimeLike
from ._derivative import AbstractDerivative
from ._method import AbstractMethod, as_method


class Laplacian(AbstractDerivative):
    """The Laplacian in `x`, componentwise for vector fields:
    $\\Delta f_i = \\sum_j \\partial^2 f_i / \\partial x_j^2$.

    By default one collapsed Taylor-mode pass (no Hessian is formed); see
    `eqxderiv.Taylor`, and `eqxderiv.Hutchinson` / `eqxderiv.SparseSampling` for
    large `d`.

    ```python
    heat = eqxderiv.TimeDerivative(u) - eqxderiv.Laplacian(u)
    ```

    **Arguments:**

    - `field`: a callable `f(x)` or `f(x, t)` on one sample, output `(*out)`.
    - `method`: as for `eqxderiv.Divergence`.

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, *out)`.
    """

    field: Field
    method: AbstractMethod = eqx.field(default="auto", converter=as_method, static=True)
    needs: ClassVar[frozenset[str]] = frozenset({"laplacian"})

    @classmethod
    def result_shape(cls, out, d, has_t):
        return tuple(out)

    @classmethod
    def assemble(cls, q, out, d):
        return q["laplacian"].reshape(out)

    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Float[Array, "..."]:
        return self._apply(x, t, key, chunk_size)
