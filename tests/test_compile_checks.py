"""Compile-time settings are range-checked, the learning-rate schedules warm up, and `compile --out`
never loses work: bad input is one line and exit code 2, and nothing is touched."""
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from graphgpt import model_size, optim, plan as plan_io, schedule
from graphgpt.compiler import compile_model
from graphgpt.errors import UserError
from graphgpt.model_file import load_model, settings as model_settings
from tests.conftest import COMPILE, DEEP_JSON, ROOT, TINY, fill, run_cli, sets



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


# models/llama.py's own keys, on a small LLaMA
LLAMA_SMALL = ["n_layer=1", "n_head=4", "n_kv_head=2", "n_embd=32", "n_hidden=64", "vocab_size=0", "block_size=8"]
LLAMA_BAD = [
    (["n_kv_head=0"], "--set n_kv_head=0: n_kv_head must be an integer >= 1"),
    (["n_hidden=-5"], "--set n_hidden=-5: n_hidden must be an integer >= 0 (0: the model file's rule)"),
    (["rope_base=-2"], "--set rope_base=-2: rope_base must be a number > 0"),
    (["norm_eps=0"], "--set norm_eps=0: norm_eps must be a number > 0"),
    (["n_kv_head=3"], "causal_attention: 3 key/value heads do not divide 4 query heads"),
    (["head_dim=-8"], "--set head_dim=-8: head_dim must be an integer >= 0 (0: n_embd / n_head)"),
    (["attention_bias=2"], "--set attention_bias=2: attention_bias must be 0 or 1"),
    (["mlp_bias=-1"], "--set mlp_bias=-1: mlp_bias must be 0 or 1"),
    (["rope_scaling=yarn"], "--set rope_scaling=yarn: rope_scaling must be none or linear or llama3"),
    (["rope_scaling=linear", "rope_factor=0"], "--set rope_factor=0: rope_factor must be a number > 0"),
    (["rope_scaling=llama3", "rope_low_freq_factor=4"],
     "llama.py: CONFIG rope_high_freq_factor=4.0: rope_high_freq_factor must be a number above rope_low_freq_factor 4.0"),
    (["rope_scaling=llama3", "rope_original_max_position=0"],
     "--set rope_original_max_position=0: rope_original_max_position must be an integer >= 1"),
]
OUT_OF_RANGE = ([("model.py", s, m) for s, m in BAD_SETTINGS]
                + [("models/llama.py", LLAMA_SMALL + s, m) for s, m in LLAMA_BAD])


@pytest.mark.parametrize("model,settings,message", OUT_OF_RANGE,
                         ids=[f"{model} {s[-1]}" for model, s, _ in OUT_OF_RANGE])
def test_a_setting_out_of_range_is_refused(tmp_path, model, settings, message):
    assert_refused(compile_cli(tmp_path / "plan", *settings, model=ROOT / model), message)
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
    proc = compile_cli(out, *TINY, "lr=1e-3")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "plan.json").read_text())["optimizer"]["lr"] == 1e-3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan"]  # no staging or old directory left
    assert compile_cli(out, *TINY).returncode == 0
    assert snapshot(out) == snapshot(tiny_plan)


