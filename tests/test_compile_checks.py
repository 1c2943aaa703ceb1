"""Compile-time settings are range-checked, the learning-rate schedules warm up, and `compile --out`
never loses work: bad input is one line and exit code 2, and nothing is touched."""
import json
import shutil

import pytest

from graphgpt import optim, plan as plan_io, schedule
from graphgpt.errors import UserError
from tests.conftest import COMPILE, ROOT, TINY, run_cli



def compile_cli(out, *settings, model=ROOT / "model.py"):
    return run_cli(COMPILE, str(model), "--out", str(out), *[a for s in settings for a in ("--set", s)])


def assert_refused(proc, fragment):
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0], lines[0]


# ---- range checks ------------------------------------------------------------------------------
BAD_SETTINGS = [
    (["lr=nan"], "--set lr=nan: lr must be a finite number > 0"),
    (["lr=inf"], "lr must be a finite number > 0"),
    (["lr=0"], "lr must be a finite number > 0"),
    (["min_lr=-1e-5"], "min_lr must be a finite number with 0 <= min_lr <= lr"),
    (["min_lr=1e-3"], "min_lr must be a finite number with 0 <= min_lr <= lr"),
    (["lr=1e-6"], "min_lr=1e-05 (the default): min_lr must be"),  # now above lr
    (["min_lr=nan"], "min_lr must be a finite number"),
    (["beta1=1"], "beta1 must be a finite number in [0, 1)"),
    (["beta1=-0.1"], "beta1 must be a finite number in [0, 1)"),
    (["beta2=1.5"], "beta2 must be a finite number in [0, 1)"),
    (["beta2=nan"], "beta2 must be a finite number in [0, 1)"),
    (["eps=0"], "eps must be a finite number > 0"),
    (["eps=inf"], "eps must be a finite number > 0"),
    (["grad_clip=-1"], "grad_clip must be a finite number >= 0"),
    (["grad_clip=inf"], "grad_clip must be a finite number >= 0"),
    (["optimizer=adamw", "weight_decay=-0.1"], "weight_decay must be a finite number >= 0"),
    (["optimizer=adamw", "weight_decay=nan"], "weight_decay must be a finite number >= 0"),
    (["decay_steps=0"], "decay_steps must be an integer >= 1"),
    (["decay_steps=inf"], "--set decay_steps: 'inf' is not an integer"),
    (["warmup_steps=-1"], "warmup_steps must be an integer >= 0 and < decay_steps (10000)"),
    (["warmup_steps=10000"], "warmup_steps must be an integer >= 0 and < decay_steps (10000)"),
    (["grad_accum=0"], "--set grad_accum=0: grad_accum must be an integer >= 1"),
    (["optimizer=sgd"], "optimizer must be adam or adamw"),
    (["lr_schedule=step"], "lr_schedule must be linear or cosine"),
    (["n_layer=0"], "--set n_layer=0: n_layer must be an integer >= 1"),
    (["n_head=0"], "n_head must be an integer >= 1"),
    (["n_embd=0"], "n_embd must be an integer >= 1"),
    (["block_size=0"], "block_size must be an integer >= 1"),
    (["batch_size=-2"], "batch_size must be an integer >= 1"),
    (["vocab_size=-1"], "vocab_size must be an integer >= 0"),
    (["n_embd=100"], "n_embd 100 is not divisible by n_head 6"),
]


@pytest.mark.parametrize("settings,message", BAD_SETTINGS, ids=[" ".join(s) for s, _ in BAD_SETTINGS])
def test_a_setting_out_of_range_is_refused(tmp_path, settings, message):
    assert_refused(compile_cli(tmp_path / "plan", *settings), message)
    assert not (tmp_path / "plan").exists()


def test_the_model_files_config_is_checked_and_named(tmp_path):
    text = (ROOT / "model.py").read_text()
    model = tmp_path / "model.py"
    model.write_text(text.replace("    n_layer=6,", "    n_layer=0,", 1))
    assert_refused(compile_cli(tmp_path / "plan", model=model), "model.py: CONFIG n_layer=0: n_layer must be an integer >= 1")
    model.write_text(text.replace("    vocab_size=0,", "    vocab_size=0,\n    spare=0.5,", 1))
    assert_refused(compile_cli(tmp_path / "plan", "spare=nan", model=model),
                   "--set spare=nan: spare must be a finite number")
    assert_refused(compile_cli(tmp_path / "plan", "dropout=nan"),
                   "--set dropout=nan: dropout must be a probability in [0, 1)")


