from typing import ClassVar

from jaxtyping import Array

from ._abstract_derivative import AbstractDerivative
from ._quantity import Quantities, Quantity


class Biharmonic(AbstractDerivative):
    """The biharmonic in `x`, componentwise for vector fields:
    $\\Delta^2 f_i = \\sum_{j, k} \\partial^4 f_i / \\partial x_j^2 \\partial x_k^2$.

    By default a collapsed Laplacian pass over the program of a collapsed
    Laplacian pass (no fourth-derivative tensor is formed), which measured 2.6x
    to 3.9x faster than one pass of order 4 over the $d^2$ directions that
    polarize $\\Delta^2$; see [Higher-order operators](higher-order.md).
    `Laplacian(Laplacian(u))` gives the same numbers the same way, with more
    memory at large `d` unless chunked. For large `d`, `eqxderiv.Hutchinson`
    (Gaussian probes, one pass of order 4) and `eqxderiv.SparseSampling`
    (random coordinate pairs) estimate it without bias.

    ```python
    plate = eqxderiv.Biharmonic(u)  # Kirchhoff plate: D * Biharmonic(w) = q
    ```

    **Arguments:**

    - `field`: a callable `f(x)` or `f(x, t)` on one sample, output `(*out)`.
    - `method`: as for `eqxderiv.Laplacian`.

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, *out)`.
    """

    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.BIHARMONIC})

    @classmethod
    def assemble(cls, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        return q[Quantity.BIHARMONIC].reshape(out)
