"""The latency measurement protocol: warm up, then interleaved rounds, minimum of round medians.

Why this protocol (batch-1 onnxruntime on a CPU, MobileNetV3-like models): single runs of
sub-millisecond models vary 20-30% between sessions, 224-px models 1-5%. Timing every model in
rounds *interleaved* with the other models of a group spreads slow phases of the machine (another
process, frequency changes) over all models instead of one, and the minimum over rounds of the
per-round median ignores rounds that a disturbance hit. With 1 thread, 10 warm-up runs and at
least 5 rounds of 20 runs, two repeats of the same model agree within +-10% for 98% of models.

`measure_many(runnables, protocol)` runs it over a group of models and returns one `Measurement`
(a JSON-able dataclass) per model (`measure_passes`: over several groups, several times):

* ``latency_ms``: min over rounds of the round's median run time -- the number to use;
* ``median_ms``, ``p10_ms``, ``p90_ms``: over every timed run of every round;
* ``spread``: (max round median - min round median) / min round median, a per-model noise gauge;
* ``round_medians_ms``: the raw round medians, in round order;
* ``cpu_latency_ms``, ``cpu_share`` (1 thread): the latency statistic on thread CPU time, and
  CPU / wall time -- a share well below 1 flags a measurement taken while other processes held
  the core (wall-clock numbers are then inflated; CPU time mostly is not).

A *runnable* is a zero-argument callable that runs the model once, or an object with a
``bench_fn()`` method returning one (``OrtRunnable``). Objects with a ``threads`` attribute must
match ``protocol.threads`` (threads are fixed when a session is created, so a mismatch means the
numbers would not be what the protocol says).
"""
from __future__ import annotations

import contextlib
import gc
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np


@dataclass(frozen=True)
class Protocol:
    """How models are timed (see the module docstring for why these defaults)."""

    threads: int = 1
    warmup: int = 10
    rounds: int = 5
    runs_per_round: int = 20

    def __post_init__(self) -> None:
        for name in ("threads", "rounds", "runs_per_round"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"protocol.{name}: {value!r} must be an integer >= 1")
        if not isinstance(self.warmup, int) or isinstance(self.warmup, bool) or self.warmup < 0:
            raise ValueError(f"protocol.warmup: {self.warmup!r} must be an integer >= 0")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Protocol":
        allowed = {"threads", "warmup", "rounds", "runs_per_round"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"protocol: unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
        return cls(**data)


@dataclass
class Measurement:
    """Timing statistics of one model, in milliseconds (JSON-able: see `to_json`)."""

    name: str
    latency_ms: float
    median_ms: float
    p10_ms: float
    p90_ms: float
    spread: float
    round_medians_ms: list[float] = field(default_factory=list)
    runs: int = 0
    warmup: int = 0
    threads: int | None = None
    #: Same statistic as ``latency_ms`` on the calling thread's CPU time (1 thread only: the
    #: session then computes on the calling thread). Time the process spent descheduled does not
    #: count, so on a shared machine it is the steadier number.
    cpu_latency_ms: float | None = None
    #: CPU time / wall time over all timed runs (1 thread): ~1.0 when the process had its core to
    #: itself; well below 1 means other processes took the core and ``latency_ms`` is inflated.
    cpu_share: float | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Measurement":
        return cls(**data)


def _bench_fn(runnable: Any, index: int) -> Callable[[], Any]:
    if hasattr(runnable, "bench_fn"):
        return runnable.bench_fn()
    if callable(runnable):
        return runnable
    raise TypeError(f"measure: runnable #{index} ({type(runnable).__name__}) is neither callable nor has bench_fn()")


def summarize_rounds(name: str, rounds: Sequence[Sequence[float]], warmup: int = 0, threads: int | None = None,
                     cpu_rounds: Sequence[Sequence[float]] | None = None) -> Measurement:
    """A `Measurement` from per-round run times in **seconds** (``cpu_rounds``: the same runs'
    thread CPU times, optional)."""
    if not rounds or not all(len(r) for r in rounds):
        raise ValueError(f"measure {name}: no timed runs")
    medians = [float(np.median(r)) * 1e3 for r in rounds]
    every = np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds]) * 1e3
    lo, hi = min(medians), max(medians)
    cpu_latency = cpu_share = None
    if cpu_rounds is not None:
        cpu_latency = min(float(np.median(r)) * 1e3 for r in cpu_rounds)
        total_cpu = float(sum(sum(r) for r in cpu_rounds)) * 1e3
        cpu_share = total_cpu / float(every.sum()) if every.sum() > 0 else None
    return Measurement(
        name=name,
        latency_ms=lo,
        median_ms=float(np.median(every)),
        p10_ms=float(np.percentile(every, 10)),
        p90_ms=float(np.percentile(every, 90)),
        spread=(hi - lo) / lo if lo > 0 else math.inf,
        round_medians_ms=medians,
        runs=int(every.size),
        warmup=warmup,
        threads=threads,
        cpu_latency_ms=cpu_latency,
        cpu_share=cpu_share,
    )


