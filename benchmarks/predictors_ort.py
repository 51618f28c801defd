"""Latency predictors for the ``ort-cpu`` target, compared on a profiling dataset.

Usage::

    python benchmarks/predictors_ort.py [PROFILE ...] [--save best.json]
        [--out docs/results/predictors_ort.json] [--remeasure 40] [--seed 0]

Reads ``measurements.jsonl`` + ``metadata.json`` (see `tritune.targets.profiling`), splits the
models into train / held-out (seeded, stratified by resolution: 200 held out when there are at
least 700 rows, else 30 %), fits

* ``flops``: latency = a * MACs + b (least squares on the train rows);
* ``whole-model``: `WholeModelPredictor` (XGBoost on ``space.encode``);
* ``layerwise``: `LayerwiseLatencyPredictor` (fused kernels + per-model correction);
* ``+groups`` variants: trained on latencies corrected for each measurement group's level
  (`LayerwiseLatencyPredictor.fit(groups=...)`), scored on the raw held-out latencies;
* ablations: ``layerwise-additive`` (no correction stage), ``layerwise-naive-rules`` (kernels
  grouped without the measured rules: no int8 promotion, no residual-sum fusion, GELU folded,
  float softmax) and, for transformers, ``layerwise-token-blind`` (every token-wise layer seen
  at one token, as a grouping that ignores token counts sees it);

and prints a markdown table (within +-10 %, +-5 %, MAPE, Spearman, Kendall on the held-out
models; also split fp32-only / int8-mix), the noise floor, and predict throughput. The noise
floor comes from ``--remeasure N``: N held-out models measured again now with the profile's
protocol (the share of the two measurements within +-10 % of each other), and, always, from the
data itself: how much the latency level drifts between measurement groups; ``--session-noise N``
builds N fp32-only and N int8-mix held-out models four times each and times them side by side (how
much one runtime session of a model differs from another). A directory made by ``tritune profile
--sessions K`` counts as its K passes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_PROFILE = "/work/profiles/ort-cpu-mobilenet"
KEYS = ("within_10", "within_5", "mape", "spearman", "kendall")


def load_profile(path: str | Path) -> tuple[Any, list[dict], dict]:
    from tritune.spaces.registry import create
    from tritune.targets.profiling import METADATA_FILE, read_measurements

    path = Path(path)
    meta = json.loads((path / METADATA_FILE).read_text())
    space = create(meta["space"]["name"], **meta["space"]["config"])
    rows = [r for r in read_measurements(path) if r.get("latency_ms")]
    return space, rows, meta


def labels(rows: list[dict], others: list[str], target: str) -> tuple[np.ndarray, list[dict]]:
    """Labels of ``rows`` (``normalized``: reference-normalised where the profile has references);
    with ``others`` (profiles of the same candidates) the median over all profiles
    (`tritune.targets.profiling.pooled_latency`)."""
    from tritune.targets.profiling import pooled_latency

    column = None if target == "normalized" else target
    return pooled_latency([rows] + [load_profile(p)[1] for p in others], column)


def flops_baseline(macs_tr: np.ndarray, y_tr: np.ndarray):
    A = np.column_stack([macs_tr, np.ones_like(macs_tr)])
    a, b = np.linalg.lstsq(A, y_tr, rcond=None)[0]
    return lambda m: a * m + b


def report(y: np.ndarray, p: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, Any]:
    from tritune.predictors.metrics import score_report

    out = {"all": score_report(y, p)}
    for name, m in masks.items():
        if m.sum() >= 3:
            out[name] = score_report(y[m], p[m])
    return out


def group_drift(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Spread of the per-group mean log residual (the level shift of a whole measurement group)
    against the spread within groups."""
    lr = np.log(y / p)
    ids = np.unique(groups)
    means = np.array([lr[groups == g].mean() for g in ids if (groups == g).sum() >= 2])
    within = np.concatenate([lr[groups == g] - lr[groups == g].mean() for g in ids if (groups == g).sum() >= 2])
    return {"between_group_sd": float(means.std()), "within_group_sd": float(within.std()), "groups": int(means.size)}


