"""FP8 operands (graphgpt/families/quantize/): the power-of-two scale, the NumPy references of
abs_max and quantize, and their shape rules. Their kernels are compiled in
tests/test_kernels_compile.py and checked against these references on the GPU in
tests/test_kernels_gpu.py."""
import math

import ml_dtypes
import numpy as np
import pytest

from graphgpt.dtypes import DTYPES, E4M3_MAX, E5M2, FP8, FP8_TYPES
from graphgpt.families.quantize.reference import MIN_NORMAL, abs_max, exponents, quantize, scale_exponent

MIN_EXPONENT, MAX_EXPONENT, _ = exponents(FP8)
from graphgpt.ir import Graph, GraphError

F32_MAX = float(np.finfo(np.float32).max)
# Magnitudes of float32 tensors: powers of two, E4M3's top (1.75 2^k) and the float32 numbers just
# past it and just below the next power, the smallest subnormal and the largest number.
AMAXES = [float(np.float32(m) * np.float32(2.0 ** k)) for k in range(-140, 128, 3)
          for m in (1.0, 1.75, np.nextafter(np.float32(1.75), np.float32(2)), np.nextafter(np.float32(2), np.float32(1)))
          if 2.0 ** k * float(m) <= F32_MAX] + [E4M3_MAX, 449.0, 2.0 ** -149, F32_MAX]


def test_the_scale_is_the_largest_power_of_two_that_keeps_the_magnitude_within_e4m3():
    clamped = 0
    for amax in AMAXES:
        e = scale_exponent(amax)
        assert isinstance(e, int) and MIN_EXPONENT <= e <= MAX_EXPONENT, amax
        assert amax * 2.0 ** e <= E4M3_MAX, amax
        if amax < MIN_NORMAL:  # a float32 subnormal: unscaled
            assert e == 0, amax
        elif e < MAX_EXPONENT:  # twice the scale would overflow
            assert amax * 2.0 ** (e + 1) > E4M3_MAX, amax
        else:  # the tiniest normal magnitudes: clamped at MAX_EXPONENT
            clamped += 1
    assert 0 < clamped < len(AMAXES) // 4


def test_the_scale_at_e4m3s_top_and_past_it():
    assert [scale_exponent(a) for a in (1.0, 1.75, 1.875, 448.0, 449.0, 2.0 ** -120, 2.0 ** -140)] == \
        [8, 8, 7, 0, -1, MAX_EXPONENT, 0]


@pytest.mark.parametrize("fp8", [FP8, E5M2])
def test_a_float32_subnormal_scaled_as_far_as_allowed_rounds_to_a_signed_zero(fp8):
    """What the GPU's flushed subnormals give: the largest scale leaves a subnormal under half of
    the type's smallest subnormal (E4M3's 2^-9, E5M2's 2^-16)."""
    tiny = np.array([2.0 ** -126 * 0.99, -(2.0 ** -149)], np.float32)
    q, _ = quantize({"transpose": False, "dtype": fp8}, tiny, np.float32(2.0 ** -110))
    assert scale_exponent(2.0 ** -110, fp8) == exponents(fp8)[1]
    assert q.astype(DTYPES[fp8].numpy).view(np.uint8).tolist() == [0x00, 0x80]


def test_the_fp8_ranges_are_the_types_own():
    """dtypes.py states each FP8 type's range, so that choosing a scale needs no ml_dtypes import."""
    for name, (largest, smallest) in FP8_TYPES.items():
        info = ml_dtypes.finfo(DTYPES[name].numpy)
        assert (float(info.max), float(info.smallest_subnormal)) == (largest, 2.0 ** smallest), name


@pytest.mark.parametrize("amax", [0.0, math.inf, math.nan])
def test_nothing_is_scaled_by_a_zero_or_non_finite_magnitude(amax):
    assert scale_exponent(amax) == 0