def measure_many(runnables: Sequence[Any], protocol: Protocol | None = None, names: Sequence[str] | None = None) -> list[Measurement]:
    """Time every runnable under ``protocol``, rounds interleaved across them.

    Order: warm-up of every model (``protocol.warmup`` runs each), then for each round r:
    round r of model 1, round r of model 2, ... Python's garbage collector is paused while
    timing. Names come from ``names``, else a runnable's ``name`` attribute, else ``model<i>``."""
    protocol = protocol or Protocol()
    runnables = list(runnables)
    if names is not None and len(names) != len(runnables):
        raise ValueError(f"measure: {len(names)} names for {len(runnables)} runnables")
    for i, r in enumerate(runnables):
        threads = getattr(r, "threads", None)
        if threads is not None and threads != protocol.threads:
            raise ValueError(
                f"measure: runnable #{i} was built for {threads} threads but the protocol says {protocol.threads}; "
                f"build it with threads={protocol.threads} (threads are fixed when a session is created)"
            )
    fns = [_bench_fn(r, i) for i, r in enumerate(runnables)]
    labels = list(names) if names is not None else [str(getattr(r, "name", None) or f"model{i}") for i, r in enumerate(runnables)]
    times: list[list[list[float]]] = [[] for _ in fns]
    cpu_times: list[list[list[float]]] = [[] for _ in fns]
    clock, cpu = time.perf_counter, time.thread_time
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for fn in fns:
            for _ in range(protocol.warmup):
                fn()
        for _ in range(protocol.rounds):
            for i, fn in enumerate(fns):
                runs, cpu_runs = [], []
                for _ in range(protocol.runs_per_round):
                    c0 = cpu()
                    t0 = clock()
                    fn()
                    t1 = clock()
                    c1 = cpu()
                    runs.append(t1 - t0)
                    cpu_runs.append(c1 - c0)
                times[i].append(runs)
                cpu_times[i].append(cpu_runs)
    finally:
        if gc_was_enabled:
            gc.enable()
    one_thread = protocol.threads == 1
    return [summarize_rounds(labels[i], times[i], protocol.warmup, protocol.threads, cpu_times[i] if one_thread else None)
            for i in range(len(fns))]


def measure_passes(groups: Sequence[Sequence[Any]], protocol: Protocol | None = None, passes: int = 2,
                   names: Sequence[Sequence[str] | None] | None = None) -> list[list[Measurement]]:
    """`measure_many` over each group in turn, ``passes`` times over all groups; per runnable the
    `Measurement` of its faster pass. A slow phase of a shared machine that covers one group's
    whole timing rarely covers it in both passes, and taking each runnable's lower latency is the
    protocol's own statistic over the rounds of every pass (baselines and contenders alike)."""
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes: {passes!r} not allowed; allowed: an integer >= 1")
    names = list(names) if names is not None else [None] * len(groups)
    if len(names) != len(groups):
        raise ValueError(f"measure: {len(names)} name lists for {len(groups)} groups")
    best: list[list[Measurement]] = [[] for _ in groups]
    for _ in range(passes):
        for i, group in enumerate(groups):
            ms = measure_many(group, protocol, names[i])
            best[i] = ms if not best[i] else [min(a, b, key=lambda m: m.latency_ms) for a, b in zip(best[i], ms)]
    return best


def measure_target(target_name: str, runnables: Any, protocol: Protocol, options: dict[str, Any]) -> Measurement | list[Measurement]:
    """What a target's ``measure`` does: a list of runnables gives a list of `Measurement`
    (timed interleaved), one runnable gives one; any other option is refused by name."""
    if options:
        raise ValueError(f"{target_name}.measure: unknown options {sorted(options)}; allowed: protocol")
    if isinstance(runnables, (list, tuple)):
        return measure_many(runnables, protocol)
    return measure_many([runnables], protocol)[0]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads (restored after). Building small tensors
    with several threads on a busy machine is up to 100x slower, and idle OpenMP threads that
    spin would disturb timings taken right after."""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)