def test_the_plan_lists_its_files_in_its_manifest(tiny_plan):
    listed = json.loads((tiny_plan / plan_io.MANIFEST).read_text())["files"]
    on_disk = {str(p.relative_to(tiny_plan)) for p in tiny_plan.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {plan_io.MANIFEST}
    assert {"plan.json", "report.txt"} <= set(listed)
    for rel, entry in listed.items():
        data = (tiny_plan / rel).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_out_that_merely_looks_like_a_plan_is_left_alone(tmp_path, tiny_plan):
    """A plan.json, a report.txt and a graphs/ holding a file of the user's: no manifest, so no plan
    graphgpt wrote; the user's file survives."""
    out = tmp_path / "mine"
    (out / "graphs").mkdir(parents=True)
    (out / "plan.json").write_bytes((tiny_plan / "plan.json").read_bytes())
    (out / "report.txt").write_text("my notes on the plan")
    (out / "graphs" / "sketch.svg").write_text("<svg/>")
    before = snapshot(tmp_path)
    assert_refused(compile_cli(out, *TINY), f"--out {out} is not a graphgpt plan as compiled (it holds no manifest.json)")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("change,reason", [
    (lambda out: (out / "graphs" / "notes.txt").write_text("mine"), "graphs/notes.txt is not a file of the plan"),
    (lambda out: (out / "extra").mkdir(), "extra is not a file of the plan"),
    (lambda out: (out / "report.txt").write_text("edited"), "report.txt was changed after it was compiled"),
    (lambda out: (out / "kernels" / "reduce.cu").unlink(), "kernels/reduce.cu is missing"),
    (lambda out: (out / "manifest.json").write_text("{"), "its manifest.json cannot be read"),
    (lambda out: (out / "manifest.json").write_text(DEEP_JSON), "its manifest.json cannot be read"),
    (lambda out: (out / "link").symlink_to(out / "plan.json"), "link is a symbolic link"),
], ids=["a file added", "a folder added", "a file edited", "a file removed", "a damaged manifest",
        "a manifest nested too deeply", "a link"])
def test_out_at_a_plan_that_was_changed_is_left_alone(tmp_path, tiny_plan, change, reason):
    out = tmp_path / "plan"
    shutil.copytree(tiny_plan, out)
    change(out)
    before = snapshot(tmp_path)
    assert_refused(compile_cli(out, *TINY), reason)
    assert snapshot(tmp_path) == before


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


def test_directories_named_like_temporaries_are_not_removed(tmp_path, tiny_plan):
    """Only a directory holding graphgpt's marker is removed as a staging or set-aside directory."""
    out = tmp_path / "plan"
    shutil.copytree(tiny_plan, out)
    for name in (".plan.x1.staging", ".plan.x2.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text("the user's")
    assert compile_cli(out, *TINY).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".plan.x1.staging", ".plan.x2.old", "plan"]
    assert (tmp_path / ".plan.x2.old" / "keep.txt").read_text() == "the user's"


@pytest.mark.parametrize("sig,status,line", [(signal.SIGTERM, 143, "terminated by SIGTERM"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_during_a_compile_keeps_the_old_plan(tmp_path, tiny_plan, sig, status, line):
    out, ready = tmp_path / "plan", tmp_path / "ready"
    shutil.copytree(tiny_plan, out)
    model = tmp_path / "slow.py"  # signals when the compile is under way, then takes its time
    model.write_text(f"import pathlib, time\npathlib.Path({str(ready)!r}).touch()\ntime.sleep(60)\n")
    before = snapshot(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    compile_ = subprocess.Popen([sys.executable, COMPILE, str(model), "--out", str(out)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not ready.exists():
        assert compile_.poll() is None, compile_.communicate()
        time.sleep(0.05)
    ready.unlink()
    compile_.send_signal(sig)
    _, err = compile_.communicate(timeout=60)
    assert compile_.returncode == status and err == f"{line}: --out {out} left as it was\n", err
    assert snapshot(tmp_path) == before


def test_what_a_killed_compile_left_is_removed(tmp_path, tiny_plan):
    """A compile killed mid-swap leaves its staging directory and the old plan set aside; the next
    compile removes both, since their marker names a writer that is gone. A live writer's stays."""
    gone = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    out = tmp_path / "plan"
    shutil.copytree(tiny_plan, out)
    for name, pid in ((".plan.k1.staging", gone), (".plan.k2.old", gone), (".plan.k3.staging", os.getpid())):
        shutil.copytree(tiny_plan, tmp_path / name / "plan")
        (tmp_path / name / plan_io.TEMPORARY_MARKER).write_text(f"graphgpt temporary beside plan, pid {pid}\n")
    assert compile_cli(out, *TINY).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".plan.k3.staging", "plan"]


@pytest.mark.parametrize("room", [0, 96 << 10], ids=["full", "full halfway through the plan"])
def test_a_full_disk_keeps_the_old_plan(small_fs, room):
    out = small_fs / "plan"
    assert compile_cli(out, *TINY).returncode == 0
    if room:  # the staging directory is made and some files are written before the disk is full
        free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
        (small_fs / "filler").write_bytes(b"\0" * (free - room))
    else:
        with contextlib.suppress(OSError):  # fill's last file may find no room even to be created: full already
            fill(small_fs)
    before = snapshot(small_fs)
    assert_refused(compile_cli(out, *TINY, "lr=1e-3"), f"cannot write the plan to {out}: No space left on device; "
                                                        f"the old plan is kept")
    assert snapshot(small_fs) == before  # no staging directory left either


def test_a_read_only_filesystem_keeps_the_old_plan(small_fs):
    out = small_fs / "plan"
    assert compile_cli(out, *TINY).returncode == 0
    before = snapshot(small_fs)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    assert_refused(compile_cli(out, *TINY, "lr=1e-3"), f"cannot write the plan to {out}: Read-only file system; "
                                                        f"the old plan is kept")
    assert snapshot(small_fs) == before


def test_save_refuses_what_compile_refuses(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        plan_io.save({}, tmp_path / "file", {})
    assert (tmp_path / "file").read_text() == "x"


# ---- model sizes -------------------------------------------------------------------------------
def test_the_size_estimate_is_the_default_models(tiny_plan):
    data = json.loads((ROOT / "compiled" / "plan.json").read_text())
    params = sum(math.prod(t["shape"]) for t in data["tensors"] if t["kind"] == "param")
    assert model_size.parameters(data["config"]) == params
    assert model_size.arena_lower_bound(data["config"]) <= data["arena"]["bytes"]


@pytest.mark.parametrize("settings,message", [
    (["n_layer=12345678901234567890"], "the model has 2.19e+25 parameters and needs at least 3.505e+17 GB of arena, "
                                       "more than the 141 GB of the largest device it targets"),
    (["n_embd=1000000", "n_head=8"], "the model has 7.2e+13 parameters"),
    (["block_size=10000000000"], "more than the 141 GB"),
    (["batch_size=100000000000"], "more than the 141 GB"),
], ids=["20-digit n_layer", "n_embd 1e6", "block_size 1e10", "batch_size 1e11"])
def test_a_model_too_large_for_the_device_is_refused_before_tracing(settings, message):
    started = time.perf_counter()
    with pytest.raises(UserError, match=re.escape(message)):
        compile_model(ROOT / "model.py", settings, log=lambda line: None)
    assert time.perf_counter() - started < 1.0


def test_the_device_memory_is_a_stated_target(tmp_path):
    assert_refused(compile_cli(tmp_path / "p", *TINY, "n_layer=12345678901234567890"), "141 GB")
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "p"), "--device-memory", "0.0001", *sets(TINY))
    assert_refused(proc, "more than the 0.0001 GB of the largest device it targets (--device-memory)")
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "p"), "--device-memory", "nan")
    assert_refused(proc, "--device-memory: 'nan' is not a size in GB > 0")
    assert not (tmp_path / "p").exists()


def test_the_compiled_arena_is_checked_against_the_device(tmp_path):
    """A model whose CONFIG does not say its size (no n_layer) is checked once planned."""
    text = (ROOT / "model.py").read_text()
    model = tmp_path / "custom.py"
    model.write_text(text.replace("for i in range(cfg[\"n_layer\"])", "for i in range(2)").replace("    n_layer=6,\n", ""))
    tiny = [s for s in TINY if not s.startswith("n_layer")]
    proc = run_cli(COMPILE, str(model), "--out", str(tmp_path / "p"), "--device-memory", "0.0002", *sets(tiny))
    assert_refused(proc, "the plan's arena is 0.0002")
    assert re.search(r"the plan's arena is 0\.000\d+ GB, more than the 0\.0002 GB", proc.stderr), proc.stderr


@pytest.mark.parametrize("setting", ["n_layer=1e30", "n_layer=2.5", "batch_size=1e3", "decay_steps=1e4"])
def test_an_integer_key_takes_digits_only(tmp_path, setting):
    key, value = setting.split("=")
    assert_refused(compile_cli(tmp_path / "p", setting), f"--set {key}: '{value}' is not an integer (digits only)")


def test_a_head_too_wide_for_decoding_is_named(tmp_path):
    assert_refused(compile_cli(tmp_path / "p", "n_embd=8192", "n_head=1", "n_layer=1", "block_size=8", "batch_size=2"),
                   "decoding sums a head's 8192 dimensions in shared memory, which holds 49152 bytes")


@pytest.mark.parametrize("model, settings", [
    ("llama", ["n_layer=2", "n_head=4", "n_kv_head=2", "n_embd=32", "n_hidden=0", "tie_weights=0"]),
    ("llama", ["n_layer=3", "n_head=4", "n_kv_head=1", "n_embd=64", "n_hidden=96", "tie_weights=1"]),
    ("llama", ["n_layer=2", "n_head=4", "n_kv_head=2", "n_embd=30", "head_dim=6", "n_hidden=40", "tie_weights=0",
               "attention_bias=1", "mlp_bias=1"]),
    ("speedrun", ["n_layer=2", "n_head=4", "n_kv_head=2", "n_embd=32", "n_hidden=0", "tie_weights=0"]),
])
def test_a_model_file_counts_its_own_parameters(model, settings):
    """models/llama.py's and models/speedrun.py's parameters(cfg) is what their forward declares,
    so the size check before tracing is exact for them, where GPT-2's formula is not."""
    path = ROOT / "models" / f"{model}.py"
    data = compile_model(path, settings + ["vocab_size=128", "block_size=8", "batch_size=2"], log=lambda *a: None).data
    declared = sum(math.prod(t["shape"]) for t in data["tensors"] if t["kind"] == "param")
    module = load_model(path)
    assert module.parameters(data["config"]) == declared
    assert model_size.parameters(data["config"]) != declared  # GPT-2's count would have been wrong


def test_a_llama_too_large_is_refused_before_tracing_by_its_own_count():
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"the model has 2\.18e\+27 parameters and needs at least 3\.49e\+19 GB of arena"):
        compile_model(ROOT / "models" / "llama.py", ["n_layer=10000000000000000000"], log=lambda *a: None)
    assert time.perf_counter() - started < 10


def test_a_parameter_count_that_raises_is_one_line_naming_its_line(tmp_path):
    model = tmp_path / "counted.py"
    model.write_text((ROOT / "model.py").read_text() + "\n\ndef parameters(cfg):\n    return cfg['n_layer'] // 0\n")
    assert_refused(compile_cli(tmp_path / "plan", *TINY, model=model), "counted.py:77: ZeroDivisionError")
    assert not (tmp_path / "plan").exists()


# ---- what --set reads as a number, and what float32 holds --------------------------------------
@pytest.mark.parametrize("setting", ["n_layer=1_0", "n_layer=+1", "n_layer= 1", "n_layer=1 ", "n_layer=\u0663",
                                     "n_layer=1\n", "decay_steps=１０"])
def test_an_integer_key_takes_ascii_digits_only(setting):
    key, value = setting.split("=")
    with pytest.raises(UserError, match=re.escape(f"--set {key}: {value!r} is not an integer (digits only)")):
        compile_model(ROOT / "model.py", TINY + [setting], log=lambda *a: None)


@pytest.mark.parametrize("setting", ["lr=1_0", "lr=\u0663", "lr= 1e-3", "eps=1e-8_0", "lr=0x10", "lr=1e", "lr=."])
def test_a_float_key_takes_a_decimal_or_scientific_number(setting):
    key, value = setting.split("=")
    with pytest.raises(UserError, match=re.escape(f"--set {key}: {value!r} is not a number")):
        compile_model(ROOT / "model.py", TINY + [setting], log=lambda *a: None)


def test_numbers_as_written_are_read():
    module = load_model(ROOT / "model.py")
    _, opt = model_settings(module, ROOT / "model.py", TINY + ["lr=+3E-4", "min_lr=.5e-5", "beta1=0.", "decay_steps=0100"])
    assert (opt["lr"], opt["min_lr"], opt["beta1"], opt["decay_steps"]) == (3e-4, 0.5e-5, 0.0, 100)


@pytest.mark.parametrize("settings,message", [
    (["lr=1e39", "min_lr=0"], "--set lr=1e39: lr must be a finite number > 0 (float32's normal range: 1.2e-38 to 3.4e+38)"),
    (["lr=1e-39", "min_lr=0"], "--set lr=1e-39: lr must be a finite number > 0 (float32's normal range"),
    (["eps=1e-50"], "--set eps=1e-50: eps must be a finite number > 0 (float32's normal range"),
    (["grad_clip=1e-50"], "--set grad_clip=1e-50: grad_clip must be a finite number >= 0 (0 disables clipping; "
                          "a threshold in float32's normal range"),
    (["optimizer=adamw", "weight_decay=1e39"], "--set weight_decay=1e39: weight_decay must be a finite number >= 0"),
    (["dropout=-1e39"], "--set dropout=-1e39: dropout must be a probability in [0, 1)"),
])
def test_a_float_setting_must_be_held_by_float32(tmp_path, settings, message):
    assert_refused(compile_cli(tmp_path / "plan", *TINY, *settings), message)
    assert not (tmp_path / "plan").exists()


def test_a_model_files_own_float_must_be_held_by_float32(tmp_path):
    model = tmp_path / "model.py"
    model.write_text((ROOT / "model.py").read_text().replace("    vocab_size=0,", "    vocab_size=0,\n    spare=0.5,", 1))
    with pytest.raises(UserError, match=re.escape("--set spare=-4e38: spare must be a finite number (float32's range")):
        compile_model(model, TINY + ["spare=-4e38"], log=lambda *a: None)
    llama = ROOT / "models" / "llama.py"
    for setting in ("rope_base=1e39", "norm_eps=1e-40"):
        with pytest.raises(UserError, match=re.escape(f"--set {setting}: {setting.split('=')[0]} must be a number > 0 "
                                                      "(float32's normal range: 1.2e-38 to 3.4e+38)")):
            compile_model(llama, LLAMA_SMALL + [setting], log=lambda *a: None)


@pytest.mark.parametrize("setting", ["batch_size=True", "n_layer=True", "block_size=False", "vocab_size=True"])
def test_a_bool_is_no_integer_in_a_models_config(tmp_path, setting):
    key, value = setting.split("=")
    model = tmp_path / "model.py"
    model.write_text(re.sub(rf"\n    {key}=\d+,", f"\n    {key}={value},", (ROOT / "model.py").read_text(), count=1))
    assert f"{key}={value}," in model.read_text()
    settings = [s for s in TINY if not s.startswith(key)]
    assert_refused(compile_cli(tmp_path / "plan", *settings, model=model),
                   f"model.py: CONFIG {key}={value}: {key} must be an integer >= ")


@pytest.mark.parametrize("key", ["grad_accum", "decay_steps", "warmup_steps"])
def test_a_bool_is_no_integer_in_the_optimizers_settings(key):
    with pytest.raises(UserError, match=f"{key}=True: {key} must be an integer"):
        optim.check(dict(optim.DEFAULTS, **{key: True}))


@pytest.mark.parametrize("settings,message", [
    (["rope_factor=2"], "--set rope_factor=2: rope_factor is read only with rope_scaling linear or llama3, "
                        "not with llama.py: CONFIG rope_scaling=none"),
    (["rope_scaling=linear", "rope_low_freq_factor=2"],
     "--set rope_low_freq_factor=2: rope_low_freq_factor is read only with rope_scaling llama3, not with "
     "--set rope_scaling=linear"),
    (["rope_high_freq_factor=8"], "rope_high_freq_factor is read only with rope_scaling llama3"),
    (["rope_original_max_position=64"], "rope_original_max_position is read only with rope_scaling llama3"),
])
def test_a_rope_scaling_parameter_without_its_scaling_is_refused(tmp_path, settings, message):
    assert_refused(compile_cli(tmp_path / "plan", *LLAMA_SMALL, *settings, model=ROOT / "models" / "llama.py"), message)


def test_a_rope_scaling_parameter_with_its_scaling_is_taken():
    llama = ROOT / "models" / "llama.py"
    cfg, _ = model_settings(load_model(llama), llama, LLAMA_SMALL + ["rope_scaling=linear", "rope_factor=2"])
    assert (cfg["rope_scaling"], cfg["rope_factor"]) == ("linear", 2.0)


def test_a_model_file_not_named_as_python_source_is_one_line(tmp_path):
    for name in ("m.txt", "m"):
        shutil.copy(ROOT / "model.py", tmp_path / name)
        assert_refused(compile_cli(tmp_path / "plan", *TINY, model=tmp_path / name),
                       f"model file {tmp_path / name} is not named as Python source: a model file's name ends in .py")
    assert not (tmp_path / "plan").exists() and not (tmp_path / "__pycache__").exists()
