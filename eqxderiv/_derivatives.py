"""`eqxderiv.derivatives`: several named derivatives of one field, returned
separately, from one shared propagation."""

from collections.abc import Sequence

from jaxtyping import Array, PRNGKeyArray

from ._abstract_derivative import AbstractDerivative, fused
from ._batching import evaluate_batched
from ._custom_types import ChunkSize, Field, SpaceLike, TimeLike
from ._grad_div import GradDiv
from ._jacobian import Jacobian
from ._methods import MethodLike, as_method
from ._time_derivative import TimeDerivative
from ._validation import check_field
from ._value import Value


_DEFAULT = (Value, TimeDerivative, Jacobian, GradDiv)


def derivatives(
    field: Field,
    x: SpaceLike,
    t: TimeLike | None = None,
    operators: Sequence[type[AbstractDerivative]] = _DEFAULT,
    *,
    method: MethodLike = "auto",
    key: PRNGKeyArray | None = None,
    chunk_size: ChunkSize = None,
) -> tuple[Array, ...]:
    """Several derivatives of one field from one shared propagation.

    The default answers the classic request "value, $\\partial_t f$,
    $\\partial_x f$ and $\\nabla(\\nabla\\cdot f)$ of my network, batched":

    ```python
    f, df_dt, df_dx, grad_div = eqxderiv.derivatives(net, x, t)
    # x: (b, d), t: (b, 1) -> (b, d), (b, d), (b, d, d), (b, d)
    ops = (eqxderiv.Laplacian, eqxderiv.Divergence)
    lap, div = eqxderiv.derivatives(net, x, t, ops)
    ```

    **Arguments:**

    - `field`: a callable `f(x)` or `f(x, t)` on one sample.
    - `x`: points of shape `(*batch, d)`.
    - `t`: times of shape `(*batch,)` or `(*batch, 1)`, or `None`.
    - `operators`: named operator classes (`Value`, `TimeDerivative`, `Jacobian`,
        `Divergence`, `GradDiv`, `Grad`, `Hessian`, `Laplacian`, `Curl`,
        `Advection`), results returned in this order.
    - `method`: as for the operators (`"auto"`, `"taylor"`, ...).
    - `key`: a PRNG key, for stochastic methods.
    - `chunk_size`: evaluate the batch this many samples at a time.

    **Returns:** a tuple with one `(*batch, *result)` array per operator.
    """
    check_field(field)
    kinds = tuple(operators)
    if not kinds:
        raise ValueError("`operators` must name at least one operator class.")
    for k in kinds:
        if not (isinstance(k, type) and issubclass(k, AbstractDerivative)):
            raise TypeError(
                "`operators` must contain named operator classes such as "
                f"`eqxderiv.Jacobian`; got {k!r}."
            )
    op = fused(field, as_method(method), kinds)
    return evaluate_batched(
        "derivatives", op.stochastic, op.term_structures, op.evaluate_terms, x, t,
        key, chunk_size,
    )  # fmt: skip
