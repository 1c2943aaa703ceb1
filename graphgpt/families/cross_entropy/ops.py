"""The classifier's loss and its gradient: the cross_entropy kernel family."""
from __future__ import annotations

from ...dtypes import FP8_TYPES
from ...ops.registry import BACKWARD_ONLY, FUSION_MADE, Op, RowLoss, Spec, float_spec, register, require


# ---- cross-entropy: mean over all positions of -log softmax(logits)[target] -----------------
def _ce_infer(attrs, logits, targets):
    float_spec(logits)
    require(targets.dtype == "i32", f"targets must be i32, got {targets.dtype}")
    require(logits.shape[:-1] == targets.shape, f"logits {logits.shape} do not match targets {targets.shape}")
    return Spec((), "f32")  # the loss is computed, and kept, in float32 whatever the logits' type


def _ce_grad_infer(attrs, logits, targets, g):
    _ce_infer(attrs, logits, targets)
    require(g.shape == () and g.dtype == "f32", "the incoming gradient must be a float32 scalar")
    return logits


register(Op("cross_entropy", "nn", _ce_infer,
            vjp=lambda a, g, out, z, t: (g.graph.add("cross_entropy_grad", (z, t, g)), None),
            template="cross_entropy", loss=RowLoss(grad="cross_entropy_grad", with_grad="cross_entropy_with_grad")))
register(Op("cross_entropy_grad", "nn", _ce_grad_infer,
            nondiff=BACKWARD_ONLY, template="cross_entropy",
            # a row's statistics are read whole before its gradient is written, each element by
            # the thread that read it: the gradient may go over the logits
            overwrites=lambda attrs, n_inputs: ((0, 0),)))


# Both in one launch, made by the fusion pass where a program computes the loss and its gradient
# of the same logits (training; evaluation keeps the plain forward): the gradient's kernel already
# has each row's max and sum of exponentials, so the row's loss costs one more read of an element,
# not a second pass over the logits. Outputs: the loss, then the gradient, again over the logits;
# with attrs "fp8_grad", the gradient's FP8 copy and its factor (RowLoss).
def _ce_with_grad_infer(attrs, logits, targets, g):
    grad = _ce_grad_infer(attrs, logits, targets, g)
    outs = [_ce_infer(attrs, logits, targets), grad]
    if attrs.get("fp8_grad"):
        require(attrs["fp8_grad"] in FP8_TYPES, f"fp8_grad must be one of {', '.join(FP8_TYPES)}, not {attrs['fp8_grad']}")
        require(attrs.get("grad_dtype") == grad.dtype, f"grad_dtype must be the gradient's {grad.dtype}")
        outs += [Spec(grad.shape, attrs["fp8_grad"]), Spec((), "f32")]
    return outs


register(Op("cross_entropy_with_grad", "nn", _ce_with_grad_infer, nondiff=FUSION_MADE, template="cross_entropy",
            overwrites=lambda attrs, n_inputs: ((1, 0),)))
