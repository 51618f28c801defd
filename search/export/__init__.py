"""Export: the best subnets of a search as files a device runs, verified and measured.

* `export_run(run_dir, select="knee" | "all" | rank, target=..., out=...)` -- members of a run's
  Pareto front, with the weights the search scored them with;
* `export_model(candidate, subnet, data=..., calibration=..., out_dir=..., space=...)` -- one
  candidate with any weights (a later stage's fine-tuned ones, say);
* `read_manifest(path)` -- a ``manifest.json`` back, checked.

See `tritune.search.export.exporter` for what a folder holds and
`tritune.targets.codegen_cpu.load_exported` for running a ``codegen-cpu`` export.
"""
from .exporter import TARGETS, ExportedModel, SearchScores, SupernetWeights, export_model, export_run, time_exported
from .manifest import FORMAT, SCHEMA, TIMING_FIELDS, ManifestError, read_manifest, without_timings
from .runs import ExportError, FrontMember, RunData, load_run

__all__ = [
    "FORMAT", "SCHEMA", "TARGETS", "TIMING_FIELDS", "ExportError", "ExportedModel", "FrontMember", "ManifestError", "RunData",
    "SearchScores", "SupernetWeights", "export_model", "export_run", "load_run", "read_manifest", "time_exported",
    "without_timings",
]
