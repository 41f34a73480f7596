"""Bad input raises a clear error naming the argument, what was received and what
was expected.

With the jaxtyping pytest hook on (see pyproject), some bad inputs never reach
eqxderiv's own validation: the hook's runtime check of the signature raises a
`jaxtyping.TypeCheckError` (a `TypeError`) first. The issue requires our own clear
error "whether or not runtime type checking is on", so each of those cases is
tested twice: once as is (some error naming the argument is raised), and once with
the `no_typecheck` fixture, which turns the hook's checks off as they are for a
user without it, to pin eqxderiv's own message.
"""

import re

import jax
import jax.numpy as jnp
import jaxtyping
import pytest
from helpers import JnpMLP

import eqxderiv
from eqxderiv._misc import check_inputs


F = lambda x, t: jnp.sin(x) * t
G = lambda x: jnp.sin(x)
X = jnp.ones((4, 3))
T = jnp.ones((4,))


# Inputs the hook rejects first: (the bad argument, x, t, exception, eqxderiv's own
# message).
HOOKED = {
    "batch mismatch": (
        "t",
        X,
        jnp.ones((5,)),
        ValueError,
        r"`t` must have shape \(\*batch,\) = \(4,\) or \(\*batch, 1\) = \(4, 1\) "
        r"to match `x` of shape \(4, 3\); got shape \(5,\)",
    ),
    "batch mismatch 2d": (
        "t",
        jnp.ones((2, 3, 3)),
        jnp.ones((3, 2)),
        ValueError,
        r"`t` must have shape .* = \(2, 3\) .* got shape \(3, 2\)",
    ),
    "t trailing axis": (
        "t",
        X,
        jnp.ones((4, 2)),
        ValueError,
        r"`t` must have shape .*\(4, 1\).* got shape \(4, 2\)",
    ),
    "integer x": (
        "x",
        jnp.ones((4, 3), dtype=int),
        T,
        TypeError,
        r"`x` must be a floating-point array; got dtype int\d+ with shape \(4, 3\)",
    ),
    "integer t": (
        "t",
        X,
        jnp.ones((4,), dtype=int),
        TypeError,
        r"`t` must be a floating-point array; got dtype int\d+ with shape \(4,\)",
    ),
    "python int x": (
        "x",
        3,
        None,
        TypeError,
        r"`x` must be a floating-point array; got the Python int 3",
    ),
    "scalar x": (
        "x",
        jnp.asarray(1.0),
        None,
        ValueError,
        r"`x` must have shape \(\*batch, d\) .* got a scalar of shape \(\)",
    ),
}


@pytest.mark.parametrize("case", list(HOOKED))
def test_bad_inputs_with_typecheck_hook(case):
    name, x, t, _, _ = HOOKED[case]
    op = eqxderiv.Value(F if t is not None else G)
    with pytest.raises((TypeError, ValueError), match=rf"`{name}`|'{name}'"):
        op(x) if t is None else op(x, t)


@pytest.mark.parametrize("case", list(HOOKED))
def test_bad_inputs_own_message(case, no_typecheck):
    _, x, t, exc, message = HOOKED[case]
    op = eqxderiv.Value(F if t is not None else G)
    with pytest.raises(exc, match=message):
        op(x) if t is None else op(x, t)
    # The same validation, called directly.
    with pytest.raises(exc, match=message):
        check_inputs(x, t)


def test_hook_is_active(request):
    # Guards the premise of this file: with the hook on, these are caught by it.
    if not request.config.getoption("jaxtyping_packages", None):
        pytest.skip("run without the jaxtyping hook")
    with pytest.raises(jaxtyping.TypeCheckError):
        eqxderiv.Value(G)(jnp.ones((4, 3), dtype=int))


def test_dtype_mismatch():
    with pytest.raises(
        TypeError,
        match=r"`x` and `t` must have the same dtype; got x: float64, "
        r"t: float32",
    ):
        eqxderiv.Laplacian(F)(X, T.astype(jnp.float32))


