"""python tools/plot.py RUN.jsonl [MORE.jsonl ...] --out report.html : a run's curves on one page.

Reads the JSONL logs of graphgpt.run's `--log` (and tools/recipe_torch.py's, which holds its
evaluations) and writes one self-contained HTML page: inline SVG drawn here, no script, nothing
fetched. Charts: the training loss and the evaluations' losses against steps and against training
time, the learning rate, the gradient norm and tokens/s against steps; every run in its colour,
with a legend and a table of the runs. A metric a run's log lacks is named under its chart, and so
are the points left out: a value not finite, or of a size no axis holds (a loss of 1e308).

Every drawn line carries `data-run` and `data-metric`, and every plot area its axes' domains and
pixel ranges (`data-x`, `data-y`), so a test can map each point back to the log's value.
"""
from __future__ import annotations

import html
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

from graphgpt import runlog  # noqa: E402
from graphgpt.errors import ArgumentParser, UserError, reported  # noqa: E402
from graphgpt.fsutil import atomic_write_text, unwritable  # noqa: E402
from graphgpt.monitor import GuardedStdout  # noqa: E402

GENERATOR = "graphgpt tools/plot.py"  # marks a page as this tool's: only such a page is replaced
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
# How each loss is drawn: (label, stroke width, dash pattern, opacity, marker radius)
STYLES = {"loss": ("training batch", 1.2, "", 0.45, 0),
          "train_loss": ("training windows (evaluation)", 1.6, "2 3", 1.0, 2.6),
          "val_loss": ("held out (evaluation)", 2.2, "7 4", 1.0, 3.2)}
LOG_SPREAD = 8  # a loss or gradient-norm axis turns logarithmic once its largest value is this many times its least
LOG_TICKS = 8  # at most about this many decades ticked on a logarithmic axis
# The magnitudes (and 0) a chart draws: past them an axis's arithmetic under- or overflows.
SMALLEST, LARGEST = 1e-300, 1e300
MAX_MARKERS = 80  # more evaluations than this on one line: the line alone


@dataclass
class Axis:
    lo: float
    hi: float
    px0: float  # the pixel of lo
    px1: float  # the pixel of hi
    log: bool = False

    def __call__(self, v: float) -> float:
        f = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo)) if self.log \
            else (v - self.lo) / (self.hi - self.lo)
        return self.px0 + f * (self.px1 - self.px0)

    def data(self) -> str:
        return f"{self.lo!r} {self.hi!r} {self.px0} {self.px1} {'log' if self.log else 'linear'}"

    def ticks(self) -> list[float]:
        return log_ticks(self.lo, self.hi) if self.log else linear_ticks(self.lo, self.hi)


def drawable(v: float) -> bool:
    return math.isfinite(v) and (v == 0 or SMALLEST <= abs(v) <= LARGEST)


def linear_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Multiples of 1, 2 or 5 times a power of ten, about `count` of them, from the first at or
    below `lo` to the first at or above `hi`; values that agree to 9 digits get an axis a tenth
    either side of them. Ticks are rounded to 12 significant digits, so that tiny ones stay apart."""
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi)):
        lo, hi = (lo - 1, hi + 1) if lo == 0 else (lo - abs(lo) / 10, hi + abs(hi) / 10)
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [float(f"{k * step:.12g}") for k in range(first, last + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks inside [lo, hi] at 1, 2 and 5 times powers of ten (fewer when many decades)."""
    span = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    decades = span[::math.ceil(len(span) / LOG_TICKS)]
    mantissas = (1, 2, 5) if len(decades) <= 3 else (1,)
    ticks = [m * 10.0 ** d for d in decades for m in mantissas if lo * (1 - 1e-9) <= m * 10.0 ** d <= hi * (1 + 1e-9)]
    if len(ticks) < 3:  # less than a decade: linear ticks read better, and are still true positions
        ticks = [t for t in linear_ticks(lo, hi, 4) if lo <= t <= hi]
    return ticks


