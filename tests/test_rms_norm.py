"""RMSNorm (dsl.rms_norm): an uncentred row normaliser that gets LayerNorm's fused forward and
backward by declaring the RowNormaliser trait, and trains."""
import numpy as np
import pytest

from graphgpt import dsl
from graphgpt.compiler import compile_model
from graphgpt.ir import GraphError
from graphgpt.ops import REGISTRY
from tests.models import FAST, MODELS, assert_trains_as_unfused, compiled, train


def test_the_reference_divides_each_row_by_its_root_mean_square():
    x = np.random.default_rng(0).standard_normal((3, 8))
    rows, rstd = REGISTRY["rms_normalize"].ref({"eps": 1e-5}, x)
    np.testing.assert_allclose(rstd, 1.0 / np.sqrt((x ** 2).mean(-1) + 1e-5))
    np.testing.assert_allclose(np.sqrt((rows ** 2).mean(-1)), 1.0, rtol=1e-4)
    assert rows.shape == x.shape and rstd.shape == (3,)


@pytest.mark.parametrize("overrides", [[], ["dtype=bf16"]], ids=["f32", "bf16"])
def test_rms_norm_runs_as_the_fused_normaliser_forward_and_backward(overrides):
    """As LayerNorm's (tests/test_fusion.py): the weight multiply is the forward kernel's epilogue,
    the gradient's scaling by the weight and its accumulation into the residual stream's gradient
    are the backward kernel's; no mul runs on its own."""
    data = compiled("rms_mlp", overrides)
    for program in ("train", "eval"):
        ops = [launch.op for launch in data["programs"][program].launches]
        assert ops.count("fused_rms_normalize") == 3, ops  # a layer's and the final one
        assert not {"rms_normalize", "mul"} & set(ops), ops
    grads = [ln for ln in data["programs"]["train"].launches if ln.op == "fused_rms_normalize_grad"]
    assert [(g.attrs["scaled"], g.attrs["accumulate"]) for g in grads] == [(True, False)] + [(True, True)] * 2
    assert not {"rms_normalize_grad", "mul"} & {ln.op for ln in data["programs"]["train"].launches}
    first = next(ln for ln in data["programs"]["train"].launches if ln.op == "fused_rms_normalize")
    assert len(first.outs) == 3 and [b.shape for b in first.ins[1:]] == [(16,)]  # rows, rstd, rows * weight
    unfused = {ln.op for ln in compiled("rms_mlp", overrides, fusion=False)["programs"]["train"].launches}
    assert {"rms_normalize", "rms_normalize_grad", "mul"} <= unfused


def test_the_fused_plan_trains_as_the_unfused_one_and_its_loss_falls():
    assert_trains_as_unfused("rms_mlp")


def test_remat_all_recomputes_rms_norms_rows_and_computes_the_same():
    """Recompute reads the trait: the rows and the weighted rows come back in the backward (the
    normaliser runs again), the one statistic is the forward's."""
    def run(remat):
        data = compile_model(MODELS / "rms_mlp.py", FAST, remat=remat, log=lambda *a: None).data
        ops = [launch.op for launch in data["programs"]["train"].launches]
        return ops.count("fused_rms_normalize"), data["programs"]["train"].memory["work_peak"], train(data, 3, np.float64)
    (kept, peak, (losses, params)), (again, remat_peak, (remat_losses, remat_params)) = run("none"), run("all")
    assert (kept, again) == (3, 6) and remat_peak < peak
    np.testing.assert_allclose(remat_losses, losses, rtol=1e-12)
    for name, value in params.items():
        np.testing.assert_allclose(remat_params[name], value, rtol=1e-12, atol=1e-15, err_msg=name)


@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan")])
def test_a_normaliser_refuses_an_eps_that_is_not_a_finite_number_above_zero(eps):
    def build(tracer):
        x = tracer.input("x", (2, 4))
        dsl.rms_norm(x, eps=eps)
    with pytest.raises(GraphError, match="rms_normalize: eps must be a finite number > 0"):
        dsl.trace(build)
