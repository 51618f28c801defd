"""``report.html``: one self-contained page about a run -- its Pareto front, a summary per stage,
and a per-layer view of every exported model.

The page is static HTML with inline SVG and a few lines of inline script (tooltips follow the
pointer; a counter of script errors is kept in ``body[data-js-errors]``); a Content-Security-Policy
forbids every fetch, so it opens the same offline, from a mail attachment or a CI artefact. Every
value from the run (names, ids, metrics) is HTML-escaped.

A stage is a `StageSummary`; `search_stage` summarises a plain search from its store. A staged
pipeline passes one summary per stage (`write_report(..., stages=[...])`).
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .export.manifest import ManifestError, read_manifest, tritune_version
from .export.runs import RunData, load_run
from .store import TrialRecord

#: Colours of the sparsity pattern families in the per-layer charts.
PATTERN_COLOURS = {
    "dense": "#9aa5b1", "unstructured": "#e4572e", "nm": "#17bebb", "block": "#4c6ef5", "channel": "#f2a541",
    "kernel_pattern": "#9c36b5", "gather_scatter": "#2f9e44",
}
_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


@dataclass(frozen=True)
class StageSummary:
    """One stage of a run for the report: trial counts by status, costly evaluations, the size of
    its front, the best value of each objective, wall time, and free-form ``details``."""

    name: str
    trials: int
    complete: int
    infeasible: int
    failed: int
    evaluations: int
    front_size: int
    best: dict[str, float] = field(default_factory=dict)
    wall_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def search_stage(run: RunData) -> StageSummary:
    """The summary of a plain search stage, from its store."""
    records = run.records
    counts = {s: sum(r.status == s for r in records) for s in ("complete", "infeasible", "failed")}
    best = {}
    for o in run.problem.objectives:
        values = [r.metrics[o.metric] for r in records if r.status == "complete" and o.metric in r.metrics
                  and not math.isnan(r.metrics[o.metric])]
        if values:
            best[o.metric] = max(values) if o.direction == "maximize" else min(values)
    times = [(r.started, r.finished) for r in records if r.finished > 0]
    wall = max(f for _, f in times) - min(s for s, _ in times) if times else None
    return StageSummary("search", len(records), counts["complete"], counts["infeasible"], counts["failed"],
                        counts["complete"] + counts["failed"], len(run.front), best, wall,
                        {"strategy": run.job.strategy, "budget": run.job.budget, "batch size": run.job.batch_size, "seed": run.job.seed})


def pipeline_stages(run: RunData) -> list[StageSummary]:
    """One summary per finished stage of a staged run (none for a plain search), from the
    stage records its store keeps."""
    from .stages.state import StageLog
    from .store import TrialStore

    if run.job.stages is None:
        return []
    with TrialStore(run.run_dir / "trials.db", readonly=True) as store:
        records = StageLog(store).records()
    out = []
    for rec in records:
        s = rec.summary
        if rec.name == "search":
            base = search_stage(run)
            out.append(StageSummary("search", base.trials, base.complete, base.infeasible, base.failed, base.evaluations,
                                    base.front_size, base.best, rec.seconds, base.details))
        elif rec.name == "refine":
            trials = []
            for cid in s.get("finalists", []):
                db = run.run_dir / "refine" / str(cid) / "trials.db"
                if db.is_file():
                    with TrialStore(db, readonly=True) as sub:
                        trials += [r for r in sub.all() if r.status != "running"]
            counts = {k: sum(r.status == k for r in trials) for k in ("complete", "infeasible", "failed")}
            out.append(StageSummary("refine", len(trials), counts["complete"], counts["infeasible"], counts["failed"],
                                    counts["complete"] + counts["failed"], 0, {}, rec.seconds,
                                    {"finalists": ", ".join(map(str, s.get("finalists", [])))}))
        elif rec.name == "finetune":
            models = s.get("models", [])
            best = {"accuracy": max(m["accuracy"] for m in models)} if models else {}
            out.append(StageSummary("finetune", len(models), len(models), 0, 0, len(models), 0, best, rec.seconds,
                                    {m["candidate_id"]: f"{_num(m['inherited_accuracy'])} -> {_num(m['accuracy'])} % "
                                                        f"({_num(m['epochs'])} epochs, {m['method']})" for m in models}))
        elif rec.name == "front":
            out.append(StageSummary("front", int(s.get("models", 0)), int(s.get("models", 0)), 0, 0, 0, len(s.get("front", [])), {},
                                    rec.seconds, {"target": s.get("target"), "knee": s.get("knee")}))
        else:
            out.append(StageSummary(rec.name, 0, 0, 0, 0, 0, 0, {}, rec.seconds, {k: v for k, v in s.items() if not isinstance(v, (list, dict))}))
    return out


def final_front_svg(final: Mapping[str, Any], width: int = 660, height: int = 380) -> str:
    """SVG of a staged run's final models: accuracy of the exported file against latency measured
    on the target; the front joined, the knee ringed, each model's inherited-to-fine-tuned path
    from its search score drawn as a faint line."""
    models = [m for m in final.get("models", []) if isinstance(m.get("accuracy"), (int, float)) and isinstance(m.get("latency_ms"), (int, float))]
    if not models:
        return f'<svg class="final" width="{width}" height="80" role="img"><text x="10" y="40">no measured model</text></svg>'
    front_ids = {m["candidate_id"] for m in final.get("front", [])}
    xs = [float(m["latency_ms"]) for m in models]
    ys = [float(m["accuracy"]) for m in models] + [float(m["search_metrics"]["accuracy"]) for m in models
                                                   if isinstance(m.get("search_metrics", {}).get("accuracy"), (int, float))]
    frame = _Frame.fit(xs, ys, width, height, pad=0.08)
    sx, sy = frame.sx, frame.sy
    out = frame.open("final", "final front", "latency measured on the target, ms (lower is better)",
                     "accuracy of the exported file, % (higher is better)")
    line = sorted((sx(float(m["latency_ms"])), sy(float(m["accuracy"]))) for m in models if m["candidate_id"] in front_ids)
    if len(line) > 1:
        out.append('<polyline fill="none" stroke="#d6336c" stroke-width="1.5" points="' + " ".join(f"{a:.1f},{b:.1f}" for a, b in line) + '"/>')
    for m in models:
        cx, cy = sx(float(m["latency_ms"])), sy(float(m["accuracy"]))
        searched = m.get("search_metrics", {}).get("accuracy")
        if isinstance(searched, (int, float)):
            out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{sy(float(searched)):.1f}" y2="{cy:.1f}" stroke="#9aa5b1" stroke-dasharray="3 3"/>')
        on = m["candidate_id"] in front_ids
        knee = m["candidate_id"] == final.get("knee")
        tip = (f"candidate {m['candidate_id']}: exported accuracy {_num(m['accuracy'])} %, latency {_num(m['latency_ms'])} ms, "
               f"fine-tuned {_num(m.get('finetuned_accuracy'))} %, search {_num(searched)} %" + ("; knee" if knee else ""))
        out.append(f'<g class="final-point{" on-front" if on else ""}{" knee" if knee else ""}" data-candidate="{_e(m["candidate_id"])}">'
                   f'<title>{_e(tip)}</title>')
        if knee:
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="9" fill="none" stroke="#111" stroke-width="1.5"/>')
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{4.5 if on else 3.5}" fill="{"#d6336c" if on else "#b8bcc6"}"/></g>')
    out.append(f'<g class="legend" transform="translate({frame.left + 10} {frame.top + 10})">'
               '<circle cx="5" cy="0" r="4.5" fill="#d6336c"/><text x="14" y="4">final front</text>'
               '<circle cx="100" cy="0" r="3.5" fill="#b8bcc6"/><text x="110" y="4">other fine-tuned</text>'
               '<line x1="215" x2="215" y1="-7" y2="7" stroke="#9aa5b1" stroke-dasharray="3 3"/><text x="222" y="4">from the search score</text></g>')
    out.append("</svg>")
    return "".join(out)


def final_table(final: Mapping[str, Any]) -> str:
    rows = []
    for m in final.get("front", []):
        rows.append([f"<code>{_e(m['candidate_id'])}</code>", _num(m.get("accuracy")), _num(m.get("latency_ms")),
                     _num(m.get("latency_spread"), 3), _num(m.get("finetuned_accuracy")), _num(m.get("search_metrics", {}).get("accuracy")),
                     "knee" if m["candidate_id"] == final.get("knee") else ""])
    return _table(["candidate", "accuracy %", "latency ms", "spread", "fine-tuned %", "search %", ""], rows, "final-table")


# ----- small helpers -----------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}"
    return _e(value)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.ceil(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _family(pattern: str) -> str:
    from ..spaces.compression import parse_pattern

    try:
        return parse_pattern(str(pattern)).family
    except ValueError:
        return "dense"


# ----- plots -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Frame:
    """A plot area: data ranges (padded) mapped onto SVG coordinates."""

    x0: float
    x1: float
    y0: float
    y1: float
    width: int
    height: int
    left: int = 70
    right: int = 20
    top: int = 20
    bottom: int = 50

    @classmethod
    def fit(cls, xs: Sequence[float], ys: Sequence[float], width: int, height: int, pad: float = 0.05) -> "_Frame":
        def padded(lo: float, hi: float) -> tuple[float, float]:
            return lo - pad * (hi - lo or abs(lo) or 1.0), hi + pad * (hi - lo or abs(hi) or 1.0)

        return cls(*padded(min(xs), max(xs)), *padded(min(ys), max(ys)), width, height)

    @property
    def pw(self) -> int:
        return self.width - self.left - self.right

    @property
    def ph(self) -> int:
        return self.height - self.top - self.bottom

    def sx(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * self.pw

    def sy(self, v: float) -> float:
        return self.top + (1 - (v - self.y0) / (self.y1 - self.y0)) * self.ph

    def open(self, cls: str, label: str, x_label: str, y_label: str) -> list[str]:
        """The ``<svg>`` start, the plot area, grid, ticks and axis labels."""
        left, top, pw, ph, width, height = self.left, self.top, self.pw, self.ph, self.width, self.height
        out = [f'<svg class="{cls}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
               f'role="img" aria-label="{_e(label)}">',
               f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fbfbfd" stroke="#ccd"/>']
        for t in _nice_ticks(self.x0, self.x1):
            out.append(f'<line x1="{self.sx(t):.1f}" x2="{self.sx(t):.1f}" y1="{top}" y2="{top + ph}" stroke="#eee"/>'
                       f'<text class="tick" x="{self.sx(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{_num(t)}</text>')
        for t in _nice_ticks(self.y0, self.y1):
            out.append(f'<line x1="{left}" x2="{left + pw}" y1="{self.sy(t):.1f}" y2="{self.sy(t):.1f}" stroke="#eee"/>'
                       f'<text class="tick" x="{left - 6}" y="{self.sy(t) + 4:.1f}" text-anchor="end">{_num(t)}</text>')
        out.append(f'<text class="axis" x="{left + pw / 2}" y="{height - 10}" text-anchor="middle">{_e(x_label)}</text>'
                   f'<text class="axis" transform="translate(16 {top + ph / 2}) rotate(-90)" text-anchor="middle">{_e(y_label)}</text>')
        return out


# ----- the front ---------------------------------------------------------------------------------
def _tooltip(r: TrialRecord, metrics: Sequence[str], extra: str = "") -> str:
    values = ", ".join(f"{m} {_num(r.metrics.get(m))}" for m in metrics)
    return f"candidate {r.candidate.id} (trial {r.number}): {values}{extra}"


def front_svg(run: RunData, exported: Iterable[str] = (), width: int = 660, height: int = 420) -> str:
    """SVG scatter of every complete trial (grey), the front (red, joined), the knee (ringed) and
    exported models (black squares) over the first two objectives (the trial number when there
    is one). Each point has a ``<title>`` naming the candidate and its metrics."""
    problem = run.problem
    metrics = list(problem.metrics)
    done = [r for r in run.records if r.status == "complete" and all(m in r.metrics for m in metrics)]
    exported = set(exported)
    if len(metrics) >= 2:
        xm, ym = metrics[1], metrics[0]
        x_of = lambda r: float(r.metrics[xm])  # noqa: E731
        x_label = f"{xm} ({'lower' if problem.directions[1] == 'minimize' else 'higher'} is better)"
    else:
        xm, ym = "trial", metrics[0]
        x_of = lambda r: float(r.number)  # noqa: E731
        x_label = "trial"
    y_of = lambda r: float(r.metrics[ym])  # noqa: E731
    y_label = f"{ym} ({'higher' if problem.directions[0] == 'maximize' else 'lower'} is better)"
    points = [(x_of(r), y_of(r)) for r in done if math.isfinite(x_of(r)) and math.isfinite(y_of(r))]
    if not points:
        return f'<svg class="front" width="{width}" height="80" role="img"><text x="10" y="40">no complete trial to plot</text></svg>'
    frame = _Frame.fit([p[0] for p in points], [p[1] for p in points], width, height)
    sx, sy = frame.sx, frame.sy
    out = frame.open("front", "Pareto front", x_label, y_label)
    front_ids = {r.number for r in run.front}
    for r in done:
        if r.number in front_ids:
            continue
        out.append(f'<circle class="trial-point" cx="{sx(x_of(r)):.1f}" cy="{sy(y_of(r)):.1f}" r="3" fill="#b8bcc6">'
                   f'<title>{_e(_tooltip(r, metrics))}</title></circle>')
    line = sorted((sx(x_of(r)), sy(y_of(r))) for r in run.front)
    if len(metrics) == 2 and len(line) > 1:
        out.append('<polyline fill="none" stroke="#d6336c" stroke-width="1.5" points="' + " ".join(f"{a:.1f},{b:.1f}" for a, b in line) + '"/>')
    knee_number = None if run.knee is None else run.knee.number
    for rank, r in enumerate(run.front):
        cx, cy = sx(x_of(r)), sy(y_of(r))
        marks = (" knee" if r.number == knee_number else "") + (" exported" if r.candidate.id in exported else "")
        extra = f"; front rank {rank}" + ("; knee" if r.number == knee_number else "") + ("; exported" if r.candidate.id in exported else "")
        out.append(f'<g class="front-point{marks}" data-candidate="{_e(r.candidate.id)}" data-rank="{rank}"><title>{_e(_tooltip(r, metrics, extra))}</title>')
        if r.number == knee_number:
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="9" fill="none" stroke="#111" stroke-width="1.5"/>')
        if r.candidate.id in exported:
            out.append(f'<rect x="{cx - 6:.1f}" y="{cy - 6:.1f}" width="12" height="12" fill="none" stroke="#111" stroke-width="1.5"/>')
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" fill="#d6336c"/></g>')
    out.append(f'<g class="legend" transform="translate({frame.left + 10} {frame.top + 10})">'
               '<circle cx="5" cy="0" r="3" fill="#b8bcc6"/><text x="14" y="4">trials</text>'
               '<circle cx="70" cy="0" r="4.5" fill="#d6336c"/><text x="80" y="4">front</text>'
               '<circle cx="135" cy="0" r="9" fill="none" stroke="#111"/><text x="150" y="4">knee</text>'
               '<rect x="190" y="-6" width="12" height="12" fill="none" stroke="#111"/><text x="208" y="4">exported</text></g>')
    out.append("</svg>")
    return "".join(out)


# ----- tables ------------------------------------------------------------------------------------
def _table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


def stages_table(stages: Sequence[StageSummary]) -> str:
    rows = []
    for s in stages:
        best = ", ".join(f"{_e(k)} {_num(v)}" for k, v in s.best.items()) or "–"
        details = ", ".join(f"{_e(k)} {_e(v)}" for k, v in s.details.items())
        rows.append([_e(s.name), str(s.trials), str(s.complete), str(s.infeasible), str(s.failed), str(s.evaluations),
                     str(s.front_size), best, _num(s.wall_s, 3) + (" s" if s.wall_s is not None else ""), details])
    return _table(["stage", "trials", "complete", "infeasible", "failed", "costly evaluations", "front", "best", "wall time", "settings"],
                  rows, "stages")


def front_table(run: RunData, exported: Mapping[str, str]) -> str:
    metrics = list(run.problem.metrics) + [m for m in run.problem.constrained_metrics if m not in run.problem.metrics]
    knee_number = None if run.knee is None else run.knee.number
    rows = []
    for rank, r in enumerate(run.front):
        rows.append([str(rank), str(r.number), f"<code>{_e(r.candidate.id)}</code>", *(_num(r.metrics.get(m)) for m in metrics),
                     "knee" if r.number == knee_number else "",
                     f'<a href="#model-{_e(r.candidate.id)}-{_e(exported[r.candidate.id])}">exported</a>' if r.candidate.id in exported else ""])
    return _table(["#", "trial", "candidate", *metrics, "", ""], rows, "front-table")


# ----- exported models ---------------------------------------------------------------------------
def layers_svg(manifest: Mapping[str, Any], width: int = 900) -> str:
    """Per weight layer of an exported model: width (output channels), pattern and realised
    sparsity, bits, and latency -- one row each, bars scaled per column; ``<title>`` per row."""
    layers = [L for L in manifest.get("layers", []) if "weights" in L]
    if not layers:
        return "<p>no weight layers</p>"
    row_h, top = 18, 34
    cols = {"name": 10, "width": 160, "sparsity": 320, "bits": 570, "latency": 640}
    bar = {"width": 110, "sparsity": 100, "latency": 200}
    max_w = max(int(L.get("out_channels", 0)) for L in layers) or 1
    lat = [float(L["latency_ms"]) for L in layers if isinstance(L.get("latency_ms"), (int, float))]
    max_lat = max(lat) if lat else 0.0
    height = top + row_h * len(layers) + 10
    out = [f'<svg class="layers" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="per-layer chart of {_e(manifest.get("candidate_id"))}">']
    for key, label in (("name", "layer"), ("width", "width (channels)"), ("sparsity", "pattern, sparsity (realised)"),
                       ("bits", "bits w/a"), ("latency", "latency per layer (µs)")):
        out.append(f'<text class="head" x="{cols[key]}" y="20">{_e(label)}</text>')
    for i, L in enumerate(layers):
        y = top + i * row_h
        fam = _family(L.get("pattern", "dense"))
        colour = PATTERN_COLOURS.get(fam, "#9aa5b1")
        realised = float(L.get("realised_sparsity") or 0.0)
        planned = float(L.get("sparsity") or 0.0)
        ms = L.get("latency_ms")
        tip = (f"{L['name']}: {L.get('op')} {L.get('in_channels')}->{L.get('out_channels')} k{L.get('kernel')} s{L.get('stride')}, "
               f"{L.get('pattern')} planned {planned:.2f} realised {realised:.2f}, w{L.get('w_bits')} a{L.get('a_bits')}"
               + (f", {L.get('runs_as')}" if L.get("runs_as") else "") + (f", {ms:.4g} ms" if isinstance(ms, (int, float)) else ""))
        out.append(f'<g class="layer-row"><title>{_e(tip)}</title>')
        if i % 2:
            out.append(f'<rect x="0" y="{y - 13}" width="{width}" height="{row_h}" fill="#f6f7f9"/>')
        out.append(f'<text x="{cols["name"]}" y="{y}">{_e(L["name"])}</text>')
        w = bar["width"] * int(L.get("out_channels", 0)) / max_w
        out.append(f'<rect x="{cols["width"]}" y="{y - 10}" width="{w:.1f}" height="11" fill="#74c0fc"/>'
                   f'<text class="val" x="{cols["width"] + w + 3:.1f}" y="{y}">{int(L.get("out_channels", 0))}</text>')
        out.append(f'<rect x="{cols["sparsity"]}" y="{y - 10}" width="{bar["sparsity"]}" height="11" fill="#eceff3"/>'
                   f'<rect x="{cols["sparsity"]}" y="{y - 10}" width="{bar["sparsity"] * realised:.1f}" height="11" fill="{colour}"/>'
                   f'<text class="val" x="{cols["sparsity"] + bar["sparsity"] + 5}" y="{y}">{_e(L.get("pattern"))} {realised:.2f}</text>')
        out.append(f'<text x="{cols["bits"]}" y="{y}">w{_e(L.get("w_bits"))}/a{_e(L.get("a_bits"))}</text>')
        if isinstance(ms, (int, float)) and max_lat > 0:
            lw = bar["latency"] * float(ms) / max_lat
            out.append(f'<rect x="{cols["latency"]}" y="{y - 10}" width="{lw:.1f}" height="11" fill="#845ef7"/>'
                       f'<text class="val" x="{cols["latency"] + lw + 3:.1f}" y="{y}">{1e3 * float(ms):.3g}</text>')
        else:
            out.append(f'<text class="val" x="{cols["latency"]}" y="{y}">–</text>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def _legend() -> str:
    items = "".join(f'<span class="swatch" style="background:{c}"></span>{_e(f)} ' for f, c in PATTERN_COLOURS.items())
    return f'<p class="legend">pattern families: {items}</p>'


def model_section(manifest: Mapping[str, Any]) -> str:
    cid = manifest.get("candidate_id")
    anchor = f"model-{cid}-{manifest.get('target')}"
    ver = manifest.get("verification", {})
    check = ver.get("codegen" if manifest.get("target") == "codegen-cpu" else "model.onnx", {})
    meas = manifest.get("latency_measurement") or {}
    rows = [
        ["target", _e(manifest.get("target"))],
        ["accuracy of the exported file (test split)", _num(manifest.get("accuracy"))],
        ["accuracy the search reported", _num(manifest.get("search_accuracy"))],
        ["top-1 agreement / max |Δ logit| vs the torch subnet", f"{_num(check.get('top1_agreement'))} / {_num(check.get('max_abs_diff'))}"],
        ["latency measured (ms)", _num(manifest.get("latency_measured_ms")) + (f" (spread {_num(meas.get('spread'), 2)})" if meas else "")],
        ["latency predicted (ms)", _num(manifest.get("latency_predicted_ms")) +
         (f" ({_e((manifest.get('latency_predictor') or {}).get('name'))})" if manifest.get("latency_predictor") else "")],
        ["size (bytes)", _num(manifest.get("size_bytes"), 10) + f" ({_e(', '.join(manifest.get('size_of') or []))})"],
    ]
    source = (manifest.get("layer_latency") or {}).get("source")
    note = f"<p class='note'>latency per layer: {_e(source)}; scaled to the measured total.</p>" if source else \
        "<p class='note'>no per-layer latency (exported without timing).</p>"
    return (f'<section class="model" id="{_e(anchor)}"><h3>{_e(cid)} on {_e(manifest.get("target"))}</h3>' + _table(["", ""], rows, "model-summary")
            + _legend() + layers_svg(manifest) + note + "</section>")


def exported_manifests(directory: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The manifests under ``directory/<candidate_id>/`` or ``directory/<any>/<candidate_id>/``
    (one folder per target, say) and one line per unreadable one."""
    found, problems = [], []
    if directory.is_dir():
        for path in sorted([*directory.glob("*/manifest.json"), *directory.glob("*/*/manifest.json")]):
            try:
                found.append(read_manifest(path))
            except ManifestError as exc:
                problems.append(str(exc))
    return found, problems


