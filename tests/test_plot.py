"""tools/plot.py: a run's log as one self-contained page of hand-drawn SVG.

The page parses as XML; every drawn point, mapped back through its chart's axes, is a value of the
log; several runs give several lines and legend entries; bad input is one line and exit 2 with
nothing written; where Chromium is installed, a headless screenshot shows the runs' colours.
"""
import itertools
import json
import math
import os
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib

import pytest

from tests.conftest import COMPILE, DEEP_JSON, ROOT, TINY, assert_user_error, run_cli, sets

TOOL = str(ROOT / "tools" / "plot.py")
NS = {"h": "http://www.w3.org/1999/xhtml", "s": "http://www.w3.org/2000/svg"}
COLOURS = ("#1f77b4", "#d62728", "#2ca02c")  # tools/plot.py's first three, the runs' colours


@pytest.fixture(scope="module")
def graphgpt_log(tmp_path_factory):
    """A real run's log: steps with their times, and evaluations of both splits."""
    tmp = tmp_path_factory.mktemp("plot")
    plan, log = tmp / "plan", tmp / "run.jsonl"
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(plan), *sets(TINY))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("-m", "graphgpt.run", "--plan", str(plan), "--steps", "8", "--eval-every", "4", "--eval-batches", "2",
                   "--val-fraction", "0.1", "--backend", "numpy", "--generate", "0", "--log", str(log))
    assert proc.returncode == 0, proc.stderr
    return log


def recipe_log(path, steps=(0, 4, 8), header=None):
    """What tools/recipe_torch.py logs: evaluations only, no learning rate, norm or times."""
    lines = [json.dumps(header)] if header else []
    for k, step in enumerate(steps):
        record = {"step": step, **({"loss": 4.5 - 0.1 * k} if step else {}),
                  "train_loss": 4.6 - 0.2 * k, "val_loss": 4.7 - 0.15 * k}
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


def records(path):
    return [r for r in map(json.loads, path.read_text().splitlines()) if "step" in r]


def plot(*args):
    return run_cli(TOOL, *map(str, args))


def page(path) -> ET.Element:
    return ET.fromstring(path.read_text(encoding="utf-8"))


def axis(text: str):
    """A plot area's data-x or data-y: pixel -> value."""
    lo, hi, px0, px1, scale = text.split()
    lo, hi, px0, px1 = map(float, (lo, hi, px0, px1))
    if scale == "log":
        return lambda px: 10 ** (math.log10(lo) + (px - px0) / (px1 - px0) * (math.log10(hi) - math.log10(lo)))
    return lambda px: lo + (px - px0) / (px1 - px0) * (hi - lo)


def drawn(root: ET.Element) -> dict[str, list[tuple[int, str, list[tuple[float, float]]]]]:
    """Chart title -> (run, metric, points mapped back to values) of each line it draws."""
    out = {}
    for svg in root.iter(f"{{{NS['s']}}}svg"):
        title = svg.find("s:text[@class='title']", NS)
        area = svg.find("s:g[@class='plot']", NS)
        if title is None:
            continue
        lines = out.setdefault(title.text, [])
        if area is None:
            continue
        x, y = axis(area.get("data-x")), axis(area.get("data-y"))
        for line in area.findall("s:polyline", NS):
            points = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
            lines.append((int(line.get("data-run")), line.get("data-metric"), [(x(a), y(b)) for a, b in points]))
    return out


def close(points, expected, x_span, y_span):
    """The drawn points are the expected ones, to the half pixel-hundredth the page rounds to."""
    assert len(points) == len(expected)
    for (a, b), (ea, eb) in zip(points, expected):
        assert abs(a - ea) <= 1e-4 * x_span and abs(b - eb) <= 1e-4 * max(y_span, abs(eb)), ((a, b), (ea, eb))


