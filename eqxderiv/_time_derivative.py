from typing import ClassVar

from jaxtyping import Array

from ._abstract_derivative import AbstractDerivative
from ._quantity import Quantities, Quantity


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

    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.DT})

    @classmethod
    def assemble(cls, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        return q[Quantity.DT].reshape(out)