@pytest.mark.parametrize("transpose", [False, True], ids=["plain", "transposed"])
@pytest.mark.parametrize("wide", [np.float32, np.float64], ids=["float32", "float64"])
def test_the_reference_rounds_x_once_at_its_scale(transpose, wide):
    """q is x 2^e rounded to E4M3 by ml_dtypes, held in x's float type; the largest magnitude lands
    in E4M3's top binade; stored into an E4M3 array (as the NumPy backend stores an output) it keeps
    its bits; and the factor undoes the scale exactly."""
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((2, 32, 48))).astype(np.float32).astype(wide)  # a float32 tensor, widened
    amax = abs_max({}, x)
    q, factor = quantize({"transpose": transpose, "dtype": FP8}, x, amax)
    e = scale_exponent(float(amax))
    want = (x.astype(np.float32) * np.float32(2.0 ** e)).astype(ml_dtypes.float8_e4m3fn)
    if transpose:
        want = want.reshape(64, 48).T
    assert q.dtype == wide and q.shape == want.shape == ((48, 64) if transpose else x.shape)
    stored = np.empty(q.shape, ml_dtypes.float8_e4m3fn)
    stored[...] = q
    assert stored.tobytes() == want.tobytes()
    assert E4M3_MAX / 2 < np.abs(q).max() <= E4M3_MAX
    assert factor.shape == () and factor.dtype == amax.dtype and float(factor) * 2.0 ** e == 1.0


def test_abs_max_is_the_largest_magnitude_and_nan_where_any_element_is():
    x = np.random.default_rng(1).standard_normal((5, 40)).astype(np.float32)
    x[3, 7] = -10.0
    got = abs_max({}, x)
    assert got.shape == () and got.dtype == np.float32 and float(got) == 10.0
    x[1, 2] = np.nan
    assert np.isnan(abs_max({}, x))


def _graph(shape, dtype="bf16"):
    g = Graph()
    return g, g.add("input", name="x", shape=shape, dtype=dtype)


@pytest.mark.parametrize("transpose,want", [(False, (2, 32, 48)), (True, (48, 64))], ids=["plain", "transposed"])
def test_the_ops_give_an_e4m3_copy_and_float32_scalars(transpose, want):
    g, x = _graph((2, 32, 48))
    amax = g.add("abs_max", (x,))
    assert (amax.shape, amax.dtype) == ((), "f32")
    q, factor = g.add("quantize", (x, amax), transpose=transpose, dtype=FP8)
    assert (q.shape, q.dtype) == (want, FP8)
    assert (factor.shape, factor.dtype) == ((), "f32")


@pytest.mark.parametrize("shape,dtype,amax,transpose,message", [
    ((24, 32), "bf16", ((), "f32"), True, "multiples of 16, got 24 x 32"),
    ((2, 16, 40), "f32", ((), "f32"), True, "multiples of 16, got 32 x 40"),
    ((32, 32), "bf16", ((1,), "f32"), False, "amax must be a float32 scalar"),
    ((32, 32), "bf16", ((), "bf16"), False, "amax must be a float32 scalar"),
    ((32, 32), "i32", ((), "f32"), False, "expects a float tensor"),
    ((32,), "bf16", ((), "f32"), False, "needs a matrix"),
], ids=["rows", "cols", "amax-shape", "amax-dtype", "x-int", "x-vector"])
def test_quantize_refuses_what_its_kernels_cannot_take(shape, dtype, amax, transpose, message):
    g, x = _graph(shape, dtype)
    m = g.add("input", name="amax", shape=amax[0], dtype=amax[1])
    with pytest.raises(GraphError, match=message):
        g.add("quantize", (x, m), transpose=transpose, dtype=FP8)


def test_a_copy_that_stays_as_it_lies_takes_any_shape_and_abs_max_only_floats():
    g, x = _graph((24, 40))
    q, _ = g.add("quantize", (x, g.add("abs_max", (x,))), transpose=False, dtype=FP8)
    assert q.shape == (24, 40)
    with pytest.raises(GraphError, match="expects a float tensor"):
        g.add("abs_max", (g.add("input", name="ids", shape=(4,), dtype="i32"),))
