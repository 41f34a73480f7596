from typing import ClassVar

from jaxtyping import Array

from ._abstract_derivative import AbstractDerivative
from ._quantity import Quantities, Quantity


class Jacobian(AbstractDerivative):
    """The Jacobian of a field with respect to `x`:
    $J_{ij} = \\partial f_i / \\partial x_j$.

    Computed with forward tangents when $d \\le m$ and reverse cotangents when
    $m < d$, whichever needs fewer passes.

    ```python
    J = eqxderiv.Jacobian(net)(x, t)  # x: (b, d), t: (b, 1) -> (b, m, d)
    ```

    **Arguments:**

    - `field`: a callable `f(x)` or `f(x, t)` on one sample, output `(*out)`.
    - `method`: `"auto"` (default), `"taylor"`, `"forward"`, `"nested"` or a
        method object.

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, *out, d)`.
    """

    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.JACOBIAN})

    @classmethod
    def assemble(cls, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        return q[Quantity.JACOBIAN].reshape(tuple(out) + (d,))
