from typing import ClassVar

from ._abstract_derivative import AbstractDerivative, require_scalar
from ._quantity import Quantity


class Hessian(AbstractDerivative):
    """The Hessian of a scalar field: $H_{ij} = \\partial^2 u / \\partial x_i
    \\partial x_j$, by forward-over-reverse mode.

    This is the one operator that builds a `(d, d)` array per sample; use
    `Laplacian` when only its trace is needed.

    **Arguments:**

    - `field`: a scalar field `u(x)` or `u(x, t)` (output shape `()`).
    - `method`: see `Jacobian`.

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, d, d)`.
    """

    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.HESSIAN})

    @classmethod
    def assemble(cls, q, out, d):
        require_scalar("Hessian", out)
        return q[Quantity.HESSIAN].reshape((d, d))
