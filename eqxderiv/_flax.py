import sys
from collections.abc import Mapping
from typing import Any

import equinox as eqx
from jaxtyping import Array, Float


# Nothing here imports Flax: eqxderiv never does, so that it works (and imports
# quickly) without it. A Flax object can only exist once Flax has been imported by
# the user, so looking its classes up in `sys.modules` is enough to recognise one.


def _flax_class(module: str, name: str) -> type | None:
    """`module.name` if `module` (e.g. "flax.nnx") has been imported, else None."""
    cls = getattr(sys.modules.get(module), name, None)
    return cls if isinstance(cls, type) else None


def _is_nnx_module(obj: object) -> bool:
    cls = _flax_class("flax.nnx", "Module")
    return cls is not None and isinstance(obj, cls)


def _is_linen_module(obj: object) -> bool:
    cls = _flax_class("flax.linen", "Module")
    return cls is not None and isinstance(obj, cls)


# What Flax raises when an unbound linen module (one not inside `init`/`apply`) is
# called: `CallCompactUnboundModuleError` for an `@nn.compact` `__call__`, and for
# a module defined with `setup()` an `AttributeError` on the first submodule used
# (Flax only runs `setup` in a bound module).
_UNBOUND_ERRORS = (
    "CallCompactUnboundModuleError",
    "CallSetupUnboundModuleError",
    "CallShareScopeOnUnboundModuleError",
    "CallUnbindOnUnboundModuleError",
)


def _is_unbound_error(error: BaseException) -> bool:
    if isinstance(error, AttributeError):
        return True
    classes = tuple(
        cls
        for cls in (_flax_class("flax.errors", name) for name in _UNBOUND_ERRORS)
        if cls is not None
    )
    return bool(classes) and isinstance(error, classes)


def explain_unbound_flax(field: object, error: Exception) -> Exception | None:
    """The error to raise instead of `error` when `error` came from calling `field`
    and `field` is an unbound Flax linen Module: one passed to an operator without
    `eqxderiv.from_flax`, so called without its variables.

    Returns a `TypeError` naming the module's class and showing the `from_flax`
    call (the caller raises it, `from error`), or None when the error is something
    else: `field` is not a linen Module, or is one bound to its variables
    (`module.bind(variables)`), or `error` is not Flax's unbound-module error
    (`flax.errors.CallCompactUnboundModuleError` and its siblings, or the
    `AttributeError` that a module with a `setup()` raises unbound).

    It never imports Flax: when Flax has not been imported, `field` cannot be a
    Flax module and the answer is None.
    """
    if not _is_linen_module(field) or getattr(field, "scope", None) is not None:
        return None
    if not _is_unbound_error(error):
        return None
    name = type(field).__name__
    return TypeError(
        f"`field` is a Flax linen Module ({name}), which is called through "
        "`module.apply(variables, ...)`, not as `field(x, t)`; wrap it with "
        "`eqxderiv.from_flax(module, params)`, e.g. "
        f"`eqxderiv.Laplacian(eqxderiv.from_flax(net, params))(x, t)` for "
        f"`net = {name}(...)` and `params = net.init(key, x[:1], t[:1])`. "
        f"(Flax raised {type(error).__name__}: {error})"
    )


class FlaxField(eqx.Module):
    """A Flax linen model and its variables, as a field whose parameters are
    pytree leaves. Build it with `eqxderiv.from_flax`.
    """

    module: Any = eqx.field(static=True)
    # The Flax variables: nested dicts of arrays (pytree leaves).
    variables: dict[str, Any]

    def __call__(
        self,
        x: Float[Array, " d"],
        t: Float[Array, ""] | Float[Array, "1"] | None = None,
    ) -> Float[Array, "..."]:
        if t is None:
            return self.module.apply(self.variables, x)
        return self.module.apply(self.variables, x, t)


def from_flax(module: Any, params: Any) -> FlaxField:
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

    A Flax NNX model (`flax.nnx.Module`) holds its own parameters and is already a
    field: pass it to the operators directly, `eqxderiv.Jacobian(model)(x, t)`,
    and differentiate a loss of them with `nnx.value_and_grad`. `from_flax`
    rejects one with a `TypeError` that says so.

    **Arguments:**

    - `module`: a `flax.linen.Module` (anything with `.apply(variables, *args)`).
    - `params`: either the full variables dict returned by `module.init` (with a
        `"params"` collection) or just the parameter tree.

    **Returns:** a `FlaxField`, an `eqx.Module` with `variables` as leaves.

    **Raises:** `TypeError` if `module` is an NNX module or has no `.apply`, or if
    `params` is not a dict.
    """
    if _is_nnx_module(module):
        raise TypeError(
            "`module` must be a Flax linen Module (with an `.apply` method); got the "
            f"Flax NNX Module {type(module).__name__}. An nnx.Module holds its own "
            "parameters and is already an eqxderiv field: pass it to the operators "
            "directly, without from_flax or `params`, e.g. "
            "`eqxderiv.Jacobian(model)(x, t)`, and differentiate a loss of them "
            "with `nnx.value_and_grad(loss)(model)`."
        )
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
