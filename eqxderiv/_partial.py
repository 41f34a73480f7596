from typing import ClassVar

import equinox as eqx
from jaxtyping import Array

from ._abstract_derivative import AbstractDerivative, Kind, PartialKind
from ._quantity import Quantities, Quantity
from ._validation import as_indices, as_int, check_indices, check_order


class Partial(AbstractDerivative):
    """A mixed partial derivative in space and time, componentwise for vector
    fields:

    $$\\frac{\\partial^{|\\alpha| + k} f}{\\partial x_{i_1} \\cdots
    \\partial x_{i_n}\\, \\partial t^k}, \\qquad
    \\alpha = (i_1, \\dots, i_n) = \\texttt{x},\\ k = \\texttt{t}.$$

    It reads as the subscripts of the math: $u_{x_0 x_0 x_0}$ is
    `Partial(u, x=(0, 0, 0))`, $u_{x_0 t}$ is `Partial(u, x=0, t=1)`,
    $\\partial^4 u / \\partial x_0^2 \\partial x_1^2$ is
    `Partial(u, x=(0, 0, 1, 1))`. The order of the indices does not matter.

    A partial of order $K$ is one collapsed Taylor-mode pass of order $K$ over
    a few directions (the polarization of $\\partial^\\alpha$ into directional
    derivatives; see [Higher-order operators](higher-order.md)); all partials
    and named operators of one order in a sum share that pass.

    ```python
    kdv = eqxderiv.TimeDerivative(u) + eqxderiv.Partial(u, x=(0, 0, 0))
    ```

    **Arguments:**

    - `field`: a callable `f(x)` or `f(x, t)` on one sample, output `(*out)`.
    - `method`: `"auto"` / `"taylor"` (default), `"forward"` or `"nested"`
        (stochastic methods compute partials exactly).
    - `x`: an index or a tuple of indices into the last axis of `x`, repeated
        for higher order; `()` (default) for none.
    - `t`: the order in time (default 0); a positive order needs `t` at call
        time.

    **Returns:** calling it on `x` `(*batch, d)` (and `t`) gives
    `(*batch, *out)`. Order 0 is the field itself.
    """

    x: tuple[int, ...] = eqx.field(default=(), static=True, converter=as_indices)
    t: int = eqx.field(default=0, static=True, converter=as_int)

    # A partial's orders are data: it is described by `kind()`, not its class.
    needs: ClassVar[frozenset[Quantity]] = frozenset()

    def __check_init__(self) -> None:
        check_indices(self.x, "x")
        check_order(self.t, "t")

    def kind(self) -> Kind:
        return PartialKind(self.x, self.t, "Partial")

    @classmethod
    def assemble(cls, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        raise TypeError("Partial is assembled by its kind(); see PartialKind.")
