"""Multi-tensor launches: consecutive pointwise launches that do the same thing to tensors lying one
after another in memory run as one launch over the joined range.

This is what the optimizer needs: the update of every parameter is the same chain (one
fused_multi: m, v, the parameter and, in a bf16 plan, its copy), and parameters, gradients, each
kind of optimizer state and the copies sit in their regions in the same order, so the updates of
all parameters are one pass over those regions and the clip scale. The joined range also covers
the few padding elements between tensors (regions start each tensor on a 256-byte boundary, the
copies on the element their weight starts at); those are zero and computing on them changes
nothing anyone reads, as long as every operand steps on to its next tensor by as many elements
(those of the widest operand's slot, which a float32 weight and its bf16 copy share). That holds
in the persistent regions only: the padding of a work buffer holds whatever an earlier buffer
left there, and joined into a gradient's padding it would reach the gradient norm, which sums the
gradient region as one range. So a launch with a tensor in the work region joins nothing.

It works on the plan's launch list, after memory planning, because only there are the offsets known.
A launch may join its predecessor when both are pointwise and compute the same (the same op and
attributes), every output and operand is either a scalar shared by both or a full-size tensor
that starts where the predecessor's ended (at the same distance in elements as every other's),
and nothing in between breaks the order (they are neighbours in the list, and a pointwise
launch's element i depends only on element i of its operands)."""
from __future__ import annotations

from dataclasses import replace

from ..dtypes import DTYPES, nbytes
from ..ops import REGISTRY
from ..ops.registry import prod
from ..plan import Launch, aligned


def merge_launches(launches, work_start: int | None = None) -> list[Launch]:
    """Join neighbouring launches; `work_start` is the byte offset where the arena's work region
    begins (None: no operand lies in one)."""
    out: list[Launch] = []
    for launch in launches:
        if out and _continues(out[-1], launch, work_start):
            out[-1] = _joined(out[-1], launch)
        else:
            out.append(launch)
    return out


def _size(buf) -> int:
    return prod(buf.shape)


def _mergeable(launch: Launch, work_start: int | None) -> bool:
    """Pointwise over its output's shape: every other output is that shape, every operand that
    shape or a scalar, and no tensor lies in the work region."""
    out = launch.out
    tensors = [b for b in (*launch.outputs, *launch.ins) if _size(b) > 1]
    return (REGISTRY[launch.op].kind == "elementwise" and not {"perm", "shape"} & set(launch.attrs)
            and _size(out) > 1 and all(b.shape == out.shape for b in launch.outputs)
            and all(_size(b) == 1 or b.shape == out.shape for b in launch.ins)
            and (work_start is None or all(b.offset < work_start for b in tensors)))


def _continues(prev: Launch, nxt: Launch, work_start: int | None) -> bool:
    if not (_mergeable(prev, work_start) and _mergeable(nxt, work_start)) or prev.op != nxt.op \
            or _computation(prev) != _computation(nxt) or len(prev.ins) != len(nxt.ins):
        return False
    if len(prev.outputs) != len(nxt.outputs):
        return False
    pairs = list(zip(prev.outputs, nxt.outputs)) + list(zip(prev.ins, nxt.ins))
    if any((_size(a) == 1) != (_size(b) == 1) or a.dtype != b.dtype for a, b in pairs):
        return False
    if any(a.offset != b.offset for a, b in pairs if _size(b) == 1):  # a scalar: the same one
        return False
    tensors = [(a, b) for a, b in pairs if _size(b) > 1]
    # a tensor: the next one of its region, as many elements on as every other operand's next one,
    # which is where the widest operand's next slot starts (a bf16 weight copy lies as far into its
    # region as its float32 weight does into the params region, passes/memory.py)
    widest = max((a for a, _ in tensors), key=lambda a: DTYPES[a.dtype].bytes)
    step = aligned(nbytes(widest)) // DTYPES[widest.dtype].bytes
    return all(b.offset == a.offset + step * DTYPES[a.dtype].bytes for a, b in tensors)


def _computation(launch: Launch) -> dict:
    """What a launch computes per element: its attributes but the count of tensors it joins."""
    return {k: v for k, v in launch.attrs.items() if k != "tensors"}


def _joined(prev: Launch, nxt: Launch) -> Launch:
    """One launch over prev's range followed by nxt's (prev may already be a join)."""
    total = (nxt.out.offset + nbytes(nxt.out) - prev.out.offset) // DTYPES[nxt.out.dtype].bytes

    def flat(buf):
        return buf if _size(buf) == 1 else buf._replace(shape=(total,))

    return replace(prev, out=flat(prev.out), ins=tuple(flat(b) for b in prev.ins),
                   outs=None if prev.outs is None else tuple(flat(b) for b in prev.outs),
                   attrs=dict(prev.attrs, tensors=prev.attrs.get("tensors", 1) + 1))