def remeasure(space: Any, rows: list[dict], meta: dict, n: int, seed: int, normalized: bool) -> dict[str, Any]:
    """Measure ``n`` of ``rows`` again with the profile's protocol (groups of 8, with the profile's
    reference model when it has one): agreement with the stored numbers (``normalized``: both
    sides rescaled to the profile's median reference latency)."""
    from tritune.spaces.candidate import Candidate
    from tritune.kernels.timing import Protocol
    from tritune.targets.ort_cpu import OrtCpuTarget
    from tritune.targets.profiling import normalized_latency

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))[:n]
    pick = [rows[i] for i in order]
    proto = Protocol.from_json(meta["protocol"])
    target = OrtCpuTarget(threads=proto.threads, protocol=proto)
    ref_json = (meta.get("reference") or {}).get("candidate")
    ref = target.build(Candidate.from_json(ref_json), space=space) if (normalized and ref_json) else None
    t0 = time.perf_counter()
    again = []
    for lo in range(0, len(pick), 8):
        built = [target.build(Candidate.from_json(r["candidate"]), space=space) for r in pick[lo:lo + 8]]
        ms = target.measure(built + ([ref] if ref is not None else []))
        scale = 1.0
        if ref is not None:
            profile_ref = float(np.median([r["reference_ms"] for r in rows if r.get("reference_ms")]))
            scale = profile_ref / ms.pop().latency_ms
        again += [m.latency_ms * scale for m in ms]
    again = np.array(again)
    first = normalized_latency(rows)[order] if normalized else np.array([r["latency_ms"] for r in pick])
    rel = np.abs(again - first) / first
    return {"n": n, "normalized": bool(ref is not None), "within_10": float(np.mean(rel <= 0.10)), "within_5": float(np.mean(rel <= 0.05)),
            "median_rel_diff": float(np.median(rel)), "mean_log_ratio": float(np.mean(np.log(again / first))),
            "seconds": time.perf_counter() - t0, "ids": [r["candidate_id"] for r in pick], "again_ms": again.tolist()}


def session_noise(space: Any, rows: list[dict], meta: dict, n: int, seed: int, sessions: int = 4) -> dict[str, Any]:
    """Build ``n`` fp32-only and ``n`` int8-mix candidates of ``rows`` ``sessions`` times each and
    time all of them interleaved in one group: how much one runtime session of a model differs from
    another built and timed side by side (the spread a single profile cannot average out)."""
    from tritune.spaces.candidate import Candidate
    from tritune.kernels.timing import Protocol
    from tritune.targets.ort_cpu import OrtCpuTarget

    rng = np.random.default_rng(seed)
    proto = Protocol.from_json(meta["protocol"])
    target = OrtCpuTarget(threads=proto.threads, protocol=proto)
    kinds = {"fp32-only": [r for r in rows if not r.get("quantized_layers")], "int8-mix": [r for r in rows if r.get("quantized_layers")]}
    pick = {k: [v[i] for i in rng.permutation(len(v))[:n]] for k, v in kinds.items()}
    t0 = time.perf_counter()
    built = [(k, r["candidate_id"], target.build(Candidate.from_json(r["candidate"]), space=space))
             for k, chosen in pick.items() for r in chosen for _ in range(sessions)]
    ms = target.measure([b for _, _, b in built])
    out: dict[str, Any] = {"sessions": sessions, "seconds": None}
    for k in kinds:
        per_model = []
        for cid in dict.fromkeys(c for kk, c, _ in built if kk == k):
            per_model.append(np.array([m.latency_ms for (kk, c, _), m in zip(built, ms) if kk == k and c == cid]))
        if not per_model:
            continue
        spread = np.array([v.max() / v.min() - 1 for v in per_model])
        rel = np.concatenate([np.abs(v / np.median(v) - 1) for v in per_model])
        out[k] = {"models": len(per_model), "median_spread": float(np.median(spread)), "max_spread": float(spread.max()),
                  "within_5_of_median": float(np.mean(rel <= 0.05)), "within_10_of_median": float(np.mean(rel <= 0.10)),
                  "latency_ms": [v.tolist() for v in per_model]}
    out["seconds"] = time.perf_counter() - t0
    return out