# ---- learning-rate schedules -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_both_schedules_warm_up_then_decay_to_min_lr(kind):
    cfg = dict(optim.DEFAULTS, lr=1.0, min_lr=0.1, lr_schedule=kind, warmup_steps=10, decay_steps=110)
    lr = [schedule.lr_at(cfg, t) for t in range(130)]
    assert lr[:10] == [pytest.approx((t + 1) / 10) for t in range(10)]
    assert lr[10] == 1.0                                    # lr when the warmup ends
    assert lr[60] == pytest.approx(0.55)                    # halfway to min_lr
    assert all(a > b for a, b in zip(lr[10:110], lr[11:111]))
    assert lr[110:] == [0.1] * 20


def test_the_linear_schedule_without_warmup_is_the_seeds():
    cfg = dict(optim.DEFAULTS, decay_steps=100)
    lr, min_lr, n = cfg["lr"], cfg["min_lr"], 100
    for t in range(120):
        assert schedule.lr_at(cfg, t) == (lr - (lr - min_lr) * t / n if t < n else min_lr)


# ---- compile --out ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "tiny"
    proc = compile_cli(out, *TINY)
    assert proc.returncode == 0, proc.stderr
    return out


def snapshot(root) -> dict:
    """Every entry under root (folders too), with the bytes of each file."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def test_out_at_a_directory_that_is_no_plan_is_left_alone(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    (checkout / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (checkout / "notes.txt").write_text("precious")
    before = snapshot(tmp_path)
    assert_refused(compile_cli(checkout, *TINY), "not a graphgpt plan")
    assert snapshot(tmp_path) == before


def test_out_at_a_plan_with_files_of_another_kind_is_left_alone(tmp_path, tiny_plan):
    out = tmp_path / "plan"
    shutil.copytree(tiny_plan, out)
    (out / "weights.bin").write_bytes(b"\0" * 8)
    before = snapshot(tmp_path)
    assert_refused(compile_cli(out, *TINY), "not a graphgpt plan")
    assert snapshot(tmp_path) == before


def test_out_at_a_file_is_left_alone(tmp_path):
    path = tmp_path / "plan"
    path.write_text("a file")
    before = snapshot(tmp_path)
    assert_refused(compile_cli(path, *TINY), "is a file")
    assert snapshot(tmp_path) == before


def test_compiling_over_a_plan_replaces_it_whole(tmp_path, tiny_plan):
    out = tmp_path / "plan"
    shutil.copytree(tiny_plan, out)
    data = json.loads((out / "plan.json").read_text())
    (out / "plan.json").write_text(json.dumps(dict(data, schema_version=0)))  # an old plan compiles over too
    (out / "kernels" / "stale.cu").write_text("// of the old plan")
    proc = compile_cli(out, *TINY)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(out) == snapshot(tiny_plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan"]  # no staging or old directory left


def test_compiling_into_an_empty_directory(tmp_path, tiny_plan):
    out = tmp_path / "plan"
    out.mkdir()
    assert compile_cli(out, *TINY).returncode == 0
    assert snapshot(out) == snapshot(tiny_plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan"]


def test_a_failed_compile_keeps_the_old_plan(tmp_path, tiny_plan):
    out = tmp_path / "plan"
    shutil.copytree(tiny_plan, out)
    broken = tmp_path / "broken.py"
    broken.write_text("CONFIG = dict(batch_size=2, block_size=4, vocab_size=0)\n\n"
                      "def forward(idx, cfg):\n    return undefined_name\n")
    before = snapshot(tmp_path)
    assert_refused(compile_cli(out, model=broken), "NameError")
    assert snapshot(tmp_path) == before


def test_a_failed_swap_keeps_the_old_plan(tmp_path, tiny_plan, monkeypatch):
    out = tmp_path / "plan"
    shutil.copytree(tiny_plan, out)
    before = snapshot(tmp_path)
    data = json.loads((out / "plan.json").read_text())
    real_replace = plan_io.os.replace

    def failing_replace(src, dst):
        if ".staging" in str(src):
            raise OSError("disk full")
        real_replace(src, dst)
    monkeypatch.setattr(plan_io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        plan_io.save(data, out, {"report.txt": "new"})
    assert snapshot(tmp_path) == before


def test_save_refuses_what_compile_refuses(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        plan_io.save({}, tmp_path / "file", {})
    assert (tmp_path / "file").read_text() == "x"
