"""Dropout: Philox4x32-10 masks, the same on every backend; in the training program only.

The masks are a function of (seed, site, counter, element): Philox4x32-10 must give Random123's
known answers; the fused attention must drop exactly what the dropout op drops on the explicit
(B, H, T, T) probabilities; and on the GPU every kernel must draw the NumPy masks bit for bit.
"""
import numpy as np
import pytest

from graphgpt.compiler import compile_model
from graphgpt.data import SequentialSampler
from graphgpt.families.dropout.reference import keep_mask, philox4x32_10
from graphgpt.plan import Buffer, Plan
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.schedule import DROPOUT_COUNTER, DROPOUT_SEED, dropout_scalars
from graphgpt.train import Trainer
from tests.conftest import ROOT, run_cli
from tests.test_op_gradients import check_vjp

SMALL = ["n_layer=2", "n_head=2", "n_embd=32", "block_size=64", "batch_size=2"]


def test_philox_gives_the_known_answers():
    """Random123's kat_vectors for philox4x32_10."""
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, want in cases:
        got = philox4x32_10([np.array([c]) for c in counter], key)
        assert tuple(int(w[0]) for w in got) == want


def test_masks_drop_p_and_differ_by_site_counter_and_seed():
    base = keep_mask((64, 1000), 0.2, 1, 7, 3)
    assert abs(1 - base.mean() - 0.2) < 0.01
    for other in (keep_mask((64, 1000), 0.2, 2, 7, 3), keep_mask((64, 1000), 0.2, 1, 7, 4),
                  keep_mask((64, 1000), 0.2, 1, 8, 3)):
        assert 0.25 < (other != base).mean() < 0.4  # independent masks: 2 p (1 - p) = 0.32 differ
    np.testing.assert_array_equal(keep_mask((64, 1000), 0.2, 1, 7, 3), base)


def test_every_micro_batch_and_rank_draws_its_own_masks():
    seen = {dropout_scalars(5, step, micro, 2, rank, 2)[DROPOUT_COUNTER]
            for step in range(3) for micro in range(2) for rank in range(2)}
    assert len(seen) == 12
    assert dropout_scalars(2**31 + 5, 0)[DROPOUT_SEED] == -(2**31) + 5  # the seed's bits, as int32


def test_attention_dropout_gradient_matches_finite_differences():
    """(The dropout op's own case is in test_op_gradients.)"""
    check_vjp("causal_attention", [((2, 6, 3, 2, 3), "f32"), ("ids", (), 1000), ("ids", (), 1000)],
              {"scale": 0.7, "dropout": 0.3, "site": 1})


def three_steps(settings):
    plan = Plan(compile_model(ROOT / "model.py", SMALL + settings, log=lambda *a: None).data, "t")
    tokens = np.random.default_rng(0).integers(0, plan.config["vocab_size"], 5000).astype(np.int32)
    backend = NumpyBackend(plan, np.float64)
    trainer = Trainer(plan, backend, SequentialSampler(tokens, 2, 64), seed=3)
    losses = [m["loss"] for m in trainer.steps(3)]
    return plan, losses, {t["name"]: backend.get_tensor(t["name"]) for t in plan.params}


def test_fused_attention_drops_what_the_dropout_op_drops():
    """The fused kernels number the probabilities as the dropout op numbers a (B, H, T, T) tensor:
    with the same sites, training through either attention computes the same, to rounding."""
    fused_plan, fused, fused_params = three_steps(["dropout=0.2", "attention=fused"])
    _, softmax, softmax_params = three_steps(["dropout=0.2", "attention=softmax"])
    _, plain, _ = three_steps(["dropout=0.0"])
    np.testing.assert_allclose(fused, softmax, rtol=1e-12)
    for name, value in softmax_params.items():
        np.testing.assert_allclose(fused_params[name], value, rtol=1e-10, atol=1e-14, err_msg=name)
    assert abs(fused[0] - plain[0]) > 1e-4  # the masks change the loss
    train_ops = {launch.op for launch in fused_plan.program("train").launches}
    assert "dropout" in train_ops
    for program in ("eval", "generate"):  # no masks outside training
        prog = fused_plan.program(program)
        assert "dropout" not in {launch.op for launch in prog.launches}
        assert not {DROPOUT_SEED, DROPOUT_COUNTER} & set(prog.inputs)
        assert all("dropout" not in launch.attrs for launch in prog.launches)


def test_dropout_out_of_range_is_one_line_and_status_2(tmp_path):
    proc = run_cli("tools/compile.py", "model.py", "--out", str(tmp_path / "p"), "--set", "dropout=1.0")
    assert proc.returncode == 2 and "dropout" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()


@pytest.mark.gpu
def test_cuda_draws_the_numpy_masks():
    """The dropout kernel against numpy_ops.keep_mask, bit for bit: ones in, and which elements come
    out zero. (The fused attention's kernels with dropout are checked against their NumPy
    references, masks included, in test_kernels_gpu: one differing mask moves them far past
    their tolerance.)"""
    import cupy as cp

    from graphgpt.codegen import NVRTC_OPTIONS, lower_plan
    from graphgpt.target import DEFAULT
    from tests.test_kernels_compile import _launch, program_data
    n, p, site, seed, counter = 100_003, 0.3, 5, 1234, 77
    data = program_data([_launch("dropout", Buffer("f32", 0, (n,)), Buffer("i32", 0, ()), Buffer("i32", 0, ()),
                                 p=p, site=site)])
    files = lower_plan(data, DEFAULT)
    (launch,) = data["programs"]["p"].launches
    fn = cp.RawModule(code=files["kernels/dropout.cu"], options=NVRTC_OPTIONS).get_function(launch.cuda.kernel)
    out = cp.full(n, np.nan, cp.float32)
    fn(tuple(launch.cuda.grid), tuple(launch.cuda.block),
       (out, cp.ones(n, cp.float32), cp.asarray(np.int32(seed)), cp.asarray(np.int32(counter))))
    got = cp.asnumpy(out)
    np.testing.assert_array_equal(got != 0, keep_mask((n,), p, site, seed, counter))
    np.testing.assert_array_equal(got[got != 0], np.float32(1 / (1 - p)))
