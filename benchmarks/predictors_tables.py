"""Benchmark of tritune's predictors: few-shot NB201 latency, BitFusion layer costs, throughput.

Prints markdown tables and writes them as JSON (``--out``, default
``docs/results/predictors_tables.json``).

b. NAS-Bench-201 few-shot latency. Six HELP devices are held out (Pixel 3, FPGA, Eyeriss,
   Raspberry Pi 4, Xeon Gold 6240, Titan Xp batch 1); predictors learn from the other 21 HELP
   columns of the full joint table (``--data``). For k = 10, 20, 100 measured cells of a held-out
   device: Spearman rho and the share of cells within +-10 % over all 15,625 cells except the k,
   mean over the 6 devices x ``--seeds`` random draws of the k cells. Methods:

   * ``onehot-ridge`` (baseline i): ridge on the one-hot cell (6 edges x 5 ops) from the k cells
     alone; ``encode-ridge``: the same on ``NB201Space.encode`` (one-hot plus path features);
   * ``other-devices-ridge`` (baseline ii): ridge on the 21 training devices' log latencies;
   * ``svd-embedding-ridge``: per-device standardised log-latency matrix -> truncated SVD ->
     ridge from the cell embedding, rank and penalty by leave-one-out on the k cells;
   * ``fewshot`` (`FewShotLatencyPredictor`): Bayesian op-cost model with a prior learned from
     the training devices, random k cells; ``fewshot-designed``: the same on the k cells chosen
     by `FewShotLatencyPredictor.design` (one device-independent list: no seeds).

   The three ridge models work on log latency with a floor at 1 % of the median of the k
   measured values (of the column, for training devices), so the < 0.1 ms degenerate cells of
   Pixel 3 / Raspberry Pi 4 stay finite; ridge penalties by efficient leave-one-out
   (``RidgeCV``). Scores are always on the raw ms values.

c. BitFusion per-layer regressor: 20 % of the (layer, W, A) entries held out (random, seed 0);
   MAPE and share within +-10 % for latency and energy, plus the harder split where whole layer
   shapes (all 9 bit-width pairs) are held out, and a log-linear regression on the same features
   for reference.

d. Query throughput (time.perf_counter; one warm-up, 5 repeats; median [min-max]).

    python benchmarks/predictors_tables.py
    python benchmarks/predictors_tables.py --seeds 2 --skip-throughput
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = ("help_pixel3", "help_fpga", "help_eyeriss", "help_raspi4", "help_gold_6240", "help_titanxp_1")
KS = (10, 20, 100)
METHODS = ("onehot-ridge", "encode-ridge", "other-devices-ridge", "svd-embedding-ridge", "fewshot", "fewshot-designed")
ALPHAS = np.logspace(-3, 3, 13)


# ----------------------------------------------------------------------------------------------
# b. few-shot NB201
# ----------------------------------------------------------------------------------------------
def log_floor(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """log(max(v, 1 % of median(reference))): finite logs for the ~0 ms degenerate cells."""
    return np.log(np.maximum(values, 0.01 * np.median(reference)))


class Baselines:
    """The comparison models of section b, sharing the precomputed matrices."""

    def __init__(self, train: np.ndarray, onehot: np.ndarray, encoded: np.ndarray, max_rank: int = 12) -> None:
        self.onehot, self.encoded = onehot, encoded
        self.logs = np.column_stack([log_floor(train[:, d], train[:, d]) for d in range(train.shape[1])])
        std = (self.logs - self.logs.mean(0)) / self.logs.std(0)
        u, s, _ = np.linalg.svd(std, full_matrices=False)
        self.embedding = u[:, :max_rank] * s[:max_rank] / np.sqrt(std.shape[0])

    @staticmethod
    def _ridge_cv(features: np.ndarray, idx: np.ndarray, target: np.ndarray) -> np.ndarray:
        from sklearn.linear_model import RidgeCV

        return RidgeCV(alphas=ALPHAS).fit(features[idx], target).predict(features)

    def onehot_ridge(self, idx: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.exp(self._ridge_cv(self.onehot, idx, log_floor(y, y)))

    def encode_ridge(self, idx: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.exp(self._ridge_cv(self.encoded, idx, log_floor(y, y)))

    def other_devices_ridge(self, idx: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.exp(self._ridge_cv(self.logs, idx, log_floor(y, y)))

    def svd_embedding_ridge(self, idx: np.ndarray, y: np.ndarray, ranks=(1, 2, 3, 4, 6, 8, 12), alphas=np.logspace(-5, 1, 13)) -> np.ndarray:
        t = log_floor(y, y)
        best: tuple[float, int, float] | None = None
        for r in ranks:
            if r > len(idx) - 2:
                continue
            f = self.embedding[idx, :r]
            fc = f - f.mean(0)
            for a in alphas:
                hat = fc @ np.linalg.solve(fc.T @ fc + a * np.eye(r), fc.T) + 1.0 / len(idx)
                loo = np.mean(((t - hat @ t) / (1 - np.diag(hat))) ** 2)
                if best is None or loo < best[0]:
                    best = (loo, r, a)
        _, r, a = best  # type: ignore[misc]
        f = self.embedding[idx, :r]
        mean = f.mean(0)
        w = np.linalg.solve((f - mean).T @ (f - mean) + a * np.eye(r), (f - mean).T @ (t - t.mean()))
        return np.exp((self.embedding[:, :r] - mean) @ w + t.mean())


def scores(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> dict[str, float]:
    mask = np.ones(y.size, dtype=bool)
    mask[idx] = False
    rel = np.abs(pred[mask] / y[mask] - 1)
    return {"spearman": float(spearmanr(y[mask], pred[mask])[0]), "within_10": float(np.mean(rel <= 0.1 + 1e-12))}


def section_b(data: Path, seeds: int, ks: tuple[int, ...]) -> dict[str, Any]:
    from tritune.predictors import FewShotLatencyPredictor
    from tritune.predictors.nb201_features import FEATURE_NAMES, nb201_features
    from tritune.spaces import NB201Space
    from tritune.targets import NB201Table

    table = NB201Table(data)
    train_devices = [c for c in table.latency_columns if c.startswith("help_") and c not in HELD_OUT]
    missing = [d for d in HELD_OUT if d not in table.latency_columns]
    if missing or len(train_devices) != 21:
        raise SystemExit(f"{data}: expected the 27 HELP columns (missing held-out {missing}, {len(train_devices)} training columns)")
    space = NB201Space()
    encoded = np.stack([space.encode(space.from_index(i)) for i in range(15625)])
    onehot = nb201_features()[:, FEATURE_NAMES.index("edge1<-0=none"):]
    train = np.column_stack([table.column(d) for d in train_devices])
    t0 = time.perf_counter()
    fewshot = FewShotLatencyPredictor.pretrain(table, train_devices)
    pretrain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    design = fewshot.design(max(ks))
    design_s = time.perf_counter() - t0
    base = Baselines(train, onehot, encoded)
    disconnected = nb201_features()[:, FEATURE_NAMES.index("disconnected")] > 0
    runs: list[dict[str, Any]] = []
    for device in HELD_OUT:
        y = table.column(device)
        degenerate = y < 0.1
        for k in ks:
            for seed in range(seeds):
                idx = np.random.default_rng(seed).choice(y.size, k, replace=False)
                preds: dict[str, np.ndarray] = {
                    "onehot-ridge": base.onehot_ridge(idx, y[idx]),
                    "encode-ridge": base.encode_ridge(idx, y[idx]),
                    "other-devices-ridge": base.other_devices_ridge(idx, y[idx]),
                    "svd-embedding-ridge": base.svd_embedding_ridge(idx, y[idx]),
                    "fewshot": fewshot.fit(idx, y[idx]).predict_all(),
                }
                for method, pred in preds.items():
                    run = {"device": device, "k": k, "seed": seed, "method": method, **scores(y, pred, idx)}
                    if method == "fewshot" and degenerate.any():
                        keep = ~degenerate
                        keep[idx] = False
                        run["within_10_without_degenerate"] = float(np.mean(np.abs(pred[keep] / y[keep] - 1) <= 0.1 + 1e-12))
                    runs.append(run)
            idx = design[:k]
            pred = fewshot.fit(idx, y[idx]).predict_all()
            runs.append({"device": device, "k": k, "seed": None, "method": "fewshot-designed", **scores(y, pred, idx),
                         "loo_error": fewshot.error_})
    summary = []
    for k in ks:
        for method in METHODS:
            sel = [r for r in runs if r["k"] == k and r["method"] == method]
            summary.append({"k": k, "method": method, "n_runs": len(sel),
                            "spearman": float(np.mean([r["spearman"] for r in sel])),
                            "within_10": float(np.mean([r["within_10"] for r in sel]))})
    per_device = []
    for device in HELD_OUT:
        for k in ks:
            row: dict[str, Any] = {"device": device, "k": k}
            for method in METHODS:
                sel = [r for r in runs if r["k"] == k and r["method"] == method and r["device"] == device]
                row[method] = {"spearman": float(np.mean([r["spearman"] for r in sel])), "within_10": float(np.mean([r["within_10"] for r in sel]))}
            per_device.append(row)
    degenerate_note = {
        d: {"cells_below_0.1ms": int((table.column(d) < 0.1).sum()),
            "of_which_disconnected": int(((table.column(d) < 0.1) & disconnected).sum())}
        for d in HELD_OUT if (table.column(d) < 0.1).any()
    }
    return {
        "data": str(data), "train_devices": train_devices, "held_out": list(HELD_OUT), "seeds": seeds, "ks": list(ks),
        "encode_length": int(encoded.shape[1]), "pretrain_s": pretrain_s, "design_s": design_s, "design": design.tolist(), "summary": summary,
        "per_device": per_device, "degenerate": degenerate_note, "runs": runs,
    }


def print_b(res: dict[str, Any]) -> None:
    print("\n## b. NAS-Bench-201 few-shot latency on held-out devices\n")
    print(f"Training: {len(res['train_devices'])} HELP columns; held out: {', '.join(d[5:] for d in res['held_out'])}. "
          f"Mean over 6 devices x {res['seeds']} random draws of the k cells (designed: one list, 6 devices); "
          f"scores over all 15,625 cells except the k. Pretraining {res['pretrain_s']:.2f} s, design of "
          f"{max(res['ks'])} cells {res['design_s']:.1f} s. encode-ridge uses NB201Space.encode ({res['encode_length']} numbers per cell).\n")
    print("| method | " + " | ".join(f"k={k} rho | k={k} +-10%" for k in res["ks"]) + " |")
    print("|---|" + "---:|---:|" * len(res["ks"]))
    for method in METHODS:
        cells = []
        for k in res["ks"]:
            row = next(r for r in res["summary"] if r["k"] == k and r["method"] == method)
            cells += [f"{row['spearman']:.3f}", f"{row['within_10']:.3f}"]
        print(f"| {method} | " + " | ".join(cells) + " |")
    for k in res["ks"]:
        print(f"\nPer device, k = {k} (rho / share within +-10 %):\n")
        print("| device | " + " | ".join(METHODS) + " |")
        print("|---|" + "---|" * len(METHODS))
        for row in res["per_device"]:
            if row["k"] == k:
                print(f"| {row['device'][5:]} | " + " | ".join(f"{row[m]['spearman']:.3f} / {row[m]['within_10']:.2f}" for m in METHODS) + " |")
    wo = [r for r in res["runs"] if "within_10_without_degenerate" in r]
    if wo:
        print("\nDegenerate cells: " + "; ".join(f"{d[5:]}: {v['cells_below_0.1ms']} cells < 0.1 ms, {v['of_which_disconnected']} of them disconnected"
                                                 for d, v in res["degenerate"].items()))
        for k in res["ks"]:
            sel = [r for r in wo if r["k"] == k]
            print(f"  fewshot k={k}: share within +-10 % on those devices {np.mean([r['within_10'] for r in sel]):.3f}, "
                  f"without the < 0.1 ms cells {np.mean([r['within_10_without_degenerate'] for r in sel]):.3f}")


# ----------------------------------------------------------------------------------------------
# c. BitFusion per-layer regressor
# ----------------------------------------------------------------------------------------------
def section_c(bitfusion: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from tritune.predictors import LayerwiseTablePredictor, bitfusion_fingerprint, table_arrays
    from tritune.predictors.layerwise_table import key_features
    from tritune.predictors.metrics import score_report
    from tritune.targets import BitFusionTable

    table = BitFusionTable(bitfusion)
    rows, fitted = [], {}
    for metric in ("latency_ms", "energy_mj"):
        keys, values = table_arrays(table, metric)
        for holdout_by in ("entry", "shape"):
            t0 = time.perf_counter()
            pred = LayerwiseTablePredictor(metric=metric, holdout_by=holdout_by, refit=holdout_by == "entry").fit(
                keys, values, target=bitfusion_fingerprint(table))
            fit_s = time.perf_counter() - t0
            rows.append({"metric": metric, "holdout_by": holdout_by, "model": "xgboost (log space)", "fit_s": fit_s, **pred.error_})
            if holdout_by == "entry":
                fitted[metric] = pred
            test = pred._split(keys)
            x = np.column_stack([np.ones(len(keys)), key_features(keys)[:, 10:]])
            w = np.linalg.lstsq(x[~test], np.log(values[~test]), rcond=None)[0]
            rows.append({"metric": metric, "holdout_by": holdout_by, "model": "log-linear (reference)",
                         **score_report(values[test], np.exp(x[test] @ w))})
    return {"table": str(bitfusion), "entries": len(table), "rows": rows}, fitted


def print_c(res: dict[str, Any]) -> None:
    print(f"\n## c. BitFusion per-layer regressor ({res['entries']} entries; 20 % held out, seed 0)\n")
    print("| metric | held out by | model | n | MAPE % | within +-5 % | within +-10 % | Spearman |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in res["rows"]:
        print(f"| {r['metric']} | {r['holdout_by']} | {r['model']} | {r['n']} | {r['mape']:.2f} | {r['within_5']:.3f} | {r['within_10']:.3f} | {r['spearman']:.4f} |")


# ----------------------------------------------------------------------------------------------
# d. throughput
# ----------------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any], repeats: int = 5) -> dict[str, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def rate(n: int, t: dict[str, float]) -> dict[str, float]:
    return {"n": n, **t, "per_s_median": n / t["median_s"], "per_s_min": n / t["max_s"], "per_s_max": n / t["min_s"]}


def section_d(data: Path, fitted: dict[str, Any], n_nb201: int, n_mobilenet: int, tile_to: int) -> dict[str, Any]:
    from tritune.predictors import FewShotLatencyPredictor, LayerBatch
    from tritune.spaces import NB201Space, create
    from tritune.targets import NB201Table, NB201TableTarget

    rows = []
    space = NB201Space()
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 15625, n_nb201)
    cells = [space.from_index(i) for i in range(15625)]
    candidates = [cells[i] for i in idx]
    target = NB201TableTarget("help_fpga", path=data)
    values = target.table.column("help_fpga")
    rows.append({"what": "table look-up, int indices (values[idx])", **rate(n_nb201, timed(lambda: values[idx]))})
    rows.append({"what": "table look-up, Candidates (NB201TableTarget.latency)", **rate(n_nb201, timed(lambda: target.latency(candidates)))})
    table = NB201Table(data)
    train = [c for c in table.latency_columns if c.startswith("help_") and c not in HELD_OUT]
    fewshot = FewShotLatencyPredictor.pretrain(table, train)
    sample = fewshot.design(10)
    fewshot.fit(sample, table.column("help_pixel3")[sample])
    rows.append({"what": "few-shot predictor, int indices", **rate(n_nb201, timed(lambda: fewshot.predict(idx)))})
    rows.append({"what": "few-shot predictor, Candidates", **rate(n_nb201, timed(lambda: fewshot.predict(candidates)))})

    mobile = create("mobilenet")
    mrng = np.random.default_rng(0)
    mcands = [mobile.sample(mrng) for _ in range(n_mobilenet)]
    t0 = time.perf_counter()
    networks = [mobile.layers(c) for c in mcands]
    ir_s = time.perf_counter() - t0
    rows.append({"what": "mobilenet: build layer IR (space.layers), once", **rate(n_mobilenet, {"median_s": ir_s, "min_s": ir_s, "max_s": ir_s})})
    rows.append({"what": "mobilenet: pack IR into a LayerBatch", **rate(n_mobilenet, timed(lambda: LayerBatch.from_networks(networks)))})
    batch = LayerBatch.from_networks(networks)
    lat, energy = fitted["latency_ms"], fitted["energy_mj"]

    def cold(pred: Any, b: Any) -> Callable[[], Any]:
        return lambda: (pred.clear_cache(), pred.predict(b))

    what = f"{n_mobilenet} networks ({batch.n_layers} weight layers, {len(batch.keys)} distinct keys)"
    rows.append({"what": f"BitFusion latency, LayerBatch of {what}, cold (regressor memo cleared)", **rate(n_mobilenet, timed(cold(lat, batch)))})
    rows.append({"what": f"BitFusion latency, LayerBatch of {what}, warm (memo filled)", **rate(n_mobilenet, timed(lambda: lat.predict(batch)))})
    reps = max(1, tile_to // n_mobilenet)
    tiled = LayerBatch(batch.keys, np.tile(batch.key_index, reps),
                       (np.arange(reps)[:, None] * n_mobilenet + batch.owner[None, :]).reshape(-1), n_mobilenet * reps)
    what = f"same batch tiled to {tiled.n_networks} networks ({tiled.n_layers} layers)"
    rows.append({"what": f"BitFusion latency, {what}, cold", **rate(tiled.n_networks, timed(cold(lat, tiled)))})
    rows.append({"what": f"BitFusion latency, {what}, warm", **rate(tiled.n_networks, timed(lambda: lat.predict(tiled)))})
    rows.append({"what": f"BitFusion energy, {what}, cold", **rate(tiled.n_networks, timed(cold(energy, tiled)))})
    lat.clear_cache()
    end_to_end = ir_s + timed(lambda: (lat.clear_cache(), lat.predict(LayerBatch.from_networks(networks))))["median_s"]
    return {"rows": rows, "coverage": lat.coverage(batch), "end_to_end_per_s": n_mobilenet / end_to_end}


def print_d(res: dict[str, Any]) -> None:
    print("\n## d. Query throughput (perf_counter, warm-up + 5 repeats; median [min-max])\n")
    print("| query | n | per second | time s |")
    print("|---|---:|---:|---:|")
    for r in res["rows"]:
        print(f"| {r['what']} | {r['n']:,} | {r['per_s_median']:,.0f} [{r['per_s_min']:,.0f}-{r['per_s_max']:,.0f}] | {r['median_s']:.4f} |")
    print(f"\nBitFusion: {res['coverage']:.1%} of the mobilenet layers hit the table exactly, the rest use the regressor. "
          f"End to end (IR + pack + cold predict): {res['end_to_end_per_s']:,.0f} candidates/s, bounded by building the IR.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "derived" / "nb201_joint_latency_accuracy.csv"),
                        help="full NB201 joint table with the 27 HELP columns")
    parser.add_argument("--bitfusion", default=str(REPO.parent / "shared" / "data" / "apq" / "BitFusion_new.b1.dict"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--ks", nargs="+", type=int, default=list(KS))
    parser.add_argument("--nb201-queries", type=int, default=100_000)
    parser.add_argument("--mobilenet-candidates", type=int, default=5_000)
    parser.add_argument("--tile-to", type=int, default=100_000)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "predictors_tables.json"))
    args = parser.parse_args()

    out: dict[str, Any] = {"args": vars(args)}
    out["b"] = section_b(Path(args.data), args.seeds, tuple(args.ks))
    print_b(out["b"])
    out["c"], fitted = section_c(Path(args.bitfusion))
    print_c(out["c"])
    if not args.skip_throughput:
        out["d"] = section_d(Path(args.data), fitted, args.nb201_queries, args.mobilenet_candidates, args.tile_to)
        print_d(out["d"])
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
