from typing import ClassVar

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray

from ._custom_types import ChunkSize, Field, SpaceLike, TimeLike
from ._derivative import AbstractDerivative
from ._method import AbstractMethod, as_method


def need_square(name: str, out, d: int) -> None:
    if tuple(out) != (d,):
        raise ValueError(
            f"{name} needs a vector field with as many outputs as inputs: output "
            f"shape (d,) = ({d},) for `x` of shape (..., {d}); got a field with "
            f"output shape {tuple(out)}."
        )


class Divergence(AbstractDerivative):
    """The divergence of a vector field: $\\nabla\\cdot f = \\sum_i \\partial
    f_i / \\partial x_i$.

    Exact methods read it off the forward tangents $J e_i$; `Hutchinson` and
    `SparseSampling` estimate it without forming $J$.

    ```python
    eqxderiv.Divergence(net)(x, t)  # x: (b, d), t: (b, 1) -> (b,)
    ```

    **Arguments:**

    - `field`: a vector field `f(x)` or `f(x, t)` with output shape `(d,)`.
    - `method`: `"auto"`, `"taylor"`, `"forward"`, `"nested"`, `"hutchinson"`,
        `"sparse"` or a method object (stochastic ones need `key=` at call time).

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch,)`.
    """

    field: Field
    method: AbstractMethod = eqx.field(default="auto", converter=as_method, static=True)
    needs: ClassVar[frozenset[str]] = frozenset({"divergence"})

    @classmethod
    def result_shape(cls, out, d, has_t):
        need_square("Divergence", out, d)
        return ()

    @classmethod
    def assemble(cls, q, out, d):
        return q["divergence"]

    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Float[Array, "*batch"]:
        return self._apply(x, t, key, chunk_size)


class GradDiv(AbstractDerivative):
    """The gradient of the divergence: $\\nabla(\\nabla\\cdot f)$,
    $\\;[\\nabla(\\nabla\\cdot f)]_j = \\sum_i \\partial^2 f_i / \\partial x_i
    \\partial x_j$.

    Reverse mode over the forward pass that gives the divergence (never
    reverse-over-reverse). Equals `Grad(Divergence(f))`.

    **Arguments:**

    - `field`: a vector field `f(x)` or `f(x, t)` with output shape `(d,)`.
    - `method`: as for `Divergence`.

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, d)`.
    """

    field: Field
    method: AbstractMethod = eqx.field(default="auto", converter=as_method, static=True)
    needs: ClassVar[frozenset[str]] = frozenset({"graddiv"})

    @classmethod
    def result_shape(cls, out, d, has_t):
        need_square("GradDiv", out, d)
        return (d,)

    @classmethod
    def assemble(cls, q, out, d):
        return q["graddiv"]

    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Float[Array, "*batch d"]:
        return self._apply(x, t, key, chunk_size)
