"""FP8 operands: the quantize kernel family. The fp8 pass (passes/fp8.py) makes its ops, for the
operands of the matrix products it runs on FP8: E4M3 copies, and E5M2 copies of gradients."""
from __future__ import annotations

from ...dtypes import FP8_MULTIPLE, FP8_TYPES
from ...ops.registry import Op, Spec, float_spec, prod, register, require

FP8_MADE = "made by the fp8 pass, which runs after autodiff"


# ---- abs_max: a tensor's largest magnitude ---------------------------------------------------
# max |x| over all elements, float32 (NaN where any element is NaN, as np.max(np.abs(x))): what
# quantize chooses its scale by. A maximum is the same in any order, so its blocks' partial
# maxima need no fixed order to give the same bits every run.
def _abs_max_infer(attrs, x):
    float_spec(x)
    return Spec((), "f32")


register(Op("abs_max", "reduction", _abs_max_infer, nondiff=FP8_MADE, template="quantize"))


# ---- quantize: the FP8 copy ----------------------------------------------------------------
# x times 2^e rounded to attrs "dtype" (E4M3 or E5M2), and 2^-e, the factor that undoes the scale,
# a float32 scalar; amax is x's abs_max, and e the largest with amax 2^e at most the type's largest
# value (reference.py: scale_exponent). x has rank 2 or more: its last two axes are a matrix.
# With attrs "transpose", the copy is of x's rows (its leading axes flattened) transposed, (cols,
# rows): an FP8 product reads both operands along k, so a weight stored (k, n) goes in as (n, k).
def _quantize_infer(attrs, x, amax):
    float_spec(x)
    require(len(x.shape) >= 2, f"needs a matrix or a stack of them, got shape {x.shape}")
    require(amax.shape == () and amax.dtype == "f32", f"amax must be a float32 scalar, got {amax.dtype} {amax.shape}")
    fp8 = attrs["dtype"]
    require(fp8 in FP8_TYPES, f"quantizes to {' or '.join(FP8_TYPES)}, not {fp8}")
    if not attrs["transpose"]:
        return [Spec(x.shape, fp8), Spec((), "f32")]
    rows, cols = prod(x.shape[:-1]), x.shape[-1]
    require(rows % FP8_MULTIPLE == 0 and cols % FP8_MULTIPLE == 0,
            f"a transposed copy needs rows and columns that are multiples of {FP8_MULTIPLE}, got {rows} x {cols}")
    return [Spec((cols, rows), fp8), Spec((), "f32")]


register(Op("quantize", "nn", _quantize_infer, nondiff=FP8_MADE, template="quantize"))
