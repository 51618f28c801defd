"""Export front members of a run, or any (candidate, weights), to files a device runs.

`export_model` writes one folder for one candidate whose standalone network is given (inherited
supernet weights, or fine-tuned ones from a later stage); `export_run` picks members of a run's
Pareto front and exports each with the weights the search scored it with.

A folder ``<out>/<candidate_id>/`` holds ``model.onnx`` (always), for ``codegen-cpu`` also
``kernels/``, ``weights.npz`` and ``codegen.json`` (`tritune.targets.codegen_cpu.load_exported`
runs them), and ``manifest.json``. Each file is verified on the data set's test split against the
torch network it came from (max abs difference of the logits, top-1 agreement), and its own
accuracy is measured. A folder is written whole or not at all (built beside, then renamed).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ...evaluators.data import ImageData
from ...evaluators.registry import latency_target_options
from ...kernels.timing import torch_threads
from ...spaces.candidate import Candidate
from ...spaces.images import fit_input
from ...spaces.weight_sharing import DeployableNetwork
from . import manifest as mf
from .onnx_model import build_onnx, layer_notes
from .runs import ExportError, FrontMember, RunData, file_sha256, load_run
from .timing import measure_folders

#: Targets an export builds for (both run on this machine, so their latency is measured too).
TARGETS = ("ort-cpu", "codegen-cpu")
#: Target options a run directory may set for an export; others (a compiler command, a cache
#: folder, autotuning) are the exporting machine's business and never read from a run.
TARGET_OPTIONS = {"ort-cpu": ("threads", "exporter", "protocol"), "codegen-cpu": ("threads", "fuse_min_bytes", "protocol")}
EVAL_BATCH = 500


@dataclass(frozen=True)
class SearchScores:
    """What the search (or a pipeline stage) reported for a candidate: ``accuracy`` (%),
    ``latency_ms`` and ``latency_source`` (which target or predictor produced it), plus
    where it came from (``origin``: run directory, trial, rank, knee, stage)."""

    accuracy: float | None = None
    latency_ms: float | None = None
    latency_source: dict[str, Any] | None = None
    origin: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportedModel:
    """An exported folder and its manifest."""

    directory: Path
    manifest: dict[str, Any]

    @property
    def candidate_id(self) -> str:
        return str(self.manifest["candidate_id"])


# ----- evaluation ---------------------------------------------------------------------------------
def _torch_logits(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad(), torch_threads(1):
        return np.concatenate([net(x[i:i + EVAL_BATCH]).numpy() for i in range(0, len(x), EVAL_BATCH)])


def _single_logits(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(run(x[i:i + 1]), dtype=np.float32).reshape(1, -1) for i in range(len(x))])


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(logits.argmax(1) == labels))


def _verification(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray, runtime: str) -> dict[str, Any]:
    return {"runtime": runtime, "against": "the torch network it was exported from (the supernet's extract)", "images": int(len(labels)),
            "accuracy": _accuracy(logits, labels), "max_abs_diff": float(np.max(np.abs(logits - reference))),
            "top1_agreement": float(np.mean(logits.argmax(1) == reference.argmax(1)))}


def _target(name: str, options: Mapping[str, Any] | None) -> Any:
    from ...targets.registry import create_target

    if name not in TARGETS:
        raise ExportError(f"export --target: {name!r} not allowed; allowed: {', '.join(TARGETS)}")
    opts = {k: v for k, v in dict(options or {}).items() if k in TARGET_OPTIONS[name]}
    try:
        return create_target(name, **opts)
    except ValueError as exc:
        raise ExportError(f"export --target {name}: {exc}") from None


def _files(directory: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if path.name != "manifest.json":
            out[path.relative_to(directory).as_posix()] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return out


def _replace_dir(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----- one model ----------------------------------------------------------------------------------
def codegen_notes(layers: Sequence[Any]) -> dict[str, dict[str, str]]:
    """How codegen-cpu runs each weighted layer: integer kernels where its bits allow, else float."""
    from ...targets.codegen_int8 import runs_int8

    notes = {}
    for L in layers:
        if not L.has_weights:
            continue
        if runs_int8(L):
            notes[L.name] = {"runs_as": "int8", "weight_storage": f"{'4' if L.w_bits <= 4 else '8'}-bit codes per output channel, packed in its pattern",
                             "input_activation": "uint8 codes on the layer's calibrated grid"}
        else:
            notes[L.name] = {"runs_as": "float32", "weight_storage": "float32 (dequantized), packed in its pattern",
                             "input_activation": "float32"}
    return notes


def export_model(candidate: Candidate, network: DeployableNetwork, *, data: ImageData, calibration: Sequence[torch.Tensor],
                 out_dir: str | os.PathLike, space: Any, target: str = "ort-cpu", target_options: Mapping[str, Any] | None = None,
                 scores: SearchScores | None = None, weights: Mapping[str, Any] | None = None, measure: bool = True,
                 progress: Callable[[str], None] | None = None) -> ExportedModel:
    """Export one candidate's standalone network into ``out_dir/<candidate_id>/``.

    ``network``: the candidate's standalone network with the weights to ship (a
    `tritune.spaces.weight_sharing.DeployableNetwork`: the supernet's ``extract`` after
    recalibration, or a fine-tuned one); ``calibration``: the image batches its normalisation
    statistics and activation ranges were set on (at the data set's size; they also calibrate
    the int8 graph's remaining tensors);
    ``data``: the data set whose test split verifies the files; ``space``: the configured space;
    ``scores``: what the search reported (`SearchScores`); ``weights``: where the weights came
    from (manifest ``weights``); ``measure``: time the files on this machine (and profile them
    per layer)."""
    say = progress or (lambda _msg: None)
    tgt = _target(target, target_options)
    if not tgt.accepts(space):
        raise ExportError(f"export --target {target}: cannot build space {space.name!r}; it builds {tgt.builds_what}")
    if not isinstance(network, DeployableNetwork):
        raise ExportError(f"export: {type(network).__name__} is not a deployable network (tritune.spaces.weight_sharing.DeployableNetwork)")
    scores = scores or SearchScores()
    res = int(network.input_size)
    shape = (1, int(data.channels), res, res)
    x_test = fit_input(data.test.tensors[0], res)
    labels = data.test.tensors[1].numpy()
    calib = torch.cat([fit_input(b.cpu(), res) for b in calibration]).numpy()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{candidate.id}.", dir=root))
    try:
        network = network.eval()
        say(f"{candidate.id}: torch reference")
        reference = _torch_logits(network, x_test)
        say(f"{candidate.id}: model.onnx")
        onnx_run = build_onnx(network, shape, [calib[i:i + 1] for i in range(len(calib))], threads=getattr(tgt, "threads", 1),
                              exporter=getattr(tgt, "exporter", "torchscript"))
        import onnx

        onnx.checker.check_model(onnx.load_from_string(onnx_run.onnx_bytes), full_check=True)
        (tmp / "model.onnx").write_bytes(onnx_run.onnx_bytes)
        x_np = x_test.numpy()
        import onnxruntime

        verification = {"model.onnx": _verification(_single_logits(onnx_run.run, x_np), reference, labels,
                                                    f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)")}
        accuracy_file = "model.onnx"
        if target == "codegen-cpu":
            from ...targets.codegen_cpu import save_exported

            say(f"{candidate.id}: codegen-cpu kernels")
            built = tgt.build(network, input_shape=shape, name=candidate.id)
            save_exported(built, network, tmp)
            verification["codegen"] = _verification(_single_logits(built.run, x_np), reference, labels,
                                                    "tritune codegen-cpu (generated C kernels)")
            accuracy_file = "codegen"
        doc: dict[str, Any] = {
            "format": mf.FORMAT, "schema": mf.SCHEMA, "tritune_version": mf.tritune_version(),
            "candidate_id": candidate.id, "candidate": candidate.to_json(),
            "space": {"name": space.name, "config": space.config()},
            "dataset": {"name": data.name, "test_images": int(len(labels)), "image_size": data.image_size, "channels": data.channels,
                        "num_classes": data.num_classes, "mean": list(data.mean), "std": list(data.std)},
            "input": {"name": onnx_run.input_name, "shape": list(shape), "dtype": "float32",
                      "preprocessing": f"normalise with dataset.mean / dataset.std, then resize to {res}x{res} "
                                       "(bilinear, align_corners=False, antialiased when shrinking: tritune.spaces.images.fit_input)"},
            "weights": dict(weights or {}),
            "accuracy": verification[accuracy_file]["accuracy"],
            "accuracy_of": accuracy_file,
            "search_accuracy": scores.accuracy,
            "torch_accuracy": _accuracy(reference, labels),
            "verification": verification,
            "latency_predicted_ms": scores.latency_ms,
            "latency_predictor": scores.latency_source,
            "latency_measured_ms": None,
            "latency_measurement": None,
            "layer_latency": None,
            "target": target,
            "target_fingerprint": tgt.fingerprint(),
            "size_bytes": len(onnx_run.onnx_bytes),
            "size_of": ["model.onnx"],
            "origin": dict(scores.origin),
            "layers": mf.layer_table(network, layer_notes(network.layers) if target == "ort-cpu" else codegen_notes(network.layers)),
        }
        if target == "codegen-cpu":  # what a device loads: the compiled kernels (weights inside) and the packed weights
            shipped = sorted(p for p in tmp.rglob("*") if p.suffix == ".so" or p.name == "weights.npz")
            doc["size_bytes"] = sum(p.stat().st_size for p in shipped)
            doc["size_of"] = ["kernels/*.so", "weights.npz"]
        doc["files"] = _files(tmp)
        (tmp / "manifest.json").write_text(mf.dumps(doc))
        final = root / candidate.id
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    exported = ExportedModel(final, mf.jsonable(doc))
    if measure:
        say(f"{candidate.id}: timing on {target}")
        exported = time_exported([exported], target, target_options)[0]
    return exported


def time_exported(models: Sequence[ExportedModel], target: str, target_options: Mapping[str, Any] | None = None) -> list[ExportedModel]:
    """Time exported models together on this machine (`measure_folders`: every file in the same
    fresh processes, so a slow phase of the machine cannot favour one) and write the timings and
    per-layer profiles into their manifests."""
    timings = measure_folders([m.directory for m in models], target, target_options)
    out = []
    for model, timing in zip(models, timings):
        doc = {**model.manifest, **timing}
        doc["layers"] = [{**row, "latency_ms": timing["layer_latency"]["ms"].get(row["name"])} for row in doc["layers"]]
        path = model.directory / "manifest.json"
        tmp = path.with_name(".manifest.json.tmp")
        tmp.write_text(mf.dumps(doc))
        tmp.replace(path)
        out.append(ExportedModel(model.directory, mf.jsonable(doc)))
    return out


# ----- a run --------------------------------------------------------------------------------------
class SupernetWeights:
    """The weights a run's ``supernet-accuracy`` evaluator scored candidates with: its checkpoint
    (checked against the run's record), data set and recalibration settings, rebuilt as data."""

    def __init__(self, run: RunData) -> None:
        from ...evaluators.supernet_accuracy import SupernetAccuracy
        from ...spaces.checkpoint import read_header
        from .runs import SCORING_OPTIONS, SUPERNET_KINDS, check_input, recorded_input, safe_dataset

        spec = run.evaluator(SUPERNET_KINDS)
        if spec is None:
            other = run.evaluator(("supernet-finetune",))
            if other is not None:
                raise ExportError(f"run directory {str(run.run_dir)!r}: its accuracy comes from supernet-finetune, whose fine-tuned "
                                  "weights a search does not keep; export them with tritune.search.export.export_model(candidate, network, ...)")
            raise ExportError(f"run directory {str(run.run_dir)!r}: no supernet-accuracy evaluator; allowed: runs that score "
                              "candidates with a supernet checkpoint (export needs the weights the search used)")
        if not isinstance(spec.get("checkpoint"), str) or not spec["checkpoint"]:
            raise ExportError(f"run directory {str(run.run_dir)!r}: evaluator supernet-accuracy names no checkpoint file")
        path, record = recorded_input(run, spec["checkpoint"])
        digest = check_input(path, record, "supernet checkpoint")
        dataset = spec.get("dataset") or read_header(path).get("extra", {}).get("data")
        dataset = safe_dataset(dataset, "evaluator supernet-accuracy.dataset")
        options = {k: spec[k] for k in SCORING_OPTIONS if k in spec}
        self.evaluator = SupernetAccuracy(str(path), dataset=dataset, threads=1, cache=False, **options)
        self.metric = self.evaluator.metric
        self.info = {"source": "supernet checkpoint (inherited weights, BN and activation ranges recalibrated per candidate)",
                     "checkpoint": str(path), "sha256": digest, "checked_against_run": record is not None,
                     "dataset": dataset, "recalibration": {"batches": len(self.evaluator.calib),
                                                           "batch_size": int(self.evaluator.calib[0].shape[0]),
                                                           "seed": self.evaluator.seed}}

    @property
    def data(self) -> ImageData:
        return self.evaluator.data

    @property
    def calibration(self) -> list[torch.Tensor]:
        return list(self.evaluator.calib)

    def subnet(self, candidate: Candidate) -> DeployableNetwork:
        """The candidate's standalone network as the search scored it (the supernet's ``extract``)."""
        supernet = self.evaluator.supernet
        if candidate.space != supernet.space.name:
            raise ExportError(f"candidate {candidate.id}: space {candidate.space!r}; the checkpoint's supernet is for "
                              f"{supernet.space.name!r}")
        if not callable(getattr(supernet, "extract", None)):
            raise ExportError(f"space {supernet.space.name!r}: its supernet has no extract(candidate, batches), so its "
                              "candidates cannot be exported (tritune.spaces.weight_sharing)")
        with torch_threads(1):
            return supernet.extract(candidate, batches=self.evaluator.calib)


def _latency_source(run: RunData) -> tuple[str | None, str, dict[str, Any]]:
    """(target name, metric, source description) of the run's latency evaluator."""
    spec = run.latency_evaluator()
    if spec is None:
        return None, "latency", {}
    options = latency_target_options(spec)
    name = spec.get("target") if isinstance(spec.get("target"), str) else None
    return name, str(spec.get("metric", "latency")), {
        "kind": "target", "name": name, "options": options,
        "how": "measured by the search on the target's own build of the candidate (random seeded weights)"}


def export_run(run_dir: str | os.PathLike, *, select: str | int = "knee", target: str | None = None,
               out: str | os.PathLike | None = None, measure: bool = True,
               progress: bool | Callable[[str], None] = False) -> list[ExportedModel]:
    """Export members of a run's Pareto front: ``select`` is ``"knee"`` (default), ``"all"`` or a
    rank (0 = best by the first objective). ``target``: ``ort-cpu`` or ``codegen-cpu`` (default:
    the run's latency target when it is one of them, else ``ort-cpu``); ``out``: default
    ``RUN_DIR/export``; ``progress``: a progress bar (True) or a function told each step."""
    from tqdm.auto import tqdm

    run = load_run(run_dir)
    latency_target, latency_metric, latency_source = _latency_source(run)
    target = target or (latency_target if latency_target in TARGETS else "ort-cpu")
    options = next((dict(e) for e in run.job.evaluators if e.get("kind") == "latency" and e.get("target") == target), {})
    weights = SupernetWeights(run)
    space = weights.evaluator.supernet.space
    out_dir = Path(out) if out is not None else run.run_dir / "export"
    final = final_front_members(run.run_dir, select)
    if final is not None:
        return _export_final(final, run, weights, target=target, options=options, out_dir=out_dir, measure=measure, progress=progress)
    members = run.select(select)
    results = []
    bar = tqdm(members, desc=f"export [{target}]", unit="model", disable=progress is not True, leave=True)
    say = progress if callable(progress) else (lambda msg: bar.set_postfix_str(msg, refresh=True)) if progress else None
    for member in bar:
        record = member.record
        same_target = latency_target == target
        scores = SearchScores(
            accuracy=record.metrics.get(weights.metric),
            latency_ms=record.metrics.get(latency_metric) if same_target else None,
            latency_source=latency_source if same_target else None,
            origin={"run_dir": str(run.run_dir), "stage": "search", "trial": record.number, "rank": member.rank,
                    "knee": member.knee, "metrics": dict(record.metrics)},
        )
        results.append(export_model(member.candidate, weights.subnet(member.candidate), data=weights.data,
                                    calibration=weights.calibration, out_dir=out_dir, space=space, target=target,
                                    target_options=options, scores=scores, weights=weights.info, measure=False, progress=say))
    bar.close()
    return _timed(results, target, options, measure, say)


def _timed(models: list[ExportedModel], target: str, options: Mapping[str, Any], measure: bool,
           say: Callable[[str], None] | None) -> list[ExportedModel]:
    if not measure or not models:
        return models
    if say is not None:
        say(f"timing {len(models)} model(s) on {target}")
    return time_exported(models, target, options)


def final_front_members(run_dir: Path, select: str | int) -> list[dict[str, Any]] | None:
    """The selected models of a staged run's final front (``RUN_DIR/final.json``: fine-tuned,
    measured), best accuracy first for ranks; None for a run without one."""
    path = Path(run_dir) / "final.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        models = sorted(doc["front"], key=lambda m: -float(m["accuracy"]))
        ids = [str(m["candidate_id"]) for m in models]
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{str(path)!r}: not a final-front file of a staged run ({exc})") from None
    if not models:
        raise ExportError(f"{str(path)!r}: the final front is empty (no fine-tuned model was measured)")
    if select == "all":
        return models
    if select == "knee":
        return [m for m, cid in zip(models, ids) if cid == doc.get("knee")] or models[:1]
    if isinstance(select, bool) or not isinstance(select, int) or not 0 <= select < len(models):
        raise ExportError(f"export --rank: {select!r} not allowed; allowed: 0..{len(models) - 1} (the final front has {len(models)} members)")
    return [models[select]]


def _export_final(models: list[dict[str, Any]], run: Any, weights: SupernetWeights, *, target: str, options: dict[str, Any],
                  out_dir: Path, measure: bool, progress: bool | Callable[[str], None]) -> list[ExportedModel]:
    """Export fine-tuned models of a staged run's final front from their fine-tuning states,
    each checked against the weights the front stage exported and measured."""
    from tqdm.auto import tqdm

    from ...evaluators.finetune import Finetuner, FinetuneStateError

    stored = json.loads((run.run_dir / "final.json").read_text())
    final_target = stored.get("target")
    results = []
    bar = tqdm(models, desc=f"export [{target}]", unit="model", disable=progress is not True, leave=True)
    say = progress if callable(progress) else (lambda msg: bar.set_postfix_str(msg, refresh=True)) if progress else None
    for rank, model in enumerate(bar):
        cid = str(model["candidate_id"])
        state = run.run_dir / "finetune" / cid / "state.safetensors"
        if not state.is_file():
            raise ExportError(f"run directory {str(run.run_dir)!r}: fine-tuned weights of {cid} missing ({str(state)!r})")
        digest = file_sha256(state)
        front_manifest = run.run_dir / "export" / cid / "manifest.json"
        if front_manifest.is_file():
            expected = mf.read_manifest(front_manifest).get("weights", {}).get("sha256")
            if expected and expected != digest:
                raise ExportError(f"{str(state)!r}: changed since the front stage measured it (sha256 {digest[:12]}, "
                                  f"expected {expected[:12]}); run the pipeline again with --resume")
        try:
            tuner = Finetuner.load_state(state, weights.data)
        except FinetuneStateError as exc:
            raise ExportError(str(exc)) from None
        candidate = Candidate.from_json(model["candidate"])
        same_target = final_target == target
        scores = SearchScores(accuracy=float(model["finetuned_accuracy"]),
                              latency_ms=float(model["latency_ms"]) if same_target else None,
                              latency_source=f"measured by the front stage on {final_target}" if same_target else None,
                              origin={"run_dir": str(run.run_dir), "stage": "front", "rank": rank, "knee": cid == stored.get("knee"),
                                      "front_accuracy": model.get("accuracy"), "search_metrics": dict(model.get("search_metrics") or {})})
        info = {"source": "fine-tuned by the pipeline's finetune stage", "state": str(state), "sha256": digest}
        results.append(export_model(candidate, tuner.deployable(), data=weights.data, calibration=weights.calibration, out_dir=out_dir,
                                    space=weights.evaluator.supernet.space, target=target, target_options=options, scores=scores,
                                    weights=info, measure=False, progress=say))
    bar.close()
    return _timed(results, target, options, measure, say)


__all__ = ["ExportedModel", "FrontMember", "SearchScores", "SupernetWeights", "TARGETS", "export_model", "export_run", "time_exported"]
