"""The collapsed Taylor-mode rules of the elementwise primitives, each the
collapsed jet of an elementwise map (`eqxderiv._engine.elementwise`) with its
second partials as the primitive's curvature metadata says."""

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax.extend import core

from ..elementwise import CURVATURE, HOLOMORPHIC, elementwise_jet
from ..jet import Jet, JetContext, primals_of
from ..registry import nested_jet, register_rule


def _is_complex(dtype: Any) -> bool:
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.complexfloating))


def _elementwise_rule(name: str) -> Callable[..., list[Jet]]:
    def rule(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
        fn = lambda *a: eqn.primitive.bind(  # noqa: E731
            *a, **eqn.primitive.get_bind_params(eqn.params)
        )
        dtypes = [jnp.result_type(p) for p in primals_of(jets)]
        dtypes += [getattr(o.aval, "dtype", None) for o in eqn.outvars]
        if name not in HOLOMORPHIC and any(_is_complex(d) for d in dtypes):
            return nested_jet(
                ctx, lambda *a: [fn(*a)], jets, f"'{name}' of a complex value"
            )
        curvature = CURVATURE.get(name, "all")
        if name == "integer_pow" and eqn.params["y"] in (0, 1):
            curvature = frozenset()
        return elementwise_jet(ctx, fn, jets, curvature)

    return rule


def _register() -> None:
    for name in (*CURVATURE, "integer_pow"):
        register_rule(name, _elementwise_rule(name))


_register()
