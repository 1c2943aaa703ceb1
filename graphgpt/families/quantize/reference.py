"""FP8 operands: a tensor's largest magnitude, and its E4M3 copy at a power-of-two scale."""
from __future__ import annotations

import math

import numpy as np

from ...dtypes import DTYPES, E4M3_MAX
from ...numpy_ops.base import reference

# The bounds of e. 2^e and 2^-e are normal float32 numbers, exact both ways, and a float32 subnormal
# (below MIN_NORMAL) times 2^MAX_EXPONENT stays under half of E4M3's smallest subnormal (2^-9), so it
# rounds to a zero of its sign: on the H100 the kernels' float32 arithmetic flushes subnormals to
# those zeros, and this bound makes the reference give the same bits.
MIN_EXPONENT, MAX_EXPONENT = -125, 115
MIN_NORMAL = 2.0**-126  # float32's smallest normal number


def scale_exponent(amax: float) -> int:
    """The e of quantize's scale 2^e: the largest with amax 2^e <= E4M3_MAX, so that the tensor's
    largest magnitude lands in E4M3's top binade without overflowing it. A power of two changes
    only exponents, so x 2^e is exact in float32 and rounds once, and so is its inverse 2^-e. 0
    where amax is not finite (an inf or NaN input: no scale helps), within [MIN_EXPONENT, MAX_EXPONENT].
    quantize.cu.j2's scale_exponent computes the same. A tensor whose largest magnitude is below
    float32's smallest normal number is left unscaled: its copy is zeros of its signs, as it is on
    the GPU (see MAX_EXPONENT)."""
    if not MIN_NORMAL <= amax < math.inf:
        return 0
    f, k = math.frexp(amax)  # amax = f 2^k, 0.5 <= f < 1
    top, k_max = math.frexp(E4M3_MAX)  # 448 = 0.875 2^9
    return max(MIN_EXPONENT, min(MAX_EXPONENT, k_max - k - (f > top)))


@reference("abs_max")
def abs_max(attrs, x):
    return np.asarray(np.max(np.abs(x)), x.dtype)


@reference("quantize")
def quantize(attrs, x, amax):
    """x 2^e rounded to E4M3 (to nearest even), as the floats it holds, which the backend's store
    into the E4M3 buffer keeps exactly (of x's rows transposed, with attrs "transpose"); and 2^-e.
    amax is x's abs_max, so nothing scaled overflows E4M3 unless x holds an inf: then e is 0, and
    where ml_dtypes gives NaN for an inf and for values past 464, the kernel's conversion saturates
    them to +-448 (a NaN stays NaN in both)."""
    e = scale_exponent(float(amax))
    q = (x * 2.0 ** e).astype(DTYPES[attrs["dtype"]].numpy).astype(x.dtype)
    if attrs["transpose"]:
        q = q.reshape(-1, x.shape[-1]).T
    return q, np.asarray(2.0 ** -e, amax.dtype)
