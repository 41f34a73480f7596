from collections.abc import Sequence
from typing import Any

from jaxtyping import Array, PRNGKeyArray

from ._custom_types import ChunkSize, Field, SpaceLike, TimeLike
from ._derivative import AbstractDerivative, _flat_field, _out_shape, _split
from ._divergence import GradDiv
from ._jacobian import Jacobian
from ._method import as_method, needs_key
from ._misc import (
    check_chunk_size,
    check_field,
    check_inputs,
    field_output,
    map_batch,
    sample_struct,
)
from ._operator import AbstractOperator, _check_key
from ._time import TimeDerivative
from ._value import Value


_DEFAULT = (Value, TimeDerivative, Jacobian, GradDiv)


def derivatives(
    field: Field,
    x: SpaceLike,
    t: TimeLike | None = None,
    operators: Sequence[type[AbstractDerivative]] = _DEFAULT,
    *,
    method: Any = "auto",
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
    method = as_method(method)
    x, t, batch = check_inputs(x, t)
    chunk_size = check_chunk_size(chunk_size)
    needs = frozenset().union(*(k.needs for k in kinds))
    stochastic = needs_key(method, needs) or (
        isinstance(field, AbstractOperator) and field.stochastic
    )
    _check_key(key, stochastic, "derivatives")
    xs, ts = sample_struct(x, batch), sample_struct(t, batch)
    out = field_output(field, xs, ts)
    for k in kinds:
        k.result_shape(out.shape, xs.shape[-1], ts is not None)

    def single(x_, t_, key_):
        inner, outer = _split(key_, field, method)
        shape = _out_shape(field, x_, t_)
        q = method.compute(_flat_field(field, inner), x_, t_, needs, outer)
        return tuple(k.assemble(q, shape, x_.shape[-1]) for k in kinds)

    return map_batch(single, x, t, key, batch, chunk_size)