def labels(ticks: list[float]) -> list[str]:
    """Tick labels in one notation for the whole axis: short, and no more digits than the ticks need."""
    top = max(abs(t) for t in ticks)
    if top >= 1e6 or 0 < top < 1e-2:
        def sci(v: float) -> str:
            mantissa, exponent = f"{v:.1e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}" if v else "0"
        return [sci(t) for t in ticks]
    if top >= 1e4:
        return [f"{t / 1e3:g}k" if t else "0" for t in ticks]
    return [f"{t:.4g}" for t in ticks]


def domain(values: list[float], from_zero: bool, may_log: bool) -> tuple[float, float, bool]:
    """(lo, hi, log) of an axis holding `values` (finite ones), with nice ends on a linear axis."""
    lo, hi = min(values), max(values)
    if may_log and lo > 0 and hi / lo >= LOG_SPREAD:
        return lo / 1.08, hi * 1.08, True
    if from_zero and lo >= 0:
        lo = 0.0
    ticks = linear_ticks(lo, hi)
    return ticks[0], ticks[-1], False


def wall_unit(seconds: float) -> tuple[str, float]:
    return ("h", 3600.0) if seconds >= 7200 else ("min", 60.0) if seconds >= 120 else ("s", 1.0)


@dataclass
class Line:
    run: int
    metric: str
    xs: list[float]
    ys: list[float]


class Chart:
    """One SVG chart: axes with ticks and labels, a grid, and lines."""
    LEFT, RIGHT, TOP, BOTTOM = 62, 16, 34, 44

    def __init__(self, title: str, xlabel: str, ylabel: str, width: int, height: int,
                 from_zero: bool = False, may_log: bool = False):
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.width, self.height, self.from_zero, self.may_log = width, height, from_zero, may_log
        self.lines: list[Line] = []
        self.notes: list[str] = []

    def add(self, line: Line) -> None:
        points = list(zip(line.xs, line.ys))
        kept = [(x, y) for x, y in points if drawable(x) and drawable(y)]
        if len(kept) < len(points):
            first = next(x for x, y in points if not (drawable(x) and drawable(y)))
            self.notes.append(f"run {line.run + 1}: {len(points) - len(kept)} {line.metric} point(s) not drawn "
                              f"(a value not finite, or outside the magnitudes {SMALLEST:g} to {LARGEST:g} a "
                              f"chart holds), the first at {self.xlabel} {first:g}")
        if kept:
            self.lines.append(Line(line.run, line.metric, [p[0] for p in kept], [p[1] for p in kept]))

    def svg(self) -> str:
        w, h = self.width, self.height
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" role="img" '
               f'aria-label="{esc(self.title)}">',
               f'<text class="title" x="{self.LEFT}" y="20">{esc(self.title)}</text>']
        if not self.lines:
            out.append(f'<text class="empty" x="{w / 2}" y="{h / 2}" text-anchor="middle">'
                       'no run logged this</text></svg>')
            return "".join(out)
        xs = [x for line in self.lines for x in line.xs]
        ys = [y for line in self.lines for y in line.ys]
        x_lo, x_hi, _ = domain(xs, from_zero=True, may_log=False)
        y_lo, y_hi, y_log = domain(ys, self.from_zero, self.may_log)
        x = Axis(x_lo, x_hi, self.LEFT, w - self.RIGHT)
        y = Axis(y_lo, y_hi, h - self.BOTTOM, self.TOP, y_log)
        out.append(f'<g class="plot" data-x="{x.data()}" data-y="{y.data()}">')
        out += self._axes(x, y)
        for line in self.lines:
            out += self._line(line, x, y)
        out.append("</g>")
        ylabel = self.ylabel + (" (log scale)" if y_log else "")
        out += [f'<text class="label" x="{(x.px0 + x.px1) / 2}" y="{h - 8}" text-anchor="middle">{esc(self.xlabel)}</text>',
                f'<text class="label" transform="translate(14 {(y.px0 + y.px1) / 2}) rotate(-90)" '
                f'text-anchor="middle">{esc(ylabel)}</text>', "</svg>"]
        return "".join(out)

    def _axes(self, x: Axis, y: Axis) -> list[str]:
        out = []
        for t, text in zip(x.ticks(), labels(x.ticks())):
            px = f"{x(t):.1f}"
            out += [f'<line class="grid" x1="{px}" x2="{px}" y1="{y.px1}" y2="{y.px0}"/>',
                    f'<text class="tick" x="{px}" y="{y.px0 + 15}" text-anchor="middle">{text}</text>']
        for t, text in zip(y.ticks(), labels(y.ticks())):
            py = f"{y(t):.1f}"
            out += [f'<line class="grid" x1="{x.px0}" x2="{x.px1}" y1="{py}" y2="{py}"/>',
                    f'<text class="tick" x="{x.px0 - 6}" y="{py}" dy="0.32em" text-anchor="end">{text}</text>']
        out.append(f'<path class="axis" d="M{x.px0},{y.px1}V{y.px0}H{x.px1}"/>')
        return out

    def _line(self, line: Line, x: Axis, y: Axis) -> list[str]:
        label, width, dash, opacity, radius = STYLES.get(line.metric, ("", 1.8, "", 1.0, 0))
        colour = COLOURS[line.run % len(COLOURS)]
        points = " ".join(f"{x(a):.2f},{y(b):.2f}" for a, b in thinned(line, x))
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        out = [f'<polyline class="series" data-run="{line.run}" data-metric="{line.metric}" points="{points}" '
               f'stroke="{colour}" stroke-width="{width}" stroke-opacity="{opacity}"{dashes}/>']
        if radius and len(line.xs) <= MAX_MARKERS:
            for a, b in zip(line.xs, line.ys):
                out.append(f'<circle cx="{x(a):.2f}" cy="{y(b):.2f}" r="{radius}" fill="{colour}">'
                           f'<title>run {line.run + 1} at {a:g}: {label} loss {b:.4f}</title></circle>')
        return out


