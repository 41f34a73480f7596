from typing import ClassVar

from jaxtyping import Array

from ._abstract_derivative import AbstractDerivative
from ._quantity import Quantities, Quantity


class Grad(AbstractDerivative):
    """The gradient of a scalar field, by one reverse pass per sample:

    $$\\nabla u = \\left(\\frac{\\partial u}{\\partial x_1}, \\dots,
    \\frac{\\partial u}{\\partial x_d}\\right).$$

    ```python
    eqxderiv.Grad(lambda x: jnp.sum(x**2))(x)  # == 2 * x, shape (b, d)
    ```

    **Arguments:**

    - `field`: a scalar field `u(x)` or `u(x, t)`, output shape `()`; for a
        vector field, `Jacobian`.
    - `method`: as for every named derivative (`"auto"` by default).

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, d)`.
    """

    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.JACOBIAN})
    scalar_only: ClassVar[bool] = True

    @classmethod
    def assemble(cls, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        return q[Quantity.JACOBIAN].reshape((d,))
