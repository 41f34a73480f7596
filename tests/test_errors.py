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
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from helpers import JnpMLP

import eqxderiv
from eqxderiv._validation import check_inputs


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
        eqxderiv.derivatives(F, X, T, method="bogus")  # pyright: ignore[reportArgumentType]
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


@pytest.mark.parametrize("cls", [eqxderiv.Hutchinson, eqxderiv.SparseSampling])
@pytest.mark.parametrize("value", ["yes", 1, None, 0.0])
def test_shared_must_be_a_bool(cls, value, no_typecheck):
    with pytest.raises(ValueError, match=r"`shared` must be a bool; got "):
        cls(shared=value)  # pyright: ignore


@pytest.mark.parametrize("cls", [eqxderiv.Hutchinson, eqxderiv.SparseSampling])
def test_shared_accepts_a_numpy_bool(cls, no_typecheck):
    # As counts accept NumPy integers; kept a Python bool, which equinox accepts
    # as a static field (a NumPy scalar would make it warn).
    assert cls(shared=np.True_).shared is True  # pyright: ignore


@pytest.mark.parametrize("cls", [eqxderiv.Hutchinson, eqxderiv.SparseSampling])
def test_shared_probes_need_one_key(cls):
    op = eqxderiv.Laplacian(F, method=cls(2, shared=True))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        op(X, T)
    with pytest.raises((TypeError, ValueError), match="key"):
        op(X, T, key=jax.random.split(jax.random.key(0), X.shape[0]))


# Regressions from a user probing the library.