def compare_profiles(rows: list[dict], other: str) -> dict[str, Any]:
    """Agreement of two profiles on the candidates both measured (raw, and reference-normalised
    where both have references): the noise floor a predictor is judged against."""
    from tritune.targets.profiling import normalized_latency, read_measurements

    theirs = [r for r in read_measurements(other) if r.get("latency_ms")]
    mine = {r["candidate_id"]: i for i, r in enumerate(rows)}
    pairs = [(mine[r["candidate_id"]], j) for j, r in enumerate(theirs) if r["candidate_id"] in mine]
    a = np.array([rows[i]["latency_ms"] for i, _ in pairs])
    b = np.array([theirs[j]["latency_ms"] for _, j in pairs])
    rel = np.abs(b / a - 1)
    out = {"other": str(other), "n": len(pairs), "within_10": float(np.mean(rel <= 0.1)), "within_5": float(np.mean(rel <= 0.05)),
           "mean_log_ratio": float(np.mean(np.log(b / a))), "normalized_within_10": None, "normalized_within_5": None}
    if all(r.get("reference_ms") for r in rows) and all(r.get("reference_ms") for r in theirs):
        na, nb = normalized_latency(rows), normalized_latency(theirs)
        reln = np.abs(np.array([nb[j] / na[i] for i, j in pairs]) - 1)
        out.update(normalized_within_10=float(np.mean(reln <= 0.1)), normalized_within_5=float(np.mean(reln <= 0.05)))
    return out


