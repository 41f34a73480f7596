from collections.abc import Mapping
from typing import Any

import equinox as eqx
from jaxtyping import Array, Float, PyTree


class FlaxField(eqx.Module):
    """A Flax linen model and its variables, as a field whose parameters are
    pytree leaves. Build it with `eqxderiv.from_flax`.
    """

    module: Any = eqx.field(static=True)
    variables: PyTree[Array]

    def __call__(
        self,
        x: Float[Array, " d"],
        t: Float[Array, ""] | Float[Array, "1"] | None = None,
    ) -> Float[Array, "..."]:
        if t is None:
            return self.module.apply(self.variables, x)
        return self.module.apply(self.variables, x, t)


def from_flax(module: Any, params: PyTree[Array]) -> FlaxField:
    """Wraps a Flax linen model as an eqxderiv field.

    ```python
    net = NN(hid_dim=100, output_dim=d)                # a flax.linen.Module
    variables = net.init(key, x[:1], t[:1])
    field = eqxderiv.from_flax(net, variables)
    eqxderiv.Jacobian(field)(x, t)                     # (b, d, d)
    ```

    The model is called on one sample at a time (`x` of shape `(d,)`, `t` of the
    per-sample shape the caller gives), as `module.apply(variables, x, t)`, or
    `module.apply(variables, x)` when no time is given. Inside a loss, build the
    field from the parameters being differentiated, e.g.
    `from_flax(net, state.params)` in a function of `params`: its gradient is the
    usual Flax parameter tree.

    **Arguments:**

    - `module`: a `flax.linen.Module` (anything with `.apply(variables, *args)`).
    - `params`: either the full variables dict returned by `module.init` (with a
        `"params"` collection) or just the parameter tree.

    **Returns:** a `FlaxField`, an `eqx.Module` with `variables` as leaves.
    """
    if not callable(getattr(module, "apply", None)):
        raise TypeError(
            "`module` must be a Flax linen Module (with an `.apply` method); got "
            f"{type(module).__name__}."
        )
    if not isinstance(params, Mapping):
        raise TypeError(
            "`params` must be the variables dict from `module.init` or its "
            f"'params' entry; got {type(params).__name__}."
        )
    variables = params if "params" in params else {"params": params}
    return FlaxField(module, dict(variables))
