"""FP8 operands: a tensor's largest magnitude, and its FP8 copy at a power-of-two scale."""
from __future__ import annotations

import math

import numpy as np

from ...dtypes import DTYPES, FP8, FP8_TYPES
from ...numpy_ops.base import reference

# The bounds of e: 2^e and 2^-e are normal float32 numbers, exact both ways, and a float32
# subnormal (below MIN_NORMAL) times 2^high stays under half of the type's smallest subnormal
# (E4M3's 2^-9, E5M2's 2^-16), so it rounds to a zero of its sign: on the H100 the kernels' float32
# arithmetic flushes subnormals to those zeros, and this bound makes the reference give the same
# bits.
MIN_EXPONENT = -125
MIN_NORMAL = 2.0**-126  # float32's smallest normal number


def exponents(dtype: str = FP8) -> tuple[int, int, int]:
    """(low, high, top) for FP8 type `dtype`: the bounds of scale_exponent's e, and k of the type's
    largest finite value, 0.875 2^k; what the kernels' scale_exponent takes."""
    largest, smallest = FP8_TYPES[dtype]
    top, k = math.frexp(largest)  # 448 = 0.875 2^9, 57344 = 0.875 2^16
    assert top == 0.875, dtype
    return MIN_EXPONENT, 126 + smallest - 2, k


def scale_exponent(amax: float, dtype: str = FP8) -> int:
    """The e of quantize's scale 2^e: the largest with amax 2^e at most the FP8 type's largest
    finite value, so that the tensor's largest magnitude lands in the type's top binade without
    overflowing it. A power of two changes only exponents, so x 2^e is exact in float32 and rounds
    once, and so is its inverse 2^-e. 0 where amax is not finite (an inf or NaN input: no scale
    helps), within the type's bounds (exponents). quantize.cu.j2's scale_exponent computes the
    same. A tensor whose largest magnitude is below float32's smallest normal number is left
    unscaled: its copy is zeros of its signs, as it is on the GPU."""
    if not MIN_NORMAL <= amax < math.inf:
        return 0
    f, k = math.frexp(amax)  # amax = f 2^k, 0.5 <= f < 1
    low, high, top = exponents(dtype)
    return max(low, min(high, top - k - (f > 0.875)))


@reference("abs_max")
def abs_max(attrs, x):
    return np.asarray(np.max(np.abs(x)), x.dtype)


@reference("quantize")
def quantize(attrs, x, amax):
    """x 2^e rounded to attrs "dtype" (E4M3 or E5M2, to nearest even), as the floats it holds,
    which the backend's store into the FP8 buffer keeps exactly (of x's rows transposed, with attrs
    "transpose"); and 2^-e. amax is x's abs_max, or a bound on it, so nothing scaled overflows
    the type unless x holds an inf: then e is 0, and where ml_dtypes gives NaN (E4M3) or inf (E5M2)
    for an inf and for values past the largest finite one, the kernel's conversion saturates them
    to it (a NaN stays NaN in both)."""
    e = scale_exponent(float(amax), attrs["dtype"])
    q = (x * 2.0 ** e).astype(DTYPES[attrs["dtype"]].numpy).astype(x.dtype)
    if attrs["transpose"]:
        q = q.reshape(-1, x.shape[-1]).T
    return q, np.asarray(2.0 ** -e, amax.dtype)
