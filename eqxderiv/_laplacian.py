from typing import ClassVar

from jaxtyping import Array

from ._abstract_derivative import AbstractDerivative
from ._quantity import Quantities, Quantity


class Laplacian(AbstractDerivative):
    """The Laplacian in `x`, componentwise for vector fields:
    $\\Delta f_i = \\sum_j \\partial^2 f_i / \\partial x_j^2$.

    By default one collapsed Taylor-mode pass (no Hessian is formed); see
    `eqxderiv.Taylor`, and `eqxderiv.Hutchinson` / `eqxderiv.SparseSampling` for
    large `d`.

    ```python
    heat = eqxderiv.TimeDerivative(u) - eqxderiv.Laplacian(u)
    ```

    **Arguments:**

    - `field`: a callable `f(x)` or `f(x, t)` on one sample, output `(*out)`.
    - `method`: as for `eqxderiv.Divergence`.

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, *out)`.
    """

    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.LAPLACIAN})

    @classmethod
    def assemble(cls, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        return q[Quantity.LAPLACIAN].reshape(out)
