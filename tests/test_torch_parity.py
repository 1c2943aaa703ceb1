"""graphgpt's compiled step against PyTorch autograd: same weights, same batch, float64.

The NumPy backend runs the memory-planned plan; tools/torch_gpt2.py is an independent
implementation of the same model and optimizer. Loss, every gradient and every parameter after
three updates must agree to 1e-9 relative, which pins down graphgpt's model semantics (attention
split, LayerNorm, GELU, loss, clipping, Adam) against PyTorch's.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", exc_type=ImportError)

from graphgpt import optim, schedule  # noqa: E402
from graphgpt.compiler import compile_model  # noqa: E402
from graphgpt.plan import Plan  # noqa: E402
from graphgpt.runtime.numpy_backend import NumpyBackend  # noqa: E402
from graphgpt.train import init_params  # noqa: E402
from tests.conftest import ROOT, TINY  # noqa: E402
from tools.torch_gpt2 import GPT2, load_weights, make_optimizer, train_step, use_precision  # noqa: E402

RTOL = 1e-9


@pytest.fixture(scope="module")
def plan():
    return Plan(compile_model(ROOT / "model.py", TINY, log=lambda *a: None).data, "t")


def weights_of(plan: Plan, kind: str) -> dict[str, np.ndarray]:
    """'init': graphgpt's initial weights. 'wide': O(1) weights, so every nonlinearity is
    exercised. The tiny model's gradient norm exceeds the clip threshold with either."""
    weights = init_params(plan, seed=0)
    if kind == "wide":
        rng = np.random.default_rng(1)
        weights = {n: w + rng.normal(0.0, 0.3, w.shape) for n, w in weights.items()}
    return weights