class _Linear(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return self.w @ x


def test_field_of_x_alone_called_with_t():
    # Regression: the raw "<lambda>() takes 1 positional argument but 2 were given".
    msg = (
        r"`field` takes only `x`, but the operator was called with a time `t` as "
        r"well: calling `field\(x, t\)` failed with: .*takes \d positional arguments? "
        r"but \d were given; call the operator as `op\(x\)`"
    )
    with pytest.raises(TypeError, match=msg):
        eqxderiv.Laplacian(G)(X, T)
    with pytest.raises(TypeError, match=msg):
        eqxderiv.derivatives(G, X, T)
    # A model, whose `__call__` takes `x` alone.
    with pytest.raises(TypeError, match=msg):
        eqxderiv.Jacobian(_Linear(jnp.eye(3)))(X, T)
    # Nested: the inner operator's message comes through, not wrapped again.
    with pytest.raises(TypeError, match=msg) as info:
        eqxderiv.Grad(eqxderiv.Divergence(G))(X, T)
    assert str(info.value).count("takes only `x`") == 1


def test_field_of_x_and_t_called_without_t():
    # The converse of `test_field_of_x_alone_called_with_t`.
    msg = (
        r"`field` takes a time `t` as well as `x`: calling `field\(x\)` failed "
        r"with: .*missing 1 required positional argument: 't'; call the operator "
        r"as `op\(x, t\)`, with `t` of shape \(\*batch,\) or \(\*batch, 1\)"
    )
    with pytest.raises(TypeError, match=msg):
        eqxderiv.Laplacian(F)(X)


def test_wrong_call_inside_a_field_is_not_blamed_on_t():
    # A `TypeError` about positional arguments from inside the field (its own
    # signature fits) is not mistaken for calling the field with or without `t`.
    def field(x, t):
        return G(x, t)  # pyright: ignore

    with pytest.raises(TypeError, match="positional argument") as info:
        eqxderiv.Value(field)(X, T)
    assert "takes only `x`" not in str(info.value)
    assert "call the operator as" not in str(info.value)


BATCH_FIELDS = {
    "index": (lambda x: x[:, 0], IndexError, r"Too many indices"),
    "reshape": (lambda x: x.reshape(4, 3), TypeError, r"cannot reshape array"),
    "broadcast": (lambda x: x + jnp.ones(4), TypeError, r"incompatible shapes"),
    "axis": (lambda x: jnp.sum(x, axis=1), ValueError, r"axis 1 is out of bounds"),
}


@pytest.mark.parametrize("case", list(BATCH_FIELDS))
def test_field_written_for_a_batch(case):
    # Regression: jax's raw shape errors, which did not say that fields are called
    # per sample.
    field, exc, original = BATCH_FIELDS[case]
    msg = (
        rf"Tracing `field` on one sample failed with \w+: .*{original}.*\n`field` is "
        r"called on one sample at a time, with `x` of shape \(d,\) = \(3,\), and "
        r"the operator maps it over the batch: if it was written for a batch"
    )
    with pytest.raises(exc, match=msg) as info:
        eqxderiv.Laplacian(field)(X)
    # The original error is chained, not swallowed.
    assert isinstance(info.value.__cause__, exc)
    with pytest.raises(exc, match=msg):
        eqxderiv.derivatives(field, X, operators=(eqxderiv.Jacobian,))


@pytest.mark.parametrize("t, shape", [(T, r"\(\)"), (T[:, None], r"\(1,\)")])
def test_field_written_for_a_batch_with_time(t, shape):
    msg = (
        r"Tracing `field` on one sample failed with IndexError: .*\n`field` is "
        r"called on one sample at a time, with `x` of shape \(d,\) = \(3,\) and "
        rf"`t` of shape {shape} \(\(\) for `t` of shape \(\*batch,\), \(1,\) for "
        r"\(\*batch, 1\)\)"
    )
    with pytest.raises(IndexError, match=msg):
        eqxderiv.TimeDerivative(lambda x, t: x[:, 0] * t)(X, t)


def test_other_field_errors_are_not_annotated():
    # Errors that are not about shapes reach the user unchanged.
    def bad(x):
        raise ValueError("negative viscosity")

    with pytest.raises(ValueError, match=r"^negative viscosity\b") as info:
        eqxderiv.Laplacian(bad)(X)
    assert info.value.__cause__ is None
    with pytest.raises(jax.errors.TracerBoolConversionError):
        eqxderiv.Laplacian(lambda x: x if x[0] > 0 else -x)(X)
    # Operators' own validation, for an operator used as a field, is not wrapped.
    with pytest.raises(ValueError, match=r"^Grad needs a scalar field"):
        eqxderiv.Laplacian(eqxderiv.Grad(G))(X)


@pytest.mark.parametrize(
    "cls, example",
    [
        (eqxderiv.Hutchinson, r" or `eqxderiv\.Hutchinson\(num_probes=16\)`"),
        (eqxderiv.SparseSampling, r" or `eqxderiv\.SparseSampling\(num_samples=16\)`"),
        (eqxderiv.Nested, r"\."),
    ],
)
def test_method_class_instead_of_instance(cls, example):
    # Regression: "got _ModuleMeta".
    name = cls.__name__
    msg = (
        rf"`method` must be a method object, not the class `{name}`: instantiate "
        rf"it, e.g. `method=eqxderiv\.{name}\(\)`{example}"
    )
    with pytest.raises(TypeError, match=msg):
        eqxderiv.Laplacian(F, method=cls)
    with pytest.raises(TypeError, match=msg):
        eqxderiv.derivatives(F, X, T, method=cls)


PER_SAMPLE_KEYS = {
    "typed keys": (
        jax.random.split(jax.random.key(0), 4),
        ValueError,
        r"got a key array of shape \(4,\)",
    ),
    "legacy keys": (
        jax.random.split(jax.random.PRNGKey(0), 4),
        ValueError,
        r"got a uint32 array of shape \(4, 2\)",
    ),
    "int": (0, TypeError, r"got int 0"),
    "float array": (
        jnp.zeros(2),
        TypeError,
        r"got an array of dtype float64 and shape \(2,\)",
    ),
}


@pytest.mark.parametrize("case", list(PER_SAMPLE_KEYS))
def test_bad_key_with_typecheck_hook(case):
    key, _, _ = PER_SAMPLE_KEYS[case]
    op = eqxderiv.Laplacian(F, method=eqxderiv.Hutchinson())
    with pytest.raises((TypeError, ValueError), match="key"):
        op(X, T, key=key)


@pytest.mark.parametrize("case", list(PER_SAMPLE_KEYS))
def test_bad_key_own_message(case, no_typecheck):
    # Regression: per-sample keys gave jax's "split accepts a single key".
    key, exc, got = PER_SAMPLE_KEYS[case]
    msg = (
        r"`key` must be a single PRNG key for the whole call: a scalar typed key "
        r"from `jax.random.key\(seed\)` \(shape \(\)\), or a legacy uint32 key of "
        rf"shape \(2,\) from `jax.random.PRNGKey\(seed\)`; {got}\. Each sample "
        r"gets its own subkey"
    )
    with pytest.raises(exc, match=msg):
        eqxderiv.Laplacian(F, method=eqxderiv.Hutchinson())(X, T, key=key)
    # Also where the key is not used: `map_batch` would still split it.
    with pytest.raises(exc, match=msg):
        eqxderiv.Laplacian(F)(X, T, key=key)
    with pytest.raises(exc, match=msg):
        eqxderiv.derivatives(F, X, T, method="hutchinson", key=key)


@pytest.mark.parametrize("shared", [False, True])
def test_one_key_of_either_kind(shared):
    op = eqxderiv.Laplacian(F, method=eqxderiv.Hutchinson(2, shared=shared))
    typed = op(X, T, key=jax.random.key(0))
    legacy = op(X, T, key=jax.random.PRNGKey(0))
    assert typed.shape == legacy.shape == (4, 3)
    assert jnp.all(jnp.isfinite(typed)) and jnp.all(jnp.isfinite(legacy))


COUNTS = [
    (eqxderiv.Taylor, "chunk_size"),
    (eqxderiv.Forward, "chunk_size"),
    (eqxderiv.Hutchinson, "chunk_size"),
    (eqxderiv.Hutchinson, "num_probes"),
    (eqxderiv.SparseSampling, "chunk_size"),
    (eqxderiv.SparseSampling, "num_samples"),
]


@pytest.mark.parametrize("cls, name", COUNTS)
def test_counts_accept_any_integer(cls, name):
    # Regression: `np.int64` was refused. It is stored as a Python int (a NumPy
    # scalar set as a static field would also make equinox warn, an error here).
    method = cls(**{name: np.int64(3)})
    assert type(getattr(method, name)) is int
    assert method == cls(**{name: 3})
    assert hash(method) == hash(cls(**{name: 3}))


@pytest.mark.parametrize("cls, name", COUNTS)
@pytest.mark.parametrize("bad", [True, np.bool_(True)])
def test_counts_refuse_bools(cls, name, bad):
    # Regression: `Taylor(chunk_size=True)` was accepted (as 1), while
    # `Forward(chunk_size=True)` was refused. A NumPy bool is converted to a Python
    # one first (set as a static field, it would make equinox warn).
    msg = (
        rf"`{name}` must be a positive int( or None)?; got True "
        r"\(a bool, not a count\)"
    )
    with pytest.raises(ValueError, match=msg):
        cls(**{name: bad})


def test_call_chunk_size_accepts_any_integer():
    op = eqxderiv.Laplacian(F)
    expected = op(X, T)
    assert jnp.allclose(op(X, T, chunk_size=np.int64(3)), expected)
    (lap,) = eqxderiv.derivatives(
        F, X, T, (eqxderiv.Laplacian,), chunk_size=np.int32(3)
    )
    assert jnp.allclose(lap, expected)


def test_call_chunk_size_refuses_numpy_bools(no_typecheck):
    msg = r"`chunk_size` must be a positive int or None; got np.True_ \(a bool"
    with pytest.raises(ValueError, match=msg):
        eqxderiv.Laplacian(F)(X, T, chunk_size=np.bool_(True))  # pyright: ignore


def test_complex_output():
    # Regression: the message said only "must return a floating-point array".
    msg = (
        r"`field` must return a floating-point array; got dtype complex128 "
        r"\(shape \(3,\)\)\. .*return the real and imaginary parts stacked as a real "
        r"array, e\.g\. `lambda x: jnp\.stack\(\[f\(x\)\.real, f\(x\)\.imag\]\)` "
        r"\(or `jnp\.concatenate` for vector outputs\)"
    )
    # `x` is made complex explicitly: strict dtype promotion refuses `1j * x`.
    f = lambda x: jnp.exp(1j * x.astype(jnp.complex128))
    with pytest.raises(TypeError, match=msg):
        eqxderiv.Value(f)(X)
    with pytest.raises(TypeError, match=msg):
        eqxderiv.derivatives(f, X, operators=(eqxderiv.Value,))


def test_complex_intermediates_are_fine():
    # Only complex *outputs* are refused: Re exp(i x) = cos x inside a field.
    f = lambda x: jnp.real(jnp.exp(1j * x.astype(jnp.complex128)))
    assert jnp.allclose(eqxderiv.Value(f)(X), jnp.cos(X))
    lap = eqxderiv.Laplacian(f, method="nested")(X)
    assert jnp.allclose(lap, -jnp.cos(X))
    # The suggested split, for a complex-valued scalar field.
    g = lambda x: jnp.exp(1j * jnp.sum(x).astype(jnp.complex128))
    split = eqxderiv.Laplacian(
        lambda x: jnp.stack([g(x).real, g(x).imag]), method="nested"
    )(X)
    d = X.shape[-1]
    expected = -d * jnp.stack([jnp.cos(X.sum(-1)), jnp.sin(X.sum(-1))], axis=-1)
    assert jnp.allclose(split, expected)


def test_custom_vjp_whose_forward_rule_calls_a_custom_vjp(no_typecheck):
    # A `fwd` that calls the function itself cannot be differentiated in forward
    # mode (`jax.hessian` raises JAX's own TypeError): second derivatives say so
    # in words; first derivatives are unaffected, and a `fwd` that computes the
    # value itself gives nested reverse-over-reverse autodiff's Laplacian.
    def body(z):
        return jnp.tanh(z) ** 2

    def bwd(z, g):
        return (g * 2 * jnp.tanh(z) * (1 - jnp.tanh(z) ** 2),)

    calls = jax.custom_vjp(body)
    calls.defvjp(lambda z: (calls(z), z), bwd)
    inline = jax.custom_vjp(body)
    inline.defvjp(lambda z: (body(z), z), bwd)
    scale = jnp.arange(1.0, 4.0)
    x = jnp.asarray([[0.3, -0.4, 0.5], [0.0, 0.1, -1.0]])
    f = lambda a: jnp.sum(calls(a * scale))  # noqa: E731
    g = lambda a: jnp.sum(inline(a * scale))  # noqa: E731
    with pytest.raises(TypeError, match="can't apply forward-mode"):
        jax.hessian(f)(x[0])
    with warnings.catch_warnings():
        # The nested path's one-time warning (whether this process gave it
        # already depends on the tests run before).
        warnings.simplefilter("ignore", eqxderiv.FallbackWarning)
        for op in (eqxderiv.Laplacian, eqxderiv.Hessian):
            with pytest.raises(TypeError, match=r"forward rule `fwd` .* calls"):
                op(f)(x)
        np.testing.assert_allclose(
            eqxderiv.Grad(f)(x), jax.vmap(jax.grad(f))(x), rtol=1e-12, atol=1e-12
        )
        want = jax.vmap(lambda a: jnp.trace(jax.jacrev(jax.jacrev(g))(a)))(x)
        got = eqxderiv.Laplacian(g)(x)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
