"""The search loop's bookkeeping, shared by every executor.

`SearchDriver` hands out numbered tasks and takes their results; executors only move candidates
to wherever they are evaluated. Two rules make runs reproducible and resumable:

* **Batch-synchronous asking.** The strategy is asked ``batch_size`` candidates at once and is
  told their results in ask order only after the whole batch is back. The sequence of trials is
  then a function of (strategy, seed, batch size) alone, not of worker timing, so the in-process
  and Ray executors run the same trials.
* **Replay on resume.** A resumed run rebuilds the strategy from its seed and replays the ask/tell
  sequence; trials already in the store are told from the store (and checked to be the same
  candidate), so a completed trial is neither lost nor re-run.

A task whose worker died is handed out again (`retry`), a bounded number of times, under the
same trial number, so the trial sequence is the one a run without the death would have had.
A run whose first ``infeasible_limit`` trials all broke a constraint stops with
`NoFeasibleCandidates` instead of trying up to ``max_trials``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from ..spaces import Candidate
from .store import TrialRecord, TrialStore
from .strategies.base import NoFeasibleCandidates, Outcome, Proposal, Strategy


@dataclass(frozen=True)
class Task:
    number: int
    candidate: Candidate


class ResumeMismatch(ValueError):
    """The replayed strategy proposed a different candidate than the store holds (the job's code
    or a library changed since the run started)."""




class SearchDriver:
    FINISHED = "finished"

    def __init__(
        self,
        strategy: Strategy,
        store: TrialStore,
        budget: int,
        batch_size: int = 1,
        max_trials: int | None = None,
        on_record: Callable[[TrialRecord, bool], None] | None = None,
        max_attempts: int = 3,
        infeasible_limit: int | None = None,
    ) -> None:
        if budget <= 0:
            raise ValueError(f"budget.evaluations: {budget} must be a positive integer")
        if batch_size <= 0:
            raise ValueError(f"batch_size: {batch_size} must be a positive integer")
        self.strategy, self.store = strategy, store
        self.budget, self.batch_size = int(budget), int(batch_size)
        self.max_trials = int(max_trials) if max_trials else 50 * self.budget
        self.max_attempts = int(max_attempts)
        self.infeasible_limit = int(infeasible_limit) if infeasible_limit else max(200, 10 * self.batch_size)
        self.on_record = on_record
        self._attempts: dict[int, int] = {}
        self._feasible_seen = False
        self._stored = store.finished()
        self._number = 0
        self._evaluations = 0
        self._batch: list[tuple[int, Proposal]] = []
        self._results: dict[int, TrialRecord] = {}
        self._queue: list[Task] = []
        self.replayed = 0

    # ----- public ---------------------------------------------------------------------------------
    @property
    def evaluations(self) -> int:
        """Completed (feasible, costly) evaluations: the budget's unit."""
        return self._evaluations

    @property
    def done(self) -> bool:
        return not self._batch and (self._evaluations >= self.budget or self._number >= self.max_trials)

    def next_task(self) -> Task | str | None:
        """A task to evaluate, None while the current batch is still out, or FINISHED."""
        while not self._queue:
            if self._batch:
                return None
            if self.done:
                return self.FINISHED
            if not self._feasible_seen and self._number >= self.infeasible_limit:
                raise NoFeasibleCandidates(f"none of the first {self._number} trials met the constraints")
            self._open_batch()
        task = self._queue.pop(0)
        self.store.mark_running(task.number, task.candidate)
        return task

    def complete(self, number: int, status: str, metrics: dict[str, float], error: str = "", started: float = 0.0, worker: str = "") -> None:
        """Record a finished evaluation (persisted at once), and close the batch when it is full."""
        candidate = next(p.candidate for n, p in self._batch if n == number)
        record = TrialRecord(number, candidate, status, dict(metrics), error, started or time.time(), time.time(), worker)
        self.store.finish(record)
        self._accept(record, replayed=False)

    def retry(self, number: int, reason: str) -> None:
        """The evaluation of trial ``number`` was lost with its worker (not an evaluation error):
        hand the same task out again, or, after ``max_attempts`` losses, record it as failed."""
        candidate = next(p.candidate for n, p in self._batch if n == number)
        self._attempts[number] = self._attempts.get(number, 1) + 1
        if self._attempts[number] > self.max_attempts:
            self.complete(number, "failed", {}, f"lost its worker {self.max_attempts} times; last: {reason}")
            return
        self._queue.insert(0, Task(number, candidate))

    # ----- internals ------------------------------------------------------------------------------
    def _open_batch(self) -> None:
        size = min(self.batch_size, self.budget - self._evaluations, self.max_trials - self._number)
        for _ in range(max(1, size)):
            proposal = self.strategy.ask()
            number = self._number
            self._number += 1
            self._batch.append((number, proposal))
            stored = self._stored.get(number)
            if stored is None:
                self._queue.append(Task(number, proposal.candidate))
            elif stored.candidate != proposal.candidate:
                raise ResumeMismatch(
                    f"trial {number}: the store holds candidate {stored.candidate.id} but the strategy now proposes "
                    f"{proposal.candidate.id}; the job, the code or a library version changed since the run started"
                )
        for number, _ in list(self._batch):
            if number in self._stored and number not in self._results:
                self._accept(self._stored[number], replayed=True)

    def _accept(self, record: TrialRecord, replayed: bool) -> None:
        self._results[record.number] = record
        if record.status == "complete":
            self._feasible_seen = True
        if replayed:
            self.replayed += 1
        if self.on_record is not None:
            self.on_record(record, replayed)
        if all(n in self._results for n, _ in self._batch):
            for n, proposal in self._batch:
                rec = self._results.pop(n)
                if rec.status == "complete":
                    self._evaluations += 1
                metrics = rec.metrics if rec.status != "failed" else None
                self.strategy.tell(proposal.key, Outcome(metrics, feasible=rec.status == "complete"))
            self._batch = []