def test_python_float_time_takes_the_dtype_of_x():
    # Regression: a Python float `t` (no dtype of its own) was promoted to float64
    # under x64 and then rejected as a dtype mismatch with a float32 `x`.
    x32 = jnp.ones((3,), jnp.float32)
    out = eqxderiv.TimeDerivative(F)(x32, 0.5)
    assert out.dtype == jnp.float32
    assert jnp.allclose(out, jnp.sin(x32))


@pytest.mark.parametrize(
    "cls", [eqxderiv.Divergence, eqxderiv.GradDiv, eqxderiv.Advection]
)
def test_square_field_required(cls):
    msg = (
        rf"{cls.__name__} needs a vector field with as many outputs as inputs: "
        r"output shape \(d,\) = \(3,\) .* got a field with output shape \(2,\)"
    )
    with pytest.raises(ValueError, match=msg):
        cls(lambda x: x[:2])(X)
    scalar = r"got a field with output shape \(\)"
    with pytest.raises(ValueError, match=scalar):
        cls(lambda x: jnp.sum(x))(X)


@pytest.mark.parametrize("d", [1, 4])
def test_curl_dimension(d):
    with pytest.raises(ValueError, match=rf"Curl is defined for d = 2 .* d = {d}"):
        eqxderiv.Curl(G)(jnp.ones((2, d)))


def test_curl_needs_square_field():
    with pytest.raises(ValueError, match=r"Curl needs .* output shape \(2,\)"):
        eqxderiv.Curl(lambda x: x[:2])(X)


@pytest.mark.parametrize("cls", [eqxderiv.Grad, eqxderiv.Hessian])
def test_scalar_field_required(cls):
    msg = (
        rf"{cls.__name__} needs a scalar field \(output shape \(\) .*\); got a "
        r"field with output shape \(3,\)"
    )
    with pytest.raises(ValueError, match=msg):
        cls(G)(X)


def test_non_callable_field():
    # The hook checks the `field: Callable` annotation first.
    with pytest.raises(TypeError, match="field"):
        eqxderiv.Laplacian(3)  # pyright: ignore


def test_non_callable_field_own_message(no_typecheck):
    msg = (
        r"`field` must be callable as `field\(x\)` or `field\(x, t\)` on one "
        r"sample; got a non-callable int"
    )
    with pytest.raises(TypeError, match=msg):
        eqxderiv.Laplacian(3)  # pyright: ignore
    with pytest.raises(TypeError, match=msg):
        eqxderiv.derivatives(3, X)  # pyright: ignore


def test_field_output_must_be_one_float_array():
    with pytest.raises(
        TypeError, match="must return a floating-point array; got dtype int"
    ):
        eqxderiv.Value(lambda x: jnp.ones(2, dtype=int))(X)
    with pytest.raises(TypeError, match="must return a single array for one sample"):
        eqxderiv.Jacobian(lambda x: (x, x))(X)


def test_time_derivative_without_t():
    # A field that needs t: the failed call is explained.
    with pytest.raises(TypeError, match=r"call the operator as `op\(x, t\)`"):
        eqxderiv.TimeDerivative(F)(X)
    # A field with an optional t: the operator itself says it needs one.
    with pytest.raises(ValueError, match="TimeDerivative needs a time"):
        eqxderiv.TimeDerivative(lambda x, t=None: x)(X)
    with pytest.raises(ValueError, match="TimeDerivative needs a time"):
        eqxderiv.derivatives(lambda x, t=None: x, X)


def test_method_argument():
    with pytest.raises(ValueError, match=r"`method` must be one of .*; got 'bogus'"):
        eqxderiv.Laplacian(F, method="bogus")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match=r"`method` must be one of .*; got 'bogus'"):
        eqxderiv.derivatives(F, X, T, method="bogus")
    with pytest.raises(TypeError, match=r"`method` must be a string .* got int"):
        eqxderiv.Laplacian(F, method=3)  # pyright: ignore


