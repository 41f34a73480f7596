from typing import ClassVar

from ._abstract_derivative import AbstractDerivative, require_scalar
from ._quantity import Quantity


class Grad(AbstractDerivative):
    """The gradient of a scalar field: $\\nabla u = (\\partial u/\\partial x_i)_i$.

    One reverse pass per sample.

    ```python
    eqxderiv.Grad(lambda x: jnp.sum(x**2))(x)  # == 2 * x
    ```

    **Arguments:**

    - `field`: a scalar field `u(x)` or `u(x, t)` (output shape `()`).
    - `method`: see `Jacobian`.

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, d)`.
    """

    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.JACOBIAN})

    @classmethod
    def assemble(cls, q, out, d):
        require_scalar("Grad", out)
        return q[Quantity.JACOBIAN].reshape((d,))
