from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._custom_types import ChunkSize, Field, SpaceLike, TimeLike
from ._derivative import AbstractDerivative
from ._divergence import need_square
from ._method import AbstractMethod, as_method


class Curl(AbstractDerivative):
    """The curl of a vector field in three dimensions, or the scalar vorticity in
    two:

    $$\\nabla\\times f = (\\partial_2 f_3 - \\partial_3 f_2,\\;
    \\partial_3 f_1 - \\partial_1 f_3,\\; \\partial_1 f_2 - \\partial_2 f_1)
    \\quad (d = 3), \\qquad \\partial_1 f_2 - \\partial_2 f_1 \\quad (d = 2).$$

    **Arguments:**

    - `field`: a vector field with output shape `(d,)`, `d` in `{2, 3}`.
    - `method`: see `eqxderiv.Jacobian`.

    **Returns:** calling it on `x` `(*batch, 3)` gives `(*batch, 3)`; on
    `(*batch, 2)` gives `(*batch,)`.
    """

    field: Field
    method: AbstractMethod = eqx.field(default="auto", converter=as_method, static=True)
    needs: ClassVar[frozenset[str]] = frozenset({"jacobian"})

    @classmethod
    def result_shape(cls, out, d, has_t):
        if d not in (2, 3):
            raise ValueError(
                f"Curl is defined for d = 2 (scalar vorticity) or d = 3; got `x` "
                f"with d = {d}."
            )
        need_square("Curl", out, d)
        return (3,) if d == 3 else ()

    @classmethod
    def assemble(cls, q, out, d):
        J = q["jacobian"]
        if d == 2:
            return J[1, 0] - J[0, 1]
        return jnp.stack([J[2, 1] - J[1, 2], J[0, 2] - J[2, 0], J[1, 0] - J[0, 1]])

    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Float[Array, "*batch 3"] | Float[Array, "*batch"]:
        return self._apply(x, t, key, chunk_size)


class Advection(AbstractDerivative):
    """The self-advection term $(f\\cdot\\nabla) f = J f$, by one JVP along $f$
    itself: the Jacobian is never formed (unless a fused expression computes it
    anyway, in which case it is reused).

    ```python
    from eqxderiv import Advection, Laplacian, TimeDerivative

    burgers = TimeDerivative(u) + Advection(u) - nu * Laplacian(u)
    ```

    **Arguments:**

    - `field`: a vector field with output shape `(d,)`.
    - `method`: see `eqxderiv.Jacobian`.

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, d)`.
    """

    field: Field
    method: AbstractMethod = eqx.field(default="auto", converter=as_method, static=True)
    needs: ClassVar[frozenset[str]] = frozenset({"advection"})

    @classmethod
    def result_shape(cls, out, d, has_t):
        need_square("Advection", out, d)
        return (d,)

    @classmethod
    def assemble(cls, q, out, d):
        return q["advection"]

    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Float[Array, "*batch d"]:
        return self._apply(x, t, key, chunk_size)