def test_method_objects_validate_their_arguments():
    with pytest.raises(ValueError, match=r"`num_probes` must be a positive int; got 0"):
        eqxderiv.Hutchinson(num_probes=0)
    with pytest.raises(ValueError, match=r"`num_samples` must be a positive int"):
        eqxderiv.SparseSampling(num_samples=-1)
    with pytest.raises(ValueError, match=r"`chunk_size` must be a positive int"):
        eqxderiv.Taylor(chunk_size=0)


def test_probe_kind():
    # The hook checks the `Literal` annotation first (a TypeError); without it,
    # eqxderiv raises its own ValueError.
    with pytest.raises((TypeError, ValueError), match="probe"):
        eqxderiv.Hutchinson(probe="uniform")  # pyright: ignore


def test_probe_kind_own_message(no_typecheck):
    msg = r"`probe` must be 'rademacher' or 'gaussian'; got 'uniform'"
    with pytest.raises(ValueError, match=msg):
        eqxderiv.Hutchinson(probe="uniform")  # pyright: ignore


def test_forward_validates_chunk_size():
    # Regression: `Forward(chunk_size=0)` was accepted and failed at call time with
    # a ZeroDivisionError.
    with pytest.raises(ValueError, match=r"`chunk_size` must be a positive int"):
        eqxderiv.Forward(chunk_size=0)
    with pytest.raises(ValueError, match=r"`chunk_size` must be a positive int"):
        eqxderiv.Forward(chunk_size=-2)


@pytest.mark.parametrize("bad", [jnp.ones(3), jnp.ones((1, 1))])
def test_scaling_by_non_scalar(bad):
    op = eqxderiv.Laplacian(F)
    msg = r"scaled by a scalar .* got an array of shape \(" + re.escape(
        ", ".join(map(str, bad.shape))
    )
    with pytest.raises(TypeError, match=msg):
        _ = op * bad
    with pytest.raises(TypeError, match=msg):
        _ = bad * op
    with pytest.raises(TypeError, match=msg):
        _ = op / bad


def test_division_by_non_number():
    with pytest.raises(TypeError, match="divided by a scalar .* got str"):
        _ = eqxderiv.Laplacian(F) / "2"  # pyright: ignore


@pytest.mark.parametrize("symbol", ["+", "-", "*"])
def test_arithmetic_with_non_callable(symbol):
    op = eqxderiv.Laplacian(F)
    msg = rf"`\{symbol}` between an operator and str is not defined: expected"
    with pytest.raises(TypeError, match=msg):
        eval(f"op {symbol} 'a'")
    with pytest.raises(TypeError, match=msg):
        eval(f"'a' {symbol} op")
    with pytest.raises(TypeError, match=r"`\+` between an operator and int"):
        _ = op + 3  # pyright: ignore


def test_adding_results_of_different_shapes():
    msg = r"Cannot add operator results of .*\(3,\).*\(3, 3\)"
    # Same field (fused) ...
    with pytest.raises(ValueError, match=msg):
        (eqxderiv.Laplacian(G) + eqxderiv.Jacobian(G))(X)
    # ... and different fields.
    with pytest.raises(ValueError, match=msg):
        (eqxderiv.Laplacian(G) + eqxderiv.Jacobian(lambda x: x))(X)
    with pytest.raises(ValueError, match=r"Cannot add .*\(\).*\(3,\)"):
        (eqxderiv.Divergence(G) - eqxderiv.Value(lambda x: x))(X)


def test_multiplying_results_of_incompatible_shapes():
    msg = r"Cannot multiply operator results of per-sample shapes \(3,\) and \(2,\)"
    with pytest.raises(ValueError, match=msg):
        (eqxderiv.Laplacian(G) * (lambda x: x[:2]))(X)


def test_stochastic_method_without_key(getkey):
    net = JnpMLP(3, 3, 4, time=True, key=getkey())
    msg = r"Laplacian uses a stochastic estimator and needs a PRNG key: call it as"
    with pytest.raises(ValueError, match=msg):
        eqxderiv.Laplacian(net, method=eqxderiv.Hutchinson())(X, T)
    # Through a composition and a residual too.
    div = eqxderiv.Divergence(net, method=eqxderiv.SparseSampling(2))
    with pytest.raises(ValueError, match="Grad uses a stochastic estimator"):
        eqxderiv.Grad(div)(X, T)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        (
            eqxderiv.TimeDerivative(net)
            + eqxderiv.Laplacian(net, method=eqxderiv.SparseSampling())
        )(X, T)
    with pytest.raises(ValueError, match="derivatives uses a stochastic estimator"):
        eqxderiv.derivatives(net, X, T, method="hutchinson")


