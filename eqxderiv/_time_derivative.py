from typing import ClassVar

import equinox as eqx
from jaxtyping import Array

from ._abstract_derivative import AbstractDerivative, Kind, PartialKind
from ._quantity import Quantities, Quantity
from ._validation import as_int, check_order


class TimeDerivative(AbstractDerivative):
    """The partial derivative in time: $\\partial f / \\partial t$, by one JVP.

    The time is passed to the field with the shape the caller gives it per
    sample, `()` for `t` of shape `(*batch,)` and `(1,)` for `(*batch, 1)`, so
    a field that concatenates `x` with a `(1,)`-shaped `t` works as written.
    `TimeDerivative(f, order=2)` is $\\partial^2 f / \\partial t^2$, one
    collapsed Taylor-mode pass of order 2 along `t` (as is any order; see
    `eqxderiv.Partial`), the same number as the nested
    `TimeDerivative(TimeDerivative(f))`.

    ```python
    eqxderiv.TimeDerivative(net)(x, t)  # x: (b, d), t: (b, 1) -> (b, m)
    ```

    **Arguments:**

    - `field`: a callable `f(x, t)` on one sample, output `(*out)`.
    - `method`: see `eqxderiv.Jacobian`.
    - `order`: the order in time (default 1; 0 is the field itself).

    **Returns:** calling it on `x` `(*batch, d)` and `t` gives `(*batch, *out)`.
    """

    order: int = eqx.field(default=1, static=True, converter=as_int)

    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.DT})

    def __check_init__(self) -> None:
        check_order(self.order, "order")

    def kind(self) -> Kind:
        # The first order is one JVP (`Quantity.DT`); any other, a partial.
        if self.order == 1:
            return type(self)
        return PartialKind((), self.order, "TimeDerivative")

    @classmethod
    def assemble(cls, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        return q[Quantity.DT].reshape(out)
