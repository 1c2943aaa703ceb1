"""The compile target: the device facts kernel lowering sizes grids and shared memory by, chosen
with --target, named in plan.json and compared with the GPU by the CUDA backend."""
import json
import re

import pytest

from graphgpt.codegen import lower_plan, nvrtc_options
from graphgpt.errors import UserError
from graphgpt.plan import Buffer
from graphgpt.runtime import check_architecture, target_mismatch
from graphgpt.target import DEFAULT, TARGETS, Target
from tests.conftest import COMPILE, ROOT, TINY, assert_user_error, run_cli, sets
from tests.test_kernels_compile import _attention, _launch, program_data


def test_the_default_is_the_h100_h200_class_and_the_committed_plan_names_it():
    assert (DEFAULT.sms, DEFAULT.smem_per_block, DEFAULT.smem_per_sm) == (132, 227 << 10, 228 << 10)
    assert {k: v for k, v in TARGETS["h100"].to_json().items() if k != "name"} == \
           {k: v for k, v in TARGETS["h200"].to_json().items() if k != "name"}
    assert json.loads((ROOT / "compiled" / "plan.json").read_text())["target"] == DEFAULT.to_json()


def test_an_unknown_target_is_one_line_listing_the_known_ones(tmp_path):
    proc = run_cli(COMPILE, "model.py", "--out", str(tmp_path / "plan"), "--target", "a100", *sets(TINY))
    assert_user_error(proc, "a100", *TARGETS)
    assert not (tmp_path / "plan").exists()


def test_the_plan_names_the_target_it_was_compiled_for(tmp_path):
    proc = run_cli(COMPILE, "model.py", "--out", str(tmp_path / "plan"), "--target", "h100-pcie", *sets(TINY))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "plan" / "plan.json").read_text())["target"] == TARGETS["h100-pcie"].to_json()


@pytest.mark.parametrize("name", list(TARGETS))
def test_a_split_reduction_fills_a_wave_of_its_targets_sms(name):
    """One output summed over 4.9M floats: as many splits as blocks fill the target's SMs four times."""
    target = TARGETS[name]
    data = program_data([_launch("sum", Buffer("f32", 0, (1, 4 * 2048 * 600)), axes=[1], keepdims=False)])
    lower_plan(data, target)
    assert data["programs"]["p"].launches[0].cuda.grid == (1, 4 * target.sms, 1)


def test_attention_asks_for_the_blocks_an_sm_of_its_target_must_hold():
    """The seed's bf16 attention with dropout (16 x 6 heads of 256 rows), all three kernels on
    mma.sync: 384 blocks of 64 rows, three an SM of 132; 114 SMs would need four, more than
    MAX_RESIDENT, so no bound."""
    f = lambda shape: Buffer("bf16", 0, shape)  # noqa: E731
    bounds = {}
    for name in ("h200", "h100-pcie"):
        plan = program_data(_attention(f, lambda shape: Buffer("f32", 0, shape), 16, 256, 6, 64, dropout=0.2))
        source = lower_plan(plan, TARGETS[name])["kernels/attention.cu"]
        bounds[name] = set(re.findall(r"__launch_bounds__\((\d+(?:, \d+)?)\)", source))
        assert all(launch.cuda.grid == (4, 96, 1) for launch in plan["programs"]["p"].launches)
    assert bounds == {"h200": {"128, 3"}, "h100-pcie": {"128"}}


def test_a_kernel_with_more_shared_memory_than_a_block_of_the_target_has_is_refused():
    small = Target("small", sms=132, smem_per_block=8 << 10, smem_per_sm=16 << 10)
    f = lambda shape: Buffer("f32", 0, shape)  # noqa: E731
    plan = program_data(_attention(f, f, 2, 64, 2, 64, 0.0))
    with pytest.raises(UserError, match=r"synthetic: its causal_attention kernel needs 16384 bytes of shared memory, "
                                        r"more than a block has on target small \(8192\)"):
        lower_plan(plan, small)


def test_a_gpu_of_another_architecture_is_refused_in_one_line():
    """A plan whose kernels use Hopper's own instructions (sm_90a) loads on compute capability 9.0
    alone; one without them names no architecture and runs anywhere."""
    hopper = nvrtc_options({"sm_90a"})
    check_architecture(hopper, "90")
    check_architecture(nvrtc_options(set()), "80")
    with pytest.raises(UserError, match=r"^the plan's kernels use instructions that only sm_90a GPUs run, and this "
                                        r"GPU is sm_80: run the plan on an sm_90a GPU, or compile a float32 plan "
                                        r"for this one$"):
        check_architecture(hopper, "80")


def test_the_backend_says_so_in_one_line_when_the_gpus_sm_count_is_not_the_targets():
    assert target_mismatch(DEFAULT.to_json(), 132) is None
    line = target_mismatch(DEFAULT.to_json(), 114)
    assert line.startswith("warning: ") and "h200 (132 SMs)" in line and "114 SMs" in line and "\n" not in line