_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; padding: 0 16px; max-width: 980px; color: #1d2330; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #dde; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0; } th, td { padding: 3px 8px; border-bottom: 1px solid #e4e6eb; text-align: left; }
th { background: #f1f3f6; font-weight: 600; } code { font-size: 13px; }
svg text { font: 11px system-ui, sans-serif; fill: #333; } svg text.axis, svg text.head { font-size: 12px; font-weight: 600; }
.note, .meta { color: #556; font-size: 12.5px; } .warn { color: #b02a37; }
.swatch { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 8px; border-radius: 2px; }
.front-point { cursor: pointer; } .front-point:hover circle { stroke: #000; }
#tip { position: fixed; pointer-events: none; background: #1d2330; color: #fff; padding: 4px 7px; border-radius: 4px;
       font-size: 12px; display: none; max-width: 420px; }
"""

_SCRIPT = """
(function () {
  var errors = 0;
  function bump() { errors += 1; document.body.setAttribute('data-js-errors', String(errors)); }
  window.addEventListener('error', bump);
  var tip = document.getElementById('tip');
  document.querySelectorAll('svg [class] > title, svg g > title').forEach(function (t) {
    var g = t.parentNode;
    g.addEventListener('mousemove', function (ev) {
      tip.textContent = t.textContent; tip.style.display = 'block';
      tip.style.left = (ev.clientX + 12) + 'px'; tip.style.top = (ev.clientY + 12) + 'px';
    });
    g.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
  });
  var n = document.querySelectorAll('svg.front .front-point').length;
  document.getElementById('front-rendered').textContent = String(n);
  document.body.setAttribute('data-js-errors', String(errors));
  document.body.setAttribute('data-ready', '1');
})();
"""


def render_report(run: RunData, stages: Sequence[StageSummary], manifests: Sequence[Mapping[str, Any]],
                  problems: Sequence[str] = (), final: Mapping[str, Any] | None = None) -> str:
    """The page as a string (see the module docstring)."""
    job = run.job
    exported = {str(m["candidate_id"]): str(m.get("target")) for m in manifests}
    final_parts: list[str] = []
    if final is not None:
        final_parts = ["<h2>Final front</h2>",
                       f"<p class='meta'>{len(final.get('front', []))} of {len(final.get('models', []))} fine-tuned models on the front: "
                       "accuracy of each exported file on the test split against its latency measured on "
                       f"{_e(final.get('target'))}; a dashed line starts at the model's score in the search.</p>",
                       final_front_svg(final), final_table(final)]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">",
        f"<title>{_e(job.name)}: tritune report</title><style>{_STYLE}</style></head><body data-js-errors='0'>",
        f"<h1>{_e(job.name)}</h1>",
        f"<p class='meta'>space {_e(job.space)} · strategy {_e(job.strategy)} · objectives "
        + ", ".join(f"{_e(o.metric)} ({_e(o.direction)})" for o in run.problem.objectives)
        + f" · run directory <code>{_e(run.run_dir)}</code> · tritune {_e(tritune_version())}</p>",
        *final_parts,
        "<h2>Pareto front</h2>" if not final_parts else "<h2>Joint search front</h2>",
        f"<p class='meta'>{len(run.front)} members on the front (<span id='front-rendered'>{len(run.front)}</span> drawn), "
        f"{sum(r.status == 'complete' for r in run.records)} complete trials; the knee is ringed, exported models are boxed. "
        "Hover a point for its candidate and metrics.</p>",
        front_svg(run, exported),
        front_table(run, exported),
        "<h2>Stages</h2>", stages_table(stages),
        "<h2>Exported models</h2>",
    ]
    if problems:
        parts.append("".join(f"<p class='warn'>{_e(p)}</p>" for p in problems))
    if manifests:
        parts.extend(model_section(m) for m in manifests)
    else:
        parts.append("<p class='note'>none yet: <code>tritune export RUN_DIR</code> writes them.</p>")
    parts.append(f"<div id='tip'></div><script>{_SCRIPT}</script></body></html>\n")
    return "\n".join(parts)


def write_report(run_dir: str | Path, out: str | Path | None = None, stages: Sequence[StageSummary] | None = None,
                 exports: str | Path | None = None) -> Path:
    """Write the report of a run (default ``RUN_DIR/report.html``); ``stages`` default to the
    search stage read from the store, ``exports`` to ``RUN_DIR/export``."""
    from .jobfile import read_json

    run = load_run(run_dir)
    manifests, problems = exported_manifests(Path(exports) if exports is not None else run.run_dir / "export")
    if stages is None:
        stages = pipeline_stages(run) or [search_stage(run)]
    final = None
    if run.job.stages is not None and (run.run_dir / "final.json").is_file():
        final = read_json(run.run_dir / "final.json", "final front")
        if not isinstance(final, dict):
            raise ValueError(f"report: {str(run.run_dir / 'final.json')!r} is not a final front")
    page = render_report(run, list(stages), manifests, problems, final)
    path = Path(out) if out is not None else run.run_dir / "report.html"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


__all__ = ["PATTERN_COLOURS", "StageSummary", "final_front_svg", "front_svg", "layers_svg", "pipeline_stages", "render_report",
           "search_stage", "write_report"]
