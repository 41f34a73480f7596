from typing import ClassVar

from jaxtyping import Array

from ._abstract_derivative import AbstractDerivative
from ._quantity import Quantities, Quantity


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

    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.DIVERGENCE})

    @classmethod
    def assemble(cls, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        return q[Quantity.DIVERGENCE]
