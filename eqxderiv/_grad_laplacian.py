from typing import ClassVar

from jaxtyping import Array

from ._abstract_derivative import AbstractDerivative
from ._quantity import Quantities, Quantity


class GradLaplacian(AbstractDerivative):
    """The gradient of the Laplacian, a third-order operator, componentwise for
    vector fields: $(\\nabla \\Delta f_i)_j = \\sum_k \\partial^3 f_i /
    \\partial x_j \\partial x_k^2$.

    By default reverse mode over one collapsed Laplacian pass (for a scalar
    field, about three times the Laplacian's cost, against $d^2$ third-order
    directions for the polarized form; see
    [Higher-order operators](higher-order.md)). With a stochastic method it is
    the gradient of the estimated Laplacian, unbiased too.

    ```python
    flux = eqxderiv.GradLaplacian(c)  # Cahn-Hilliard: grad of the chemical potential
    ```

    **Arguments:**

    - `field`: a callable `f(x)` or `f(x, t)` on one sample, output `(*out)`.
    - `method`: as for `eqxderiv.Laplacian`.

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, *out, d)`.
    """

    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.GRADLAPLACIAN})

    @classmethod
    def assemble(cls, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        return q[Quantity.GRADLAPLACIAN].reshape((*out, d))