def test_every_point_is_a_value_of_the_log(tmp_path, graphgpt_log):
    out = tmp_path / "report.html"
    proc = plot(graphgpt_log, "--out", out)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.strip() == f"wrote {out} (1 run, 9 records)"
    text = out.read_text(encoding="utf-8").replace('xmlns="http://www.w3.org/', "")  # names, never fetched
    for needle in ("http:", "https:", "<script", " src=", "<link", "@import", "url("):
        assert needle not in text, needle
    root = page(out)
    charts = drawn(root)
    assert set(charts) == {"Loss by step", "Loss by training time", "Learning rate", "Gradient norm", "Throughput"}
    logged = records(graphgpt_log)
    seconds, total = [], 0.0
    for r in logged:
        total += r.get("ms", 0.0)
        seconds.append(total / 1e3)
    expect = {("Loss by step", m): [(r["step"], r[m]) for r in logged if m in r] for m in ("loss", "train_loss", "val_loss")}
    expect |= {("Loss by training time", m): [(s, r[m]) for s, r in zip(seconds, logged) if m in r]
               for m in ("loss", "train_loss", "val_loss")}
    expect |= {(title, m): [(r["step"], r[m]) for r in logged if m in r]
               for title, m in (("Learning rate", "lr"), ("Gradient norm", "grad_norm"), ("Throughput", "tokens_per_s"))}
    seen = set()
    for title, lines in charts.items():
        for run, metric, points in lines:
            assert run == 0
            want = expect[title, metric]
            xs, ys = [p[0] for p in want], [p[1] for p in want]
            close(points, want, max(xs) - min(xs) or 1, max(ys) - min(ys))
            seen.add((title, metric))
    assert seen == set(expect)
    assert "training time (s)" in ET.tostring(root, encoding="unicode")  # a short run's time is in seconds
    assert [r for r in logged if "val_loss" in r] and [r for r in logged if "ms" in r]


def test_several_runs_overlaid_with_a_legend(tmp_path, graphgpt_log):
    torch_run = recipe_log(tmp_path / "torch.jsonl")
    named = recipe_log(tmp_path / "named.jsonl", (0, 2, 6),
                       header={"graphgpt_log": 1, "run": "20261206T101500Z-5f2a9c01", "plan": "ab" * 32, "seed": 3})
    out = tmp_path / "both.html"
    proc = plot(graphgpt_log, torch_run, named, "--out", out)
    assert proc.returncode == 0, proc.stderr
    root = page(out)
    legend = root.findall(".//h:tr[@class='run']", NS)
    assert [int(tr.get("data-run")) for tr in legend] == [0, 1, 2]
    assert str(torch_run) in "".join(legend[1].itertext())
    assert "run 20261206T101500Z-5f2a9c01" in "".join(legend[2].itertext())
    assert f"plan {'ab' * 6}\u2026; seed 3" in "".join(legend[2].itertext())
    by_step = drawn(root)["Loss by step"]
    assert {(run, metric) for run, metric, _ in by_step} == {
        (0, "loss"), (0, "train_loss"), (0, "val_loss"), (1, "loss"), (1, "train_loss"), (1, "val_loss"),
        (2, "loss"), (2, "train_loss"), (2, "val_loss")}
    for run, path in ((1, torch_run), (2, named)):
        (points,) = [p for r, m, p in by_step if (r, m) == (run, "val_loss")]
        want = [(r["step"], r["val_loss"]) for r in records(path)]
        close(points, want, 8, 1)
    # The recipe's logs have no step times, rates or norms: drawn only for graphgpt's run, and said.
    assert {run for run, _, _ in drawn(root)["Learning rate"]} == {0}
    text = ET.tostring(root, encoding="unicode")
    assert f"run 2 ({torch_run}) has no step times (ms)" in text and f"run 3 ({named}) has no lr" in text


