from typing import ClassVar

from jaxtyping import Array

from ._abstract_derivative import AbstractDerivative
from ._quantity import Quantities, Quantity


class Hessian(AbstractDerivative):
    """The Hessian of a scalar field: $H_{ij} = \\partial^2 u / \\partial x_i
    \\partial x_j$, by forward-over-reverse mode.

    This is the one operator that builds a `(d, d)` array per sample; use
    `Laplacian` when only its trace is needed.

    ```python
    H = eqxderiv.Hessian(lambda x: x[0] ** 2 * x[1])(x)  # x: (b, 2) -> (b, 2, 2)
    ```

    **Arguments:**

    - `field`: a scalar field `u(x)` or `u(x, t)` (output shape `()`).
    - `method`: see `Jacobian`.

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, d, d)`.
    """

    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.HESSIAN})
    scalar_only: ClassVar[bool] = True

    @classmethod
    def assemble(cls, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        return q[Quantity.HESSIAN].reshape((d, d))
