"""Fused causal attention and its two backward kernels (attention.cu.j2).

q, k and v come packed as (B, T, 3, H, D), or apart as q (B, T, H, D) with k and v (B, T, Hkv, D)
(grouped-query attention: query head h reads key/value head h // G, G = H / Hkv); the rest are
(B, T, H, D) or (B, H, T). The kernels address q, k and v through row strides and a head mapping
rendered in as constants: the packed form is the case of one buffer, rows 3 H D apart, groups of
one. A block owns one batch entry and head (grid y) and tiles of its T rows (grid x); the separate
form's key/value gradient owns a key/value head's rows and visits its group's query heads in
turn, summing their gradients in registers. Three variants:
  wgmma -- bf16 without dropout on Hopper's warpgroup products (wgmma.mma_async, sm_90a),
          flash-attention-3's overlap within a warpgroup: a block of warpgroups owns 64 rows
          each (queries; the key/value gradient's, keys and values) and walks the other side in
          tiles through stages (WGMMA_TILING) of 128-byte-swizzled shared memory (cp.async); a
          tile's scores are issued with the previous tile's products (the forward's with V, the
          query gradient's with K, the key/value gradient's two with Q and G), and its
          probabilities are computed while those run. For head dims 64 and 128 and T a multiple
          of the block's rows and of the tiles.
  mma  -- bf16 on tensor cores (mma.sync m16n8k16, float32 accumulators), flash-attention-2
          tiling: a block owns 64 or 128 rows, 16 or 32 a warp (mma_tiling), and walks the other
          side's TILE-row tiles through double-buffered shared memory (cp.async), a chunk of
          their rows at a time, so scores and probabilities live only in registers. For head
          dims 64 and 128 and T a multiple of 64.
  simt -- any float type, head dim and T, on the CUDA cores: a block owns 32 rows, four threads
          per row each holding a quarter of it; the other side's 32-row tiles pass through shared
          memory. The float32 plans' kernel, and bf16's where the tensor cores' shapes do not fit.
The forward and the query gradient own query rows (the last, with the most keys to visit, first);
the key/value gradient owns key rows and visits the queries at and after them. No kernel adds
into memory another block writes: the backward is deterministic. With dropout every kernel draws
the keep factor of each probability it uses from Philox, as the dropout op numbers a (B, H, T, T)
tensor (keep_mask in the dropout family's reference.py).
"""
from __future__ import annotations

from ...dtypes import DTYPES
from ...kernels.common import Kernel, c_float, cdiv, types
from ...target import Target
from ..dropout.reference import drop_threshold, keep_scale

TILE = 64                 # rows of the other side's tiles a tensor-core block walks
MMA_HEAD_DIMS = (64, 128)
# A tensor-core block's tiling: (16-row m-tiles a warp, warps, rows of the other side's tile taken
# at a time); the block owns 16 m-tiles warps rows. Every ldmatrix of the other side feeds all of
# a warp's m-tiles, and every tile read from L2 all of the block's rows, so two m-tiles in four
# warps (128 rows) read half the shared memory and L2 per product that one m-tile in four warps
# (64 rows) does. Their accumulators leave room in the registers for scores of 64 keys in the
# forward and 32 in the backward, and only at head dim 64 without dropout (whose keep factors need
# registers too). Two m-tiles also need a grid of at least two such blocks per SM: with fewer
# (the seed's 256-row sequences and 96 heads: 192 blocks) 64-row blocks, twice as many, finish
# sooner. Measured on an H200: docs/PERFORMANCE.md.
ONE_TILE = (1, 4, 64)
TWO_TILES = {"causal_attention": (2, 4, 64), "causal_attention_grad_q": (2, 4, 32), "causal_attention_grad_kv": (2, 4, 32)}


def mma_tiling(op: str, t: int, d: int, dropout: bool, heads: int, target: Target) -> tuple[int, int, int]:
    """The tiling of op's tensor-core kernel for sequences of t rows, head dim d and `heads`
    sequences of rows (batch entries times heads), on `target`'s SMs."""
    two = TWO_TILES[op]
    rows = 16 * two[0] * two[1]
    fits = d == 64 and not dropout and t % rows == 0 and t // rows * heads >= target.wave // 2
    return two if fits else ONE_TILE


# A grid of at most this many blocks an SM is made to fit on the SMs at once: the kernel tells the
# compiler (__launch_bounds__) to leave each block registers for that many beside it. Left alone,
# the seed's key/value gradient took 180 registers a thread, two 128-thread blocks an SM, and ran
# its 384 blocks in two waves; at 168 (three a SM) one. Larger grids run in waves anyway.
MAX_RESIDENT = 3


def resident_blocks(blocks: int, target: Target) -> int:
    """The blocks an SM must hold for the whole grid to run at once, or 1 (no bound) where more
    than MAX_RESIDENT would be needed."""
    need = cdiv(blocks, target.sms)
    return need if need <= MAX_RESIDENT else 1


SIMT_ROWS = 32            # rows of a CUDA-core block's tile, on both sides
SIMT_THREADS = 4 * SIMT_ROWS
PAD = 8                   # bf16 a shared-memory row is padded by: ldmatrix rows fall in distinct banks