def test_a_long_run_draws_each_pixel_columns_extremes_only(tmp_path):
    """50,000 steps: a few thousand points a line, each one of the log's, the spike among them."""
    log, n, spike = tmp_path / "long.jsonl", 50_000, 12_345
    with open(log, "w") as f:
        for step in range(1, n + 1):
            f.write(json.dumps({"step": step, "loss": 9.0 if step == spike else 3 + (step % 7) / 10,
                                "ms": 1.0}) + "\n")
    out = tmp_path / "long.html"
    proc = plot(log, "--out", out)
    assert proc.returncode == 0, proc.stderr
    (points,) = [p for r, m, p in drawn(page(out))["Loss by step"] if m == "loss"]
    assert 1000 < len(points) < 2500
    slack = 1e-4 * n  # what the page's rounding to 1/100 pixel leaves of a step
    assert abs(points[0][0] - 1) <= slack and abs(points[-1][0] - n) <= slack
    assert all(a <= b + slack for (a, _), (b, _) in zip(points, points[1:]))
    assert {round(b, 3) for _, b in points} <= {round(3 + k / 10, 3) for k in range(7)} | {9.0}
    top = max(points, key=lambda p: p[1])
    assert abs(top[0] - spike) <= slack and abs(top[1] - 9.0) < 1e-3


def test_a_crashed_runs_cut_last_line_is_left_out_and_said(tmp_path):
    log = recipe_log(tmp_path / "crashed.jsonl")
    log.write_text(log.read_text() + '{"step": 9, "loss": 4.')
    out = tmp_path / "crashed.html"
    proc = plot(log, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "its last line was cut short" in out.read_text()
    (points,) = [p for r, m, p in drawn(page(out))["Loss by step"] if m == "loss"]
    assert len(points) == 2


def test_non_finite_values_are_not_drawn_and_said(tmp_path):
    log = tmp_path / "diverged.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": v, "ms": 1.0}) + "\n"
                           for s, v in ((1, 2.0), (2, 1.5), (3, float("nan")), (4, float("inf")))))
    out = tmp_path / "diverged.html"
    assert plot(log, "--out", out).returncode == 0
    (points,) = [p for r, m, p in drawn(page(out))["Loss by step"] if m == "loss"]
    close(points, [(1, 2.0), (2, 1.5)], 3, 0.5)
    assert "run 1: 2 loss point(s) not drawn (a value not finite, or outside the magnitudes 1e-300 to 1e+300 " \
           "a chart holds), the first at step 3" in out.read_text()


ABSURD = {  # records appended to a real run's log (its steps 1 to 8), and what of them is said not drawn
    "a loss of 401 digits": (['{"step": 9, "loss": 1' + "0" * 400 + "}"], "Loss by step", "1 loss point(s)", "step 9"),
    "step times summing past float's range": (['{"step": 9, "loss": 2.0, "ms": 1e308}', '{"step": 10, "loss": 2.0, "ms": 1e308}'],
                                              "Loss by training time", "2 loss point(s)", "training time (s) 1e+305"),
    "a loss of 1e308": (['{"step": 9, "loss": 1e308}'], "Loss by step", "1 loss point(s)", "step 9"),
}


@pytest.mark.parametrize("absurd", ABSURD, ids=list(ABSURD))
def test_absurd_values_are_not_drawn_and_said_and_the_rest_of_the_run_is(tmp_path, graphgpt_log, absurd):
    lines, title, points, first = ABSURD[absurd]
    log = tmp_path / "run.jsonl"
    log.write_text(graphgpt_log.read_text() + "".join(line + "\n" for line in lines))
    out = tmp_path / "run.html"
    proc = plot(log, "--out", out)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert f"run 1: {points} not drawn" in out.read_text() and f"the first at {first}</li>" in out.read_text()
    logged = records(graphgpt_log)
    xs = ([total / 1e3 for total in itertools.accumulate(r.get("ms", 0.0) for r in logged)]
          if title == "Loss by training time" else [r["step"] for r in logged])
    want = [(x, r["loss"]) for x, r in zip(xs, logged) if "loss" in r]
    (points,) = [p for _, m, p in drawn(page(out))[title] if m == "loss"]
    close(points, want, max(x for x, _ in want), max(v for _, v in want) - min(v for _, v in want))