# `True` passes the hook (a bool is an int to it), so eqxderiv itself rejects it.
@pytest.mark.parametrize("bad", [0, -1, True])
def test_bad_chunk_size(bad):
    msg = rf"`chunk_size` must be a positive int or None; got {bad}"
    with pytest.raises(ValueError, match=msg):
        eqxderiv.Laplacian(F)(X, T, chunk_size=bad)
    # Regression: `derivatives` did not validate `chunk_size` (0 was accepted, -1
    # failed inside a reshape), and `True` was taken for 1 everywhere.
    with pytest.raises(ValueError, match=msg):
        eqxderiv.derivatives(F, X, T, chunk_size=bad)


def test_non_int_chunk_size():
    # The hook rejects a float `chunk_size` first (a TypeError); without it,
    # eqxderiv raises its own ValueError.
    with pytest.raises((TypeError, ValueError), match="chunk_size"):
        eqxderiv.Laplacian(F)(X, T, chunk_size=1.5)  # pyright: ignore


@pytest.mark.parametrize("bad", [1.5, True, "2"])
def test_non_int_chunk_size_own_message(bad, no_typecheck):
    msg = rf"`chunk_size` must be a positive int or None; got {re.escape(repr(bad))}"
    with pytest.raises(ValueError, match=msg):
        eqxderiv.Laplacian(F)(X, T, chunk_size=bad)
    with pytest.raises(ValueError, match=msg):
        eqxderiv.derivatives(F, X, T, chunk_size=bad)


def test_derivatives_operators_argument():
    with pytest.raises(ValueError, match="`operators` must name at least one"):
        eqxderiv.derivatives(F, X, T, ())
    # beartype checks one randomly chosen element of a sequence, so the hook may or
    # may not catch this first; both errors are `TypeError`s naming `operators`.
    with pytest.raises(TypeError, match="operators"):
        eqxderiv.derivatives(F, X, T, (eqxderiv.Value, 3))  # pyright: ignore
    with pytest.raises(ValueError, match=r"Grad needs a scalar field"):
        eqxderiv.derivatives(G, X, operators=(eqxderiv.Grad,))


def test_derivatives_operators_argument_own_message(no_typecheck):
    with pytest.raises(TypeError, match=r"`operators` must contain named operator"):
        eqxderiv.derivatives(F, X, T, (eqxderiv.Value, 3))  # pyright: ignore
    with pytest.raises(TypeError, match=r"`operators` must contain named operator"):
        eqxderiv.derivatives(F, X, T, (eqxderiv.Value(F),))  # pyright: ignore


def test_space_time_mlp_arguments(getkey):
    with pytest.raises(ValueError, match="`in_size` must be a positive int; got 0"):
        eqxderiv.SpaceTimeMLP(0, 3, key=getkey())
    with pytest.raises(ValueError, match="`out_size` must be a positive int or"):
        eqxderiv.SpaceTimeMLP(3, "vector", key=getkey())
    net = eqxderiv.SpaceTimeMLP(3, 3, 4, 1, key=getkey())
    with pytest.raises(ValueError, match=r"`x` must have shape \(3,\) for one sample"):
        net(jnp.ones(2), jnp.ones(()))


def test_jit_compatible_errors():
    # Validation is on shapes and dtypes, so it raises at trace time under jit.
    op = eqxderiv.Laplacian(F)
    with pytest.raises(TypeError, match="same dtype"):
        jax.jit(lambda x, t: op(x, t))(X, T.astype(jnp.float32))


def test_taylor_compress_must_be_a_bool(no_typecheck):
    with pytest.raises(ValueError, match=r"`compress` must be a bool; got 'yes'"):
        eqxderiv.Taylor(compress="yes")  # pyright: ignore
