"""Accuracy of candidates from a trained supernet (any family's): inherited weights, or a short fine-tune.

* `SupernetAccuracy` (``supernet-accuracy``): the candidate inherits the supernet's weights; BN
  statistics and activation-quantizer ranges are re-estimated for it on a few fixed training
  batches (`Supernet.recalibrate`, as OFA does for each subnet), then it is scored on
  the test split. Seconds per candidate on a CPU at small scale.
* `FinetuneAccuracy` (``supernet-finetune``): the same, after ``epochs`` of training the
  candidate alone from its inherited weights with its compression kept -- masks fixed
  (`Supernet.masks_frozen`), fake quantizers on. The supernet itself is not changed
  (the candidate trains on a copy).

Both are costly evaluators (they spend the search budget), answer a batch of candidates with
one set of calibration batches, and cache results per candidate id. The supernet comes from a
checkpoint (`tritune.spaces.checkpoint.load_checkpoint`) or is passed in; the data set defaults to
the one the checkpoint was trained on.
"""
from __future__ import annotations

import copy
import os
from typing import Any

import torch

from ..spaces.candidate import Candidate
from ..spaces.checkpoint import load_checkpoint
from ..spaces.weight_sharing import Supernet
from .base import Evaluator, Metrics
from .data import ImageData, load_dataset
from .supernet_training import TrainConfig, accuracy, calibration_batches, check_data, train_candidate


def _supernet(checkpoint: str | os.PathLike | None, supernet: Supernet | None, device: str, where: str) -> tuple[Supernet, dict]:
    if (checkpoint is None) == (supernet is None):
        raise ValueError(f"{where}: give exactly one of checkpoint (a file from train_supernet) or supernet")
    if supernet is not None:
        if not (isinstance(supernet, torch.nn.Module) and isinstance(supernet, Supernet)):
            raise ValueError(f"{where}.supernet: expected a supernet (tritune.spaces.weight_sharing.Supernet), got {type(supernet).__name__}")
        return supernet.to(device), {}
    ckpt = load_checkpoint(checkpoint, map_location=device)
    return ckpt.supernet.to(device), ckpt.extra


def _data(dataset: Any, extra: dict, seed: int, where: str) -> ImageData:
    if isinstance(dataset, ImageData):
        return dataset
    if dataset is None:
        dataset = extra.get("data")
        if not dataset:
            raise ValueError(f"{where}.dataset: the checkpoint does not name its data set; pass dataset=")
    return load_dataset(dataset, seed=seed)


class SupernetAccuracy(Evaluator):
    """Top-1 test accuracy (``metric``, in % like the tabular evaluators) with inherited weights.

    ``calib_batches`` batches of ``calib_batch_size`` training images (fixed by ``seed``)
    re-estimate BN statistics and activation ranges per candidate; ``cache`` keeps results by
    candidate id. The supernet's own BN statistics and quantizer ranges are restored after each
    call, so evaluation can interleave with training."""

    cheap = False
    measures_accuracy = True

    def __init__(self, checkpoint: str | os.PathLike | None = None, *, supernet: Supernet | None = None,
                 dataset: Any = None, calib_batches: int = 4, calib_batch_size: int = 128, eval_batch_size: int = 500,
                 metric: str = "accuracy", device: str = "cpu", threads: int = 1, seed: int = 0, cache: bool = True) -> None:
        where = type(self).__name__
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"{where}.metric: {metric!r} must be a non-empty name")
        if int(threads) < 1:
            raise ValueError(f"{where}.threads: {threads!r} must be >= 1")
        self.device, self.threads, self.seed = str(device), int(threads), int(seed)
        self.supernet, extra = _supernet(checkpoint, supernet, self.device, where)
        self.data = _data(dataset, extra, self.seed, where)
        check_data(self.supernet, self.data)
        self.calib = calibration_batches(self.data, calib_batches, calib_batch_size, seed=self.seed, device=self.device)
        self.eval_batch_size = int(eval_batch_size)
        self.metric, self.metrics = metric, (metric,)
        self.cache = bool(cache)
        self._results: dict[str, Metrics] = {}

    def _check(self, candidate: Candidate) -> None:
        if candidate.space != self.supernet.space.name:
            raise ValueError(f"{type(self).__name__}: candidate of space {candidate.space!r}; the supernet is for {self.supernet.space.name!r}")

    def _score(self, candidate: Candidate) -> float:
        self.supernet.recalibrate(candidate, self.calib)
        return 100.0 * accuracy(self.supernet, candidate, self.data.test, batch_size=self.eval_batch_size, device=self.device)

    def _evaluate(self, candidates: list[Candidate]) -> list[Metrics]:
        for c in candidates:
            self._check(c)
        todo = [c for c in dict.fromkeys(candidates) if not (self.cache and c.id in self._results)]
        if todo:
            saved = {k: v.clone() for k, v in self.supernet.named_buffers()}  # BN statistics, quantizer ranges
            threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                for c in todo:
                    self._results[c.id] = {self.metric: self._score(c)}
            finally:
                torch.set_num_threads(threads)
                with torch.no_grad():
                    for k, v in self.supernet.named_buffers():
                        v.copy_(saved[k])
        out = [dict(self._results[c.id]) for c in candidates]
        if not self.cache:
            self._results.clear()
        return out


class FinetuneAccuracy(SupernetAccuracy):
    """Test accuracy (%) after fine-tuning the candidate alone for ``epochs`` epochs from its
    inherited weights (SGD, ``lr`` cosine-decayed, ``batch_size``), masks fixed and fake
    quantization on; then BN recalibration as in `SupernetAccuracy`."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, *, supernet: Supernet | None = None,
                 dataset: Any = None, epochs: float = 1.0, lr: float = 0.01, batch_size: int = 64,
                 calib_batches: int = 4, calib_batch_size: int = 128, eval_batch_size: int = 500, metric: str = "accuracy",
                 device: str = "cpu", threads: int = 1, seed: int = 0, cache: bool = True) -> None:
        super().__init__(checkpoint, supernet=supernet, dataset=dataset, calib_batches=calib_batches, calib_batch_size=calib_batch_size,
                         eval_batch_size=eval_batch_size, metric=metric, device=device, threads=threads, seed=seed, cache=cache)
        if not float(epochs) > 0:
            raise ValueError(f"FinetuneAccuracy.epochs: {epochs!r} must be > 0")
        n = len(self.data.train)
        steps = max(1, int(round(float(epochs) * max(1, n // int(batch_size)))))
        self.train_config = TrainConfig(steps=steps, batch_size=int(batch_size), lr=float(lr), n_random=0, seed=self.seed,
                                        threads=self.threads, grad_clip=5.0)

    def _score(self, candidate: Candidate) -> float:
        net = copy.deepcopy(self.supernet)
        train_candidate(net, candidate, self.data, self.train_config, freeze_masks=True, device=self.device)
        net.recalibrate(candidate, self.calib)
        return 100.0 * accuracy(net, candidate, self.data.test, batch_size=self.eval_batch_size, device=self.device)