def batch(plan: Plan, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    cfg = plan.config
    seq = np.random.default_rng(seed).integers(0, cfg["vocab_size"], (cfg["batch_size"], cfg["block_size"] + 1))
    return seq[:, :-1].astype(np.int32), seq[:, 1:].astype(np.int32)


def torch_model(plan: Plan, weights: dict[str, np.ndarray], dtype=torch.float64) -> GPT2:
    model = GPT2.from_config(plan.config).to(dtype)
    load_weights(model, weights)
    return model


def assert_close(got, want, what: str, rtol: float = RTOL) -> None:
    """Relative to the largest magnitude of `want`: elements near zero need no own tolerance."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-300)
    assert err < rtol, f"{what}: relative error {err:.2e}"


def test_parameters_are_the_plans(plan):
    model = GPT2.from_config(plan.config)
    assert [(n, list(p.shape)) for n, p in model.named_parameters()] == \
        [(t["name"], t["shape"]) for t in plan.params]


@pytest.fixture(scope="module")
def unclipped_plan():
    return Plan(compile_model(ROOT / "model.py", TINY + ["grad_clip=0"], log=lambda *a: None).data, "t")


@pytest.fixture(scope="module")
def adamw_plan():
    return Plan(compile_model(ROOT / "model.py", TINY + ["optimizer=adamw", "weight_decay=0.1"],
                              log=lambda *a: None).data, "t")


@pytest.mark.parametrize("kind, variant", [("init", "plan"), ("wide", "plan"), ("wide", "unclipped_plan"),
                                           ("wide", "adamw_plan")])
def test_three_steps_agree_with_the_numpy_backend(request, kind, variant):
    plan, clipped = request.getfixturevalue(variant), variant != "unclipped_plan"
    # A larger learning rate than the seed's so that three updates move the weights measurably;
    # the schedule's scalars are runtime inputs, so the compiled graph is the same.
    cfg = dict(plan.optimizer, lr=1e-2)
    weights = weights_of(plan, kind)
    tokens, targets = batch(plan)

    be = NumpyBackend(plan, np.float64)
    for name, value in weights.items():
        be.set_tensor(name, value)
    model = torch_model(plan, weights)
    opt = make_optimizer(model, "exact", cfg)
    params = dict(model.named_parameters())
    tt, ty = torch.from_numpy(tokens).long(), torch.from_numpy(targets).long()

    norms = []
    for t in range(3):
        scalars = schedule.step_scalars(cfg, t)
        out = be.run("train", {"tokens": tokens, "targets": targets,
                               **{name: scalars[name] for name in optim.scalar_inputs(cfg)}})
        loss = model(tt, ty)
        loss.backward()
        assert_close(loss.item(), out["loss"], f"step {t + 1} loss")
        for name, p in params.items():
            assert_close(p.grad.numpy(), be.get_tensor(name, grad=True), f"step {t + 1} gradient of {name}")
        norm = opt.step()
        opt.zero_grad()
        assert_close(norm.item(), out["grad_norm"], f"step {t + 1} gradient norm")
        norms.append(float(out["grad_norm"]))
        for name, p in params.items():
            assert_close(p.detach().numpy(), be.get_tensor(name), f"{name} after update {t + 1}")
    # The updates themselves, not only the weights they moved. The key bias's gradient is round-off
    # (see without_key_bias), and how large depends on the formula: the fused attention's backward
    # (delta = rowsum(g * out)) leaves more of it than the explicit softmax's. Adam with eps=1e-8
    # turns that into updates near 1e-9 of the others, of either sign; they are checked to be that
    # small on both sides, and every other update to agree.
    for name, p in params.items():
        ours, theirs = be.get_tensor(name) - weights[name], p.detach().numpy() - weights[name]
        assert_close(without_key_bias(name, theirs), without_key_bias(name, ours), f"update of {name}")
        if name.endswith("attn.c_attn.bias"):
            C = ours.shape[0] // 3
            for update in (ours, theirs):
                assert np.abs(update[C:2 * C]).max() < 1e-8 * np.abs(update).max(), f"key bias update of {name}"
    if clipped:
        assert min(norms) > cfg["grad_clip"], "these weights are meant to exercise clipping"


@pytest.mark.parametrize("optimizer, clip", [("adam", 1.0), ("adam", 0.0), ("adamw", 1.0)])
def test_torch_optimizer_follows_the_same_schedule(plan, optimizer, clip):
    """The idiomatic optimizer agrees up to two documented differences: torch.optim.Adam adds eps
    after bias correction (graphgpt's Adam before; made negligible here) and clip_grad_norm_
    divides by norm + 1e-6 (a relative 1e-6 / norm). This checks the schedule, betas, clip and
    AdamW's decay of the matrices only, handed over, and clip 0 (no clipping) on both sides."""
    cfg = dict(plan.optimizer, optimizer=optimizer, weight_decay=0.1 if optimizer == "adamw" else 0.0,
               lr=1e-2, eps=1e-14, grad_clip=clip)
    weights = weights_of(plan, "wide")
    tokens, targets = (torch.from_numpy(a).long() for a in batch(plan))
    updates = {}
    for kind in ("exact", "torch"):
        model = torch_model(plan, weights)
        opt = make_optimizer(model, kind, cfg)
        for _ in range(3):
            train_step(model, opt, tokens, targets)
        updates[kind] = {n: without_key_bias(n, p.detach().numpy() - weights[n]) for n, p in model.named_parameters()}
    for name, delta in updates["torch"].items():
        assert_close(delta, updates["exact"][name], f"update of {name}", rtol=1e-6)


def without_key_bias(name: str, delta: np.ndarray) -> np.ndarray:
    """The key bias has zero gradient in exact arithmetic (softmax ignores a shift shared by all
    keys); with a tiny eps Adam scales its round-off up to steps of either sign, so skip it."""
    if not name.endswith("attn.c_attn.bias"):
        return delta
    C = delta.shape[0] // 3
    return np.concatenate([delta[:C], delta[2 * C:]])


def test_logits_without_targets(plan):
    weights = weights_of(plan, "wide")
    tokens, targets = (torch.from_numpy(a).long() for a in batch(plan))
    model = torch_model(plan, weights)
    logits = model(tokens)
    assert logits.shape == (*tokens.shape, plan.config["vocab_size"])
    assert_close(torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).item(),
                 model(tokens, targets).item(), "loss from logits")


def test_load_weights_rejects_foreign_names_and_shapes(plan):
    weights = weights_of(plan, "init")
    model = GPT2.from_config(plan.config)
    with pytest.raises(ValueError, match="missing.*lm_head.weight"):
        load_weights(model, {n: w for n, w in weights.items() if n != "lm_head.weight"})
    with pytest.raises(ValueError, match="wpe: shape"):
        load_weights(model, dict(weights, wpe=weights["wpe"][:-1]))


def test_bad_option_values(plan):
    model = GPT2.from_config(plan.config)
    with pytest.raises(ValueError, match="optimizer kind"):
        make_optimizer(model, "sgd")
    for kind in ("exact", "torch"):
        with pytest.raises(ValueError, match="adam or adamw, not sgd"):
            make_optimizer(model, kind, dict(optim.DEFAULTS, optimizer="sgd"))
    with pytest.raises(ValueError, match="precision"):
        use_precision("fp16")
    assert use_precision("bf16") is torch.bfloat16 and use_precision("fp32") is None


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_model_matches_eager(plan):
    """torch.compile changes kernels, not results: float32 loss and gradients agree closely."""
    weights = weights_of(plan, "wide")
    tokens, targets = (torch.from_numpy(a).long() for a in batch(plan))
    results = []
    for compiled in (False, True):
        model = torch_model(plan, weights, torch.float32)
        run = torch.compile(model) if compiled else model
        load_weights(run, weights)  # through the compile wrapper: names carry no _orig_mod prefix
        loss = run(tokens, targets)
        loss.backward()
        results.append((loss.item(), {n: p.grad.numpy().copy() for n, p in model.named_parameters()}))
    (eager_loss, eager_grads), (loss, grads) = results
    assert_close(loss, eager_loss, "compiled loss", rtol=1e-5)
    for name, g in grads.items():
        assert_close(g, eager_grads[name], f"compiled gradient of {name}", rtol=1e-4)