def test_values_of_any_scale_get_an_axis_that_fits_them(tmp_path):
    """Losses equal to 12 digits, gradient norms across 400 decades: drawn at their values, on
    axes of a few ticks; a learning rate too small for any axis is said not drawn."""
    log = tmp_path / "run.jsonl"
    losses, norms = (1e-13, 2e-13, 1.5e-13), (1e-200, 1.0, 1e200)
    log.write_text("".join(json.dumps({"step": s, "loss": v, "grad_norm": n, "lr": 5e-324}) + "\n"
                           for s, v, n in zip((1, 2, 3), losses, norms)))
    out = tmp_path / "run.html"
    proc = plot(log, "--out", out)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    charts = drawn(page(out))
    close(charts["Loss by step"][0][2], list(zip((1, 2, 3), losses)), 2, 1e-13)
    decades = [(x, math.log10(y)) for x, y in charts["Gradient norm"][0][2]]  # to the page's 1/100 pixel
    assert all(abs(x - s) < 1e-3 and abs(d - math.log10(n)) < 0.05 for (x, d), s, n in zip(decades, (1, 2, 3), norms))
    (norm_chart,) = [svg for svg in page(out).iter(f"{{{NS['s']}}}svg") if svg.get("aria-label") == "Gradient norm"]
    y_ticks = [text for text in norm_chart.iter(f"{{{NS['s']}}}text") if text.get("class") == "tick" and text.get("text-anchor") == "end"]
    assert 3 <= len(y_ticks) <= 9, [tick.text for tick in y_ticks]
    assert charts["Learning rate"] == [] and "run 1: 3 lr point(s) not drawn" in out.read_text()


def test_a_report_is_replaced_but_nothing_else_is(tmp_path):
    log = recipe_log(tmp_path / "run.jsonl")
    proc = plot(log)  # the default --out: beside the log
    assert proc.returncode == 0 and (tmp_path / "run.html").is_file(), proc.stderr
    recipe_log(log, (0, 4, 8, 12))
    assert plot(log).returncode == 0 and "12" in (tmp_path / "run.html").read_text()
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my notes</html>")
    assert_user_error(plot(log, "--out", mine), "is not a page tools/plot.py wrote")
    assert mine.read_text() == "<html>my notes</html>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.html", "run.html", "run.jsonl"]  # no temporary left


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("", "has no records with a step"),
    ('{"graphgpt_log": 1}\n', "has no records with a step"),
    ("step,loss\n1,2.0\n", ":1: not JSON"),
    ('{"step": 1, "loss": 2.0}\n[1, 2]\n', ":2: a JSON list"),
    ('{"step": "one", "loss": 2.0}\n', 'step "one" is not a whole number'),
    ('{"step": -1, "loss": 2.0}\n', "step -1 is not a whole number"),
    ('{"step": 1.5, "loss": 2.0}\n', "step 1.5 is not"),
    ('{"step": 1, "loss": "low"}\n', 'loss "low" is not a number'),
    ('{"step": 1, "lr": true}\n', "lr true is not a number"),
    (b"\xff\xfe\x00bin", "is not UTF-8 text"),
    ('{"step": 1, "loss": 2.0}\n' + DEEP_JSON + "\n", ":2: not JSON (arrays or objects nested too deeply)"),
    ('{"step": 1, "loss": 1' + "0" * 5000 + "}\n", ":1: not JSON (an integer of more digits than Python converts)"),
    ('{"step": 9007199254740993, "loss": 2.0}\n', "step 9007199254740993 is not a whole number from 0 to 2**53"),
])
def test_bad_logs_are_one_line_and_nothing_is_written(tmp_path, content, message):
    log = tmp_path / "run.jsonl"
    if isinstance(content, bytes):
        log.write_bytes(content)
    elif content is not None:
        log.write_text(content)
    assert_user_error(plot(log, "--out", tmp_path / "out.html"), message)
    assert not (tmp_path / "out.html").exists()


