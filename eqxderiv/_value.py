from typing import ClassVar

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray

from ._custom_types import ChunkSize, Field, SpaceLike, TimeLike
from ._derivative import AbstractDerivative
from ._method import AbstractMethod, as_method


class Value(AbstractDerivative):
    """The field itself, as an operator: $f(x, t)$, batched.

    Plain fields are wrapped in `Value` automatically when they appear in operator
    arithmetic (`TimeDerivative(f) + f`), so that a residual can mention the field
    and share its propagation with the derivative terms.

    ```python
    u = eqxderiv.Value(lambda x, t: jnp.sin(x[0]) * t)
    u(x, t)  # (*batch,)
    ```

    **Arguments:**

    - `field`: a callable `f(x)` or `f(x, t)` on one sample.
    - `method`: how fused derivative terms are computed (see `eqxderiv.Taylor`).

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, *out)`.
    """

    field: Field
    method: AbstractMethod = eqx.field(default="auto", converter=as_method, static=True)
    needs: ClassVar[frozenset[str]] = frozenset({"value"})

    @classmethod
    def result_shape(cls, out, d, has_t):
        return tuple(out)

    @classmethod
    def assemble(cls, q, out, d):
        return q["value"].reshape(out)

    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Float[Array, "..."]:
        return self._apply(x, t, key, chunk_size)