# The Hopper variant (wgmma, sm_90a), by op and head dim: (warpgroups a block, rows of the other
# side a tile, stages, blocks an SM). A warpgroup owns 64 rows; its accumulators (D / 2 registers
# a thread; the key/value gradient's two) and one tile's scores (rows / 2; the backward's also
# g v^T's) must fit beside each other without spilling, with the blocks an SM asks for. Of the
# stages of tiles in shared memory, two are read by the products in flight and the rest are
# loading. Measured in docs/PERFORMANCE.md.
WGMMA_TILING = {"causal_attention": {64: (2, 64, 4, 2), 128: (2, 64, 4, 1)},
                "causal_attention_grad_q": {64: (1, 64, 4, 2), 128: (2, 64, 4, 1)},
                "causal_attention_grad_kv": {64: (1, 64, 4, 2), 128: (1, 32, 4, 2)}}


def wgmma_rows(op: str, d: int) -> int:
    """The rows a Hopper block of op owns at head dim d."""
    return 64 * WGMMA_TILING[op][d][0]


def wgmma_fits(op: str, t: int, d: int) -> bool:
    """Whether T holds whole blocks and whole tiles of op's Hopper kernel at head dim d."""
    return d in WGMMA_TILING.get(op, {}) and t % wgmma_rows(op, d) == 0 and t % WGMMA_TILING[op][d][1] == 0


def variant(dtype: str, t: int, d: int, op: str = "causal_attention", dropout: bool = False) -> str:
    """Which kernel serves op: 'wgmma' (bf16 without dropout, where T holds whole blocks and tiles),
    'mma' (bf16 at head dims 64 and 128, T a multiple of the tile) or 'simt'."""
    if dtype != "bf16" or d not in MMA_HEAD_DIMS or t % TILE:
        return "simt"
    if not dropout and wgmma_fits(op, t, d):
        return "wgmma"
    return "mma"


def geometry(launch) -> tuple[int, int, int, int, int, bool]:
    """(B, T, H, Hkv, D) of an attention launch, and whether its q, k and v come packed."""
    x = launch.ins[0]
    if len(x.shape) == 5:
        b, t, _, h, d = x.shape
        return b, t, h, h, d, True
    b, t, h, d = x.shape
    return b, t, h, launch.ins[1].shape[2], d, False


def lower(launch, target: Target) -> Kernel:
    b, t, h, hkv, d, packed = geometry(launch)
    grouped = launch.op == "causal_attention_grad_kv" and not packed  # a block per key/value head
    attrs = launch.attrs
    heads, kind = b * (hkv if grouped else h), variant(launch.ins[0].dtype, t, d, launch.op, "dropout" in attrs)
    # q's and k's and v's row strides, as the kernels' constants name them
    strides = {"q_stride": "3 * C", "kv_stride": "3 * C"} if packed else {"q_stride": "C", "kv_stride": "CKV"}
    params = {**types(launch), "op": launch.op, "t": t, "d": d, "h": h, "hkv": hkv, "packed": packed, **strides,
              "heads": heads, "variant": kind, "scale": c_float(attrs["scale"]), "dropout": "dropout" in attrs}
    if "dropout" in attrs:  # the probabilities' keep factors, drawn as the dropout op draws them
        params |= {"site": attrs["site"], "threshold": drop_threshold(attrs["dropout"]),
                   "keep_scale": c_float(keep_scale(attrs["dropout"]))}
    if kind == "simt":  # two tiles of the other side as float32, and the backward's lse and delta rows
        smem = (2 * SIMT_ROWS * d + (2 * SIMT_ROWS if launch.op == "causal_attention_grad_kv" else 0)) * 4
        return Kernel(launch.op, {**params, "threads": SIMT_THREADS}, (cdiv(t, SIMT_ROWS), heads, 1),
                      (SIMT_THREADS, 1, 1), smem=smem)
    if kind == "wgmma":  # the owned rows (and the backward's second matrix of them), stages of the other side's two; the swizzle's alignment
        groups, rows, stages, blocks = WGMMA_TILING[launch.op][d]
        own, bf16 = wgmma_rows(launch.op, d), DTYPES["bf16"].bytes
        owned = 1 if launch.op == "causal_attention" else 2
        stats = 2 * stages * rows * 4 if launch.op == "causal_attention_grad_kv" else 0  # the query tiles' lse and delta
        smem = (owned * own + 2 * stages * rows) * d * bf16 + stats + 1024
        return Kernel(launch.op, {**params, "groups": groups, "tile_rows": rows, "stages": stages, "min_blocks": blocks},
                      (t // own, heads, 1), (128 * groups, 1, 1), smem=smem, arch="sm_90a")
    m_tiles, warps, chunk = mma_tiling(launch.op, t, d, "dropout" in attrs, heads, target)
    own = 16 * m_tiles * warps
    row = (d + PAD) * DTYPES["bf16"].bytes
    # shared tiles: the forward keeps its queries and double-buffers keys and values; the query
    # gradient also keeps its output gradients; the key/value gradient keeps its keys and values
    # and double-buffers queries and output gradients, with their rows' lse and delta
    owned = 1 if launch.op == "causal_attention" else 2
    stats = 2 * 2 * TILE * 4 if launch.op == "causal_attention_grad_kv" else 0
    return Kernel(launch.op, {**params, "tile": TILE, "pad": PAD, "warps": warps, "mt": m_tiles, "chunk": chunk,
                                 "min_blocks": resident_blocks(t // own * heads, target)},
                  (t // own, heads, 1), (32 * warps, 1, 1), smem=(owned * own + 4 * TILE) * row + stats)