def test_bad_paths_are_one_line(tmp_path):
    log = recipe_log(tmp_path / "run.jsonl")
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "link.html").symlink_to(tmp_path / "elsewhere.html")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert_user_error(plot(tmp_path / "dir", "--out", tmp_path / "o.html"), "is a directory, not a run's log")
    assert_user_error(plot(fifo, "--out", tmp_path / "o.html"), "is not a regular file")
    assert_user_error(plot(log, log, "--out", tmp_path / "o.html"), "is given twice")
    assert_user_error(plot(log, "--out", tmp_path / "dir"), "is a directory")
    assert_user_error(plot(log, "--out", tmp_path / "link.html"), "is a symbolic link")
    assert_user_error(plot(log, "--out", tmp_path / "file" / "o.html"), "is not a directory")
    assert_user_error(plot("--out", tmp_path / "o.html"), "the following arguments are required")
    assert not (tmp_path / "o.html").exists() and not (tmp_path / "elsewhere.html").exists()


def test_a_read_only_filesystem_is_one_line_and_keeps_the_old_report(tmp_path, small_fs):
    log = recipe_log(tmp_path / "run.jsonl")
    out = small_fs / "report.html"
    assert plot(log, "--out", out).returncode == 0
    before = out.read_bytes()
    remount = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True, text=True)
    assert remount.returncode == 0, remount.stderr
    assert_user_error(plot(log, "--out", out), f"--out {out}", "read-only")
    assert out.read_bytes() == before and [p.name for p in small_fs.iterdir()] == ["report.html"]


def test_a_full_disk_is_one_line_and_keeps_the_old_report(tmp_path, small_fs):
    from tests.conftest import fill
    log = recipe_log(tmp_path / "run.jsonl")
    out = small_fs / "report.html"
    assert plot(log, "--out", out).returncode == 0
    before = out.read_bytes()
    recipe_log(log, range(0, 4000, 4))  # a page larger than what is left
    fill(small_fs)
    assert_user_error(plot(log, "--out", out), f"cannot write --out {out}", "the page there is as it was")
    assert out.read_bytes() == before
    assert not [p for p in small_fs.iterdir() if p.name not in ("filler", "filler_tail", "report.html")]


def png_rgb(path):
    """(width, height, rows of RGB bytes) of an 8-bit RGB(A) PNG: the chunks joined, inflated and
    unfiltered (PNG's five row filters)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6)
        elif kind == b"IDAT":
            idat += body
    bpp = 3 if colour == 2 else 4
    raw, stride, prev, rows = zlib.decompress(idat), w * bpp, bytearray(w * bpp), []
    for y in range(h):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(v for i, v in enumerate(line) if i % 4 != 3))
        prev = line
    return w, h, rows


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_a_headless_browser_draws_every_run(tmp_path, graphgpt_log):
    runs = [graphgpt_log, recipe_log(tmp_path / "torch.jsonl"), recipe_log(tmp_path / "other.jsonl", (0, 3, 5))]
    out, shot = tmp_path / "report.html", tmp_path / "report.png"
    assert plot(*runs, "--out", out).returncode == 0
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,900",
                           out.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr
    w, h, rows = png_rgb(shot)
    assert (w, h) == (1200, 900)
    pixels = {}
    for row in rows:
        for x in range(0, len(row), 3):
            pixels[row[x:x + 3]] = pixels.get(row[x:x + 3], 0) + 1
    background = max(pixels.values())
    assert background < 0.9 * w * h  # not a blank page
    for colour in COLOURS:  # each run's lines (and legend swatch) are on screen in its colour
        assert pixels.get(bytes.fromhex(colour[1:]), 0) > 100, colour