def throughput(pred: Any, nets: list, space: Any, cands: list, n_target: int = 20000) -> dict[str, float]:
    """Predictions per second (1 thread): from layer IR lists, and end to end from ``n_target``
    distinct freshly sampled candidates (what a search calls; warm-up, 5 repeats, median)."""
    reps = max(1, n_target // max(1, len(nets)))
    many = nets * reps
    pred.predict(nets[:50])  # warm
    t0 = time.perf_counter()
    pred.predict(many)
    dt = time.perf_counter() - t0
    k = min(len(cands), 200)
    t0 = time.perf_counter()
    for c in cands[:k]:
        space.layers(c)
    ir = (time.perf_counter() - t0) / k
    rng = np.random.default_rng(12345)
    fresh = [space.sample(rng) for _ in range(n_target)]
    pred.predict(fresh[:1000], space=space)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        pred.predict(fresh, space=space)
        times.append(time.perf_counter() - t0)
    return {"networks": len(many), "predict_per_s": len(many) / dt, "ir_per_s": 1.0 / ir,
            "from_candidates_per_s": n_target / float(np.median(times)), "from_candidates_n": n_target,
            "from_candidates_spread": float((max(times) - min(times)) / np.median(times))}


def fusion_table(rules: Any, built_in: Any, seconds: float) -> list[str]:
    """Markdown: the timed fusion probes (increment of adding an op to a conv against running it
    alone) next to the graph verdicts, and whether the measured rules differ from the built-in ones."""
    ev = rules.evidence
    out = ["", f"**Fusion rules measured now** ({rules.runtime}; graph inspection + timed micro-benchmarks, {seconds:.0f} s)", "",
           "| probe | + µs over the conv alone | one element-wise pass µs | folded by timing |", "|---|---|---|---|"]
    for name, v in ev.get("timing_verdicts", {}).items():
        if "increment_us" in v:
            out.append(f"| {name} | {v['increment_us']:.1f} | {v['standalone_us']:.1f} | {'yes' if v['folded'] else 'no'} |")
    out += ["", "| int8 probe | int8 µs | fp32 µs |", "|---|---|---|"]
    for name, v in ev.get("timing_verdicts", {}).items():
        if "fp32_us" in v:
            out.append(f"| {name} | {v['us']:.1f} | {v['fp32_us']:.1f} |")
    skip = {"source", "runtime", "evidence"}
    a, b = rules.to_json(), built_in.to_json()
    diff = {k: (b[k], a[k]) for k in a if k not in skip and a[k] != b[k]}
    out += ["", f"- graph verdicts: {ev.get('graph_verdicts')}",
            "- measured rules equal the built-in ones" if not diff else f"- differs from the built-in rules (built-in, measured): {diff}"]
    return out


def fmt_row(name: str, r: dict[str, Any]) -> str:
    return (f"| {name} | {r['n']} | {100 * r['within_10']:.1f} | {100 * r['within_5']:.1f} | {r['mape']:.2f} | "
            f"{r['spearman']:.3f} | {r['kendall']:.3f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profile", nargs="*", default=[DEFAULT_PROFILE],
                    help="one profile, or several of the same candidates: then each candidate's label is the median over "
                         "the profiles (each profile's level aligned to the first one's), i.e. more repeats of the measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test", type=int, default=200, help="held-out models when there are >= 700 rows (else 30 %%)")
    ap.add_argument("--save", default=None, help="write the best fitted predictor (signed JSON) here")
    ap.add_argument("--out", default="docs/results/predictors_ort.json")
    ap.add_argument("--remeasure", type=int, default=0, help="measure this many held-out models again (noise floor)")
    ap.add_argument("--target", choices=("normalized", "latency_ms", "cpu_latency_ms"), default="normalized",
                    help="normalized: latency_ms rescaled by the group's reference model (profiles with reference_ms; "
                         "else the same as latency_ms)")
    ap.add_argument("--compare", nargs="*", default=[], metavar="PROFILE",
                    help="other profiles of the same space and target: how well two measurements of the same candidates agree")
    ap.add_argument("--session-noise", type=int, default=0, metavar="N",
                    help="build N fp32-only and N int8-mix models 4 times each and time them side by side: the spread "
                         "between runtime sessions of the same model")
    ap.add_argument("--detect-fusion", action="store_true",
                    help="probe the runtime first (optimised graphs + timed micro-benchmarks) and fit the layer-wise "
                         "predictors with the rules measured now instead of the built-in ones")
    args = ap.parse_args(argv)

    from tritune.predictors import LayerwiseLatencyPredictor, WholeModelPredictor
    from tritune.predictors.fusion import DEFAULT_RULES, KernelBatch, detect_fusion_rules
    from tritune.predictors.ort_layerwise import stratified_split
    from tritune.spaces.candidate import Candidate

    from tritune.targets.profiling import session_dirs

    args.profile = [str(d) for p in args.profile for d in session_dirs(p)]  # a --sessions profile counts as its passes
    space, rows, meta = load_profile(args.profile[0])
    y, rows = labels(rows, args.profile[1:], args.target)
    cands = [Candidate.from_json(r["candidate"]) for r in rows]
    has_ref = all(r.get("reference_ms") for r in rows)
    groups = np.array([r.get("run", 0) * 100000 + r.get("group", 0) for r in rows])
    int8 = np.array([r.get("quantized_layers", 0) > 0 for r in rows])
    t0 = time.perf_counter()
    nets = [space.layers(c) for c in cands]
    ir_s = time.perf_counter() - t0
    res = np.array([n[0].in_h for n in nets])
    n = len(rows)
    share = args.test / n if n >= 700 else 0.3
    test = stratified_split(res, share, args.seed)
    tr, te = ~test, test
    nets_tr = [x for x, m in zip(nets, tr) if m]
    nets_te = [x for x, m in zip(nets, te) if m]
    c_tr = [x for x, m in zip(cands, tr) if m]
    c_te = [x for x, m in zip(cands, te) if m]
    masks = {"fp32-only": ~int8[te], "int8-mix": int8[te]}
    print(f"profile {' + '.join(args.profile)}: {n} models ({int(tr.sum())} train / {int(te.sum())} held out), target {args.target}, "
          f"space {space.name}, IR {n / ir_s:.0f} networks/s", file=sys.stderr)

    fp = meta["target"]["fingerprint"]  # predictors are made for the profiled target

    results: dict[str, Any] = {}
    preds: dict[str, np.ndarray] = {}
    fitted: dict[str, Any] = {}
    macs = np.array([sum(L.macs for L in x) for x in nets])
    base = flops_baseline(macs[tr], y[tr])
    preds["flops"] = base(macs[te])

    rules, fusion_lines = DEFAULT_RULES, []
    if args.detect_fusion:
        t0 = time.perf_counter()
        rules = detect_fusion_rules(timing=True)
        fusion_lines = fusion_table(rules, DEFAULT_RULES, time.perf_counter() - t0)
    naive = dataclasses.replace(rules, source="naive (no promotion, no sum fusion, GELU folded, float softmax)", promote_acts=(),
                                fp32_add_fused=False, gelu_fused=True, int8_softmax=False)
    models = {
        "whole-model": lambda: WholeModelPredictor(space=space).fit(c_tr, y[tr], target=fp),
        "layerwise": lambda: LayerwiseLatencyPredictor(space=space, rules=rules).fit(nets_tr, y[tr], target=fp),
        "layerwise-additive": lambda: LayerwiseLatencyPredictor(space=space, rules=rules, correction=False).fit(nets_tr, y[tr], target=fp),
        "layerwise+groups": lambda: LayerwiseLatencyPredictor(space=space, rules=rules).fit(nets_tr, y[tr], target=fp, groups=groups[tr]),
        "layerwise-additive+groups": lambda: LayerwiseLatencyPredictor(space=space, rules=rules, correction=False).fit(nets_tr, y[tr], target=fp, groups=groups[tr]),
        "layerwise-naive-rules": lambda: LayerwiseLatencyPredictor(space=space, rules=naive).fit(nets_tr, y[tr], target=fp),
    }
    if any(L.in_w == 1 and L.in_h > 1 for L in nets[0]):  # token rows (transformers): a predictor blind to them
        blind = lambda xs: [[dataclasses.replace(L, in_h=1) if L.in_w == 1 else L for L in x] for x in xs]  # noqa: E731
        models["layerwise-token-blind"] = lambda: LayerwiseLatencyPredictor(space=space, rules=rules).fit(blind(nets_tr), y[tr], target=fp)
    fit_s = {}
    for name, make in models.items():
        t0 = time.perf_counter()
        fitted[name] = make()
        fit_s[name] = time.perf_counter() - t0
        preds[name] = fitted[name].predict(c_te if name == "whole-model" else blind(nets_te) if name.endswith("token-blind") else nets_te)
    for name, p in preds.items():
        results[name] = report(y[te], p, masks)
        results[name]["fit_s"] = fit_s.get(name)
        results[name]["shipped_error"] = getattr(fitted.get(name), "error_", None)

    # diagnostic (not a deployable number): the held-out prediction times its measurement group's
    # level, estimated from the *training* models timed in the same group (same machine state)
    diag = {}
    for name in ("layerwise+groups", "layerwise"):
        p_tr = fitted[name].predict(nets_tr)
        lr_tr = np.log(y[tr] / p_tr)
        g_tr, g_te = groups[tr], groups[te]
        level = {g: float(np.median(lr_tr[g_tr == g])) for g in np.unique(g_tr)}
        adj = preds[name] * np.exp(np.array([level.get(g, 0.0) for g in g_te]))
        diag[name] = report(y[te], adj, masks)
    results["diagnostic_group_level"] = diag

    # noise indicators from the data itself
    # best by held-out MAPE (within +-10 % moves by several points with a handful of models on a
    # few hundred held-out rows; MAPE is the steadier criterion)
    best = min((k for k in preds if k != "flops" and not k.endswith("token-blind")), key=lambda k: results[k]["all"]["mape"])
    full = fitted[best].predict(cands if best == "whole-model" else nets)
    drift = group_drift(y, full, groups)
    spread = np.array([r.get("spread", np.nan) for r in rows])
    share_cpu = np.array([r.get("cpu_share", np.nan) for r in rows], dtype=np.float64)
    noise: dict[str, Any] = {
        "group_drift_of_best_residuals": drift,
        "spread_median": float(np.nanmedian(spread)), "spread_p90": float(np.nanpercentile(spread, 90)),
        "cpu_share_p10": float(np.nanpercentile(share_cpu, 10)), "cpu_share_median": float(np.nanmedian(share_cpu)),
        "repeats_in_profile": int(len(rows) - len({r["candidate_id"] for r in rows})),
    }
    if args.compare:
        noise["profiles"] = [compare_profiles(rows, other) for other in args.compare]
    if args.session_noise:
        noise["sessions"] = session_noise(space, [r for r, m in zip(rows, te) if m], meta, args.session_noise, args.seed)
    if args.remeasure:
        held_rows = [r for r, m in zip(rows, te) if m]
        noise["remeasure"] = remeasure(space, held_rows, meta, args.remeasure, args.seed, normalized=args.target == "normalized" and has_ref)

    tp = throughput(fitted["layerwise"], nets_te, space, c_te)
    tp_whole = throughput(fitted["whole-model"], c_te, space, c_te, n_target=5000)
    kb_t0 = time.perf_counter()
    KernelBatch.from_networks(nets_te * max(1, 20000 // len(nets_te)))
    tp["kernel_grouping_per_s"] = len(nets_te) * max(1, 20000 // len(nets_te)) / (time.perf_counter() - kb_t0)

    # ---- print
    what = "reference-normalised latency" if (args.target == "normalized" and has_ref) else args.target
    lines = [f"### ort-cpu latency predictors ({space.name}, {n} profiled models, {int(tr.sum())} train / {int(te.sum())} held out, seed {args.seed}, {what})", ""]
    lines.append("| predictor | n | within ±10 % | within ±5 % | MAPE % | Spearman | Kendall |")
    lines.append("|---|---|---|---|---|---|---|")
    for name in preds:
        lines.append(fmt_row(name, results[name]["all"]))
    for split in masks:
        lines += ["", f"**{split}** held-out models", "", "| predictor | n | within ±10 % | within ±5 % | MAPE % | Spearman | Kendall |", "|---|---|---|---|---|---|---|"]
        for name in preds:
            if split in results[name]:
                lines.append(fmt_row(name, results[name][split]))
    lines += ["", "**Diagnostic** (group level from co-measured training models; shows the predictor net of machine-state drift, not usable at search time)", "",
              "| predictor | n | within ±10 % | within ±5 % | MAPE % | Spearman | Kendall |", "|---|---|---|---|---|---|---|"]
    for name, r in diag.items():
        lines.append(fmt_row(name + " x group level", r["all"]))
    lines += ["", "**Noise floor**", ""]
    if "remeasure" in noise:
        rm = noise["remeasure"]
        lines.append(f"- {rm['n']} held-out models measured again{' (reference-normalised)' if rm['normalized'] else ''}: "
                     f"{100 * rm['within_10']:.1f} % within ±10 % of the profiled value "
                     f"({100 * rm['within_5']:.1f} % within ±5 %, median |diff| {100 * rm['median_rel_diff']:.1f} %, mean log ratio {rm['mean_log_ratio']:+.3f})")
    for cp in noise.get("profiles", []):
        lines.append(f"- the same {cp['n']} candidates in {cp['other']}: {100 * cp['within_10']:.1f} % within ±10 % "
                     f"({100 * cp['within_5']:.1f} % within ±5 %, mean log ratio {cp['mean_log_ratio']:+.3f})"
                     + (f"; reference-normalised in both: {100 * cp['normalized_within_10']:.1f} % / {100 * cp['normalized_within_5']:.1f} %"
                        if cp.get("normalized_within_10") is not None else ""))
    if "sessions" in noise:
        sn = noise["sessions"]
        for k in ("fp32-only", "int8-mix"):
            if k in sn:
                v = sn[k]
                lines.append(f"- {v['models']} {k} models, each built {sn['sessions']} times and timed side by side: median spread between "
                             f"sessions {100 * v['median_spread']:.1f} % (max {100 * v['max_spread']:.1f} %); single sessions within ±5 % / ±10 % "
                             f"of the model's median: {100 * v['within_5_of_median']:.1f} % / {100 * v['within_10_of_median']:.1f} %")
    lines.append(f"- level drift between measurement groups (residuals of {best}): sd {drift['between_group_sd']:.3f} (log) across "
                 f"{drift['groups']} groups vs {drift['within_group_sd']:.3f} within groups")
    lines.append(f"- round spread median {noise['spread_median']:.2f} (p90 {noise['spread_p90']:.2f}); cpu_share p10 {noise['cpu_share_p10']:.2f}")
    lines += ["", "**Throughput** (layerwise predictor, 1 thread)", "",
              f"- predict from layer IR: {tp['predict_per_s']:.0f} networks/s ({tp['networks']} networks; kernel grouping alone {tp['kernel_grouping_per_s']:.0f}/s)",
              f"- end to end from {tp['from_candidates_n']} distinct sampled candidates (fast layer-code path): "
              f"{tp['from_candidates_per_s']:.0f}/s (median of 5, spread {100 * tp['from_candidates_spread']:.0f} %); "
              f"building `LayerSpec` lists instead (`space.layers`) alone runs at {tp['ir_per_s']:.0f}/s",
              f"- whole-model predictor from candidates (encoding included): {tp_whole['predict_per_s']:.0f}/s"]
    lines += fusion_lines
    text = "\n".join(lines)
    print(text)

    out = {"profile": args.profile if len(args.profile) > 1 else args.profile[0], "rows": n, "train": int(tr.sum()), "test": int(te.sum()), "seed": args.seed, "target": args.target,
           "results": results, "noise": noise, "rules": rules.to_json(), "throughput": {"layerwise": tp, "whole_model": tp_whole}, "best": best, "markdown": text}
    if args.out:
        p = Path(args.out)
        p.parent.mkdir(parents=True, exist_ok=True)
        from tritune.predictors.io import to_jsonable

        p.write_text(json.dumps(to_jsonable(out), indent=1, sort_keys=True))
    if args.save:
        fitted[best].save(args.save)
        print(f"\nsaved {best} to {args.save}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
