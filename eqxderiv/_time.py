from typing import ClassVar

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray

from ._custom_types import ChunkSize, Field, SpaceLike, TimeLike
from ._derivative import AbstractDerivative
from ._method import AbstractMethod, as_method


class TimeDerivative(AbstractDerivative):
    """The partial derivative in time: $\\partial f / \\partial t$, by one JVP.

    The time is passed to the field with the shape the caller gives it per
    sample, `()` for `t` of shape `(*batch,)` and `(1,)` for `(*batch, 1)`, so
    a field that concatenates `x` with a `(1,)`-shaped `t` works as written.
    `TimeDerivative(TimeDerivative(f))` is $\\partial^2 f / \\partial t^2$.

    ```python
    eqxderiv.TimeDerivative(net)(x, t)  # x: (b, d), t: (b, 1) -> (b, m)
    ```

    **Arguments:**

    - `field`: a callable `f(x, t)` on one sample, output `(*out)`.
    - `method`: see `eqxderiv.Jacobian`.

    **Returns:** calling it on `x` `(*batch, d)` and `t` gives `(*batch, *out)`.
    """

    field: Field
    method: AbstractMethod = eqx.field(default="auto", converter=as_method, static=True)
    needs: ClassVar[frozenset[str]] = frozenset({"dt"})

    @classmethod
    def result_shape(cls, out, d, has_t):
        if not has_t:
            raise ValueError(
                "TimeDerivative needs a time: call it as `op(x, t)` with `t` of "
                "shape (*batch,) or (*batch, 1); it was called without `t`."
            )
        return tuple(out)

    @classmethod
    def assemble(cls, q, out, d):
        return q["dt"].reshape(out)

    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Float[Array, "..."]:
        return self._apply(x, t, key, chunk_size)