def thinned(line: Line, x: Axis) -> list[tuple[float, float]]:
    """The points of `line` worth drawing: all of them up to a few per pixel column; past that,
    each column's first, lowest, highest and last point, in the line's order. The line looks the
    same (every spike stays), and a run of a million steps stays a page of a few thousand points."""
    points = list(zip(line.xs, line.ys))
    if len(points) <= 4 * abs(x.px1 - x.px0):
        return points
    columns: dict[int, list[int]] = {}
    for k, (a, _) in enumerate(points):
        columns.setdefault(int(x(a)), []).append(k)
    keep = set()
    for ks in columns.values():
        keep |= {ks[0], ks[-1], min(ks, key=lambda k: points[k][1]), max(ks, key=lambda k: points[k][1])}
    return [points[k] for k in sorted(keep)]


def esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def label_of(log: runlog.RunLog) -> str:
    return str(log.path)


def about(log: runlog.RunLog) -> list[str]:
    """What a log's header tells of its run (`run`, `plan`, ...), one "key value" each, for the
    legend; long values (a plan's digest) cut to their start."""
    def short(v: object) -> str:
        text = str(v)
        return text if len(text) <= 32 else text[:12] + "\u2026"
    out = []
    for key, value in log.header.items():
        if key == runlog.HEADER or value is None:
            continue
        inner = value.items() if isinstance(value, dict) else [("", value)]
        out.append(f"{key} " + ", ".join(f"{k} {short(v)}".strip() for k, v in inner))
    if log.cut_short:
        out.append("its last line was cut short (left out)")
    return out


