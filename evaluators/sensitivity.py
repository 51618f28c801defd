"""Measuring and using per-layer sensitivity (`tritune.spaces.sensitivity`).

* `measure_sensitivity` -- on a trained supernet, the accuracy drop when one compression gene
  alone takes each choice of its menu, every other gene dense float, on a reference architecture
  (default: the largest). Scored on fixed *training* images (the test split stays for the
  search's accuracy), with BN statistics and activation ranges re-estimated per probe.
* `store_sensitivity` / `load_sensitivity` -- the table in the checkpoint's ``extra`` header
  (the tensors, optimizer state and step are rewritten unchanged).
* `SensitivityDrop` (``sensitivity``) -- a cheap evaluator: the estimated accuracy drop of a
  candidate's plan (`SensitivityTable.estimate`, points) read from the checkpoint header alone,
  for a job constraint such as ``{metric: accuracy_drop, max: 3}`` that rejects crushed
  candidates before the costly accuracy query.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from ..spaces.candidate import Candidate
from ..spaces.compression import LayerCompression
from ..spaces.weight_sharing import Supernet
from ..spaces.checkpoint import load_checkpoint, read_header, save_checkpoint
from ..spaces.sensitivity import EXTRA_KEY, SensitivityTable, bits_part, sparsity_part, table_from_extra
from .base import Evaluator, Metrics
from .supernet_training import TrainConfig, _tensors, calibration_batches, make_optimizer

#: Above this many (gene, choice) probes a table is factored (sparsity choices at float bits,
#: bit-widths dense) unless asked otherwise.
FACTOR_ABOVE = 400
#: At the end of training the table is measured only when it takes at most this many probes (a
#: space with 78 untied slots needs over a thousand; `tritune supernet sensitivity` measures
#: it on request).
TRAINING_PROBES = 600


def _probes(gene_choices: tuple, default: LayerCompression, factored: bool) -> list[LayerCompression]:
    """What to measure for one gene: every choice, or its sparsity parts and bit parts (a choice
    whose parts are not on the gene's menu is measured itself)."""
    others = [c for c in gene_choices if c != default]
    if not factored:
        return others
    menu = set(gene_choices)
    out: dict[LayerCompression, None] = {}
    for c in others:
        parts = [p for p in (sparsity_part(c, default), bits_part(c)) if p != default]
        if all(p in menu for p in parts):
            out.update(dict.fromkeys(parts))
        else:
            out[c] = None
    return list(out)


@torch.no_grad()
def _accuracy(supernet: Supernet, candidate: Candidate, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    was = supernet.training
    supernet.eval()
    try:
        correct = sum(int((supernet(x[i:i + batch_size], candidate).argmax(1) == y[i:i + batch_size]).sum()) for i in range(0, len(x), batch_size))
    finally:
        supernet.train(was)
    return 100.0 * correct / max(1, len(x))


def _plan(supernet: Supernet, reference: Candidate | None, factored: bool | None) -> tuple[Candidate, list, bool]:
    """The reference, the (gene, probe) pairs to measure, and whether the table is factored."""
    space = supernet.space
    ref = supernet.sampler.largest() if reference is None else space.validate(reference)
    genome = space.to_genome(ref)
    genes = [g for g in space.genes() if g.name.startswith("comp:") and g.is_active(genome)]
    if not genes:  # a space without compression genes has nothing to measure
        return ref, [], bool(factored)
    default = space.menu.default()
    if factored is None:
        factored = sum(len(g.choices) - 1 for g in genes) > FACTOR_ABOVE
    return ref, [(g, p) for g in genes for p in _probes(g.choices, default, factored)], bool(factored)


def planned_probes(supernet: Supernet, reference: Candidate | None = None, factored: bool | None = None) -> int:
    """How many probes `measure_sensitivity` would run (each a recalibration and an evaluation)."""
    return len(_plan(supernet, reference, factored)[1])


def measure_sensitivity(supernet: Supernet, data: Any, *, reference: Candidate | None = None, factored: bool | None = None,
                        images: int = 512, calib_batches: int = 1, calib_batch_size: int = 128, seed: int = 0, threads: int | None = None,
                        progress: bool = False) -> SensitivityTable:
    """The `SensitivityTable` of ``supernet`` on ``data``'s training images.

    ``images`` fixed training images score each probe (accuracy in %, paired with the reference's
    on the same images); ``calib_batches`` x ``calib_batch_size`` other training images
    re-estimate BN statistics and activation ranges per probe. ``factored``: None measures
    every choice when there are at most `FACTOR_ABOVE` of them, otherwise the factored table.
    The supernet's buffers are restored afterwards."""
    space = supernet.space
    ref, jobs, factored = _plan(supernet, reference, factored)
    genome = space.to_genome(ref)
    genes = list(dict.fromkeys(g for g, _ in jobs))
    x_all, y_all = _tensors(data)
    order = np.random.default_rng([int(seed), 0x5E45]).permutation(len(x_all))[: int(images)]
    x, y = x_all[torch.from_numpy(order)], y_all[torch.from_numpy(order)]
    calib = calibration_batches(data, calib_batches, calib_batch_size, seed=seed + 1)
    saved = {k: v.clone() for k, v in supernet.named_buffers()}
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    try:
        supernet.recalibrate(ref, calib)
        base = _accuracy(supernet, ref, x, y)
        drops: dict[str, dict[str, float]] = {g.name[5:]: {} for g in genes}
        from tqdm.auto import tqdm

        for gene, probe in tqdm(jobs, desc="sensitivity", disable=not progress, leave=False):
            cand = space.from_genome(space.canonical_genome({**genome, gene.name: probe}))
            supernet.recalibrate(cand, calib)
            drops[gene.name[5:]][probe.token] = round(base - _accuracy(supernet, cand, x, y), 4)
    finally:
        torch.set_num_threads(before)
        with torch.no_grad():
            for k, v in supernet.named_buffers():
                v.copy_(saved[k])
    return SensitivityTable(tie=space.tie, reference=ref, base=base, drops=drops, images=len(x), factored=bool(factored),
                            seconds=time.perf_counter() - t0, extra={"probes": len(jobs), "calib_images": calib_batches * calib_batch_size})


def store_sensitivity(checkpoint: str | os.PathLike, table: SensitivityTable) -> None:
    """Rewrite ``checkpoint`` with ``table`` in its ``extra`` header; weights, optimizer state
    (when it has one) and step stay as they were, so training can still resume from it."""
    header = read_header(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    optimizer = None
    if header.get("optimizer") is not None:
        train = TrainConfig.from_json((ckpt.extra.get("train") or {}))
        optimizer = make_optimizer(ckpt.supernet, train)
        ckpt = load_checkpoint(checkpoint, ckpt.supernet, optimizer=optimizer)
    extra = dict(ckpt.extra)
    extra[EXTRA_KEY] = table.to_json()
    save_checkpoint(checkpoint, ckpt.supernet, optimizer=optimizer, step=ckpt.step, extra=extra)


def load_sensitivity(checkpoint: str | os.PathLike) -> SensitivityTable | None:
    """The table a checkpoint holds (None when none was measured); reads the header only."""
    return table_from_extra(read_header(checkpoint).get("extra") or {}, f"supernet checkpoint {str(checkpoint)!r}")


class SensitivityDrop(Evaluator):
    """Estimated accuracy drop (points) of a candidate's compression plan, from the sensitivity
    table in a supernet checkpoint (``metric``, default ``accuracy_drop``). Cheap: a header read
    at construction, then sums of table entries."""

    cheap = True
    measures_accuracy = True

    def __init__(self, checkpoint: str | os.PathLike, *, metric: str = "accuracy_drop") -> None:
        where = "evaluator sensitivity"
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"{where}.metric: {metric!r} must be a non-empty name")
        header = read_header(checkpoint)
        table = table_from_extra(header.get("extra") or {}, f"supernet checkpoint {str(checkpoint)!r}")
        if table is None:
            raise ValueError(f"{where}: checkpoint {str(checkpoint)!r} holds no sensitivity table; "
                             f"run `tritune supernet sensitivity JOB.yaml` (or train with the default settings) first")
        from ..spaces.registry import create

        self.table, self.checkpoint = table, str(checkpoint)
        self.metric, self.metrics = metric, (metric,)
        self.space = create(header["space"]["name"], **header["space"]["config"])
        self.table.check_space(self.space, where)

    def bind_space(self, space: Any) -> None:
        """The job's space (its tie groups must be the ones measured)."""
        self.table.check_space(space, "evaluator sensitivity")
        self.space = space

    def _evaluate(self, candidates: list[Candidate]) -> list[Metrics]:
        return [{self.metric: self.table.estimate(self.space, c)} for c in candidates]