def charts(logs: list[runlog.RunLog]) -> list[tuple[Chart, str]]:
    """(chart, its size class) for the page, each with every run that logged its metric."""
    longest = max((s for log in logs for s in log.wall_seconds() if drawable(s)), default=0.0)
    unit, per = wall_unit(longest)
    by_step = Chart("Loss by step", "step", "loss", 600, 360, may_log=True)
    by_time = Chart("Loss by training time", f"training time ({unit})", "loss", 600, 360, may_log=True)
    small = [("lr", Chart("Learning rate", "step", "learning rate", 400, 270, from_zero=True)),
             ("grad_norm", Chart("Gradient norm", "step", "global norm before clipping", 400, 270, may_log=True)),
             ("tokens_per_s", Chart("Throughput", "step", "tokens/s", 400, 270, from_zero=True))]
    for run, log in enumerate(logs):
        timed = log.has("ms")
        for metric in STYLES:
            if log.has(metric):
                by_step.add(Line(run, metric, *log.values(metric)))
                if timed:
                    xs, ys = log.values(metric, "seconds")
                    by_time.add(Line(run, metric, [s / per for s in xs], ys))
        if not timed:
            by_time.notes.append(f"run {run + 1} ({label_of(log)}) has no step times (ms)")
        for metric, chart in small:
            if log.has(metric):
                chart.add(Line(run, metric, *log.values(metric)))
            else:
                chart.notes.append(f"run {run + 1} ({label_of(log)}) has no {metric}")
    return [(by_step, "wide"), (by_time, "wide")] + [(chart, "narrow") for _, chart in small]


def summary(log: runlog.RunLog) -> list[str]:
    """The table's cells for a run: steps, last training loss, best held-out loss, training time."""
    steps = [r["step"] for r in log.records]
    last = next((r["loss"] for r in reversed(log.records) if "loss" in r), None)
    held = [r for r in log.records if "val_loss" in r and math.isfinite(r["val_loss"])]
    best = min(held, key=lambda r: r["val_loss"]) if held else None
    seconds = log.wall_seconds()[-1]
    unit, per = wall_unit(seconds)
    return [f"{min(steps)}&#8211;{max(steps)}", f"{last:.4f}" if last is not None else "&#8211;",
            f"{best['val_loss']:.4f} at step {best['step']}" if best else "&#8211;",
            f"{seconds / per:.3g} {unit}" if log.has("ms") else "&#8211;"]


def render(logs: list[runlog.RunLog]) -> str:
    rows = []
    for run, log in enumerate(logs):
        cells = "".join(f"<td>{c}</td>" for c in summary(log))
        rows.append(f'<tr class="run" data-run="{run}"><td><span class="swatch" '
                    f'style="background:{COLOURS[run % len(COLOURS)]}"></span>{esc(label_of(log))}'
                    f'<div class="about">{esc("; ".join(about(log)))}</div></td>{cells}</tr>')
    key = "".join(f'<span><svg xmlns="http://www.w3.org/2000/svg" width="34" height="10"><line x1="1" x2="33" y1="5" '
                  f'y2="5" stroke="#444" stroke-width="{width}" stroke-opacity="{max(opacity, 0.6)}"'
                  f'{f" stroke-dasharray={chr(34)}{dash}{chr(34)}" if dash else ""}/></svg>{esc(label)} loss</span>'
                  for label, width, dash, opacity, _ in STYLES.values())
    figures = []
    for chart, size in charts(logs):
        notes = "".join(f"<li>{esc(n)}</li>" for n in chart.notes)
        figures.append(f'<figure class="{size}">{chart.svg()}'
                       + (f'<figcaption><ul>{notes}</ul></figcaption>' if notes else "") + "</figure>")
    title = "Training curves: " + ", ".join(label_of(log) for log in logs)
    return PAGE.format(generator=GENERATOR, title=esc(title), rows="".join(rows), key=key,
                       figures="".join(figures))


PAGE = """<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" lang="en">
<head>
<meta charset="utf-8"/>
<meta name="generator" content="{generator}"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>{title}</title>
<style>
body {{ margin: 24px auto; max-width: 1240px; padding: 0 16px; background: #fbfbfc; color: #1d1f23;
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }}
h1 {{ font-size: 20px; margin: 0 0 12px; font-weight: 600; }}
table {{ border-collapse: collapse; margin-bottom: 8px; }}
th, td {{ text-align: left; padding: 4px 14px 4px 0; vertical-align: top; }}
th {{ font-weight: 600; color: #555; border-bottom: 1px solid #ddd; }}
td .about {{ color: #777; font-size: 12px; }}
.swatch {{ display: inline-block; width: 14px; height: 14px; border-radius: 3px; margin-right: 8px;
  vertical-align: -2px; }}
.key {{ color: #444; margin: 6px 0 14px; }}
.key span {{ margin-right: 22px; white-space: nowrap; }}
.key svg {{ vertical-align: middle; margin-right: 6px; }}
.charts {{ display: grid; grid-template-columns: repeat(6, 1fr); gap: 14px; }}
figure {{ margin: 0; background: #fff; border: 1px solid #e3e5e8; border-radius: 6px; padding: 6px; }}
figure.wide {{ grid-column: span 3; }}
figure.narrow {{ grid-column: span 2; }}
figure > svg {{ width: 100%; height: auto; display: block; }}
figcaption ul {{ margin: 2px 0 4px; padding-left: 18px; color: #777; font-size: 12px; }}
svg text {{ font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; fill: #333; }}
svg .title {{ font-size: 14px; font-weight: 600; }}
svg .tick {{ font-size: 11px; fill: #666; }}
svg .label {{ font-size: 12px; fill: #444; }}
svg .empty {{ font-size: 13px; fill: #999; }}
svg .grid {{ stroke: #eceef1; stroke-width: 1; }}
svg .axis {{ stroke: #888; stroke-width: 1; fill: none; }}
svg .series {{ fill: none; stroke-linejoin: round; stroke-linecap: round; }}
@media (max-width: 900px) {{ figure.wide, figure.narrow {{ grid-column: span 6; }} }}
</style>
</head>
<body>
<h1>Training curves</h1>
<table class="legend">
<tr><th>run</th><th>steps</th><th>last training loss</th><th>best held-out loss</th><th>training time</th></tr>
{rows}
</table>
<div class="key">{key}</div>
<div class="charts">{figures}</div>
</body>
</html>
"""


def check_out(out: Path) -> None:
    """--out may be new, or a page this tool wrote; anything else is left as it is."""
    if out.is_symlink() or out.is_dir() or (out.exists() and not out.is_file()):
        kind = "a symbolic link" if out.is_symlink() else "a directory" if out.is_dir() else "not a regular file"
        raise UserError(f"--out {out} is {kind}; give the name of the page to write")
    if out.exists():
        try:
            with open(out, "rb") as f:
                start = f.read(4096)
        except OSError as e:
            raise UserError(f"--out {out}: cannot read it to check it is this tool's page: {e.strerror}") from None
        if f'content="{GENERATOR}"'.encode() not in start:
            raise UserError(f"--out {out} exists and is not a page tools/plot.py wrote; it is left as it is")
    problem = unwritable(out.parent)
    if problem:
        raise UserError(f"--out {out}: {problem}")


def plot(paths: list[Path], out: Path) -> None:
    seen = {}
    for path in paths:
        if path.resolve() in seen:
            raise UserError(f"{path} is given twice (as {seen[path.resolve()]} before)")
        seen[path.resolve()] = path
    check_out(out)
    logs = [runlog.read(path) for path in paths]
    page = render(logs)
    existed = out.exists()
    try:
        atomic_write_text(out, page)
    except OSError as e:
        raise UserError(f"cannot write --out {out}: {e.strerror or e}; "
                        + ("the page there is as it was" if existed else "nothing was written")) from None
    print(f"wrote {out} ({len(logs)} run{'s' if len(logs) > 1 else ''}, "
          f"{sum(len(log.records) for log in logs):,} records)")


def main(argv=None) -> int:
    sys.stdout = GuardedStdout(sys.stdout)
    p = ArgumentParser(prog="tools/plot.py", description=(
        "Draw runs' JSONL logs (graphgpt.run --log, tools/recipe_torch.py --log) as one self-contained "
        "HTML page: losses against steps and training time, learning rate, gradient norm, tokens/s."))
    p.add_argument("logs", type=Path, nargs="+", metavar="RUN.jsonl", help="a run's log; several are overlaid")
    p.add_argument("--out", type=Path, help="the page to write (default: the first log's name with .html); "
                   "an existing file is replaced only if this tool wrote it")
    args = p.parse_args(argv)
    return reported(plot, args.logs, args.out or args.logs[0].with_suffix(".html"))


if __name__ == "__main__":
    sys.exit(main())
