"""Latency profiling: measure a stratified sample of a space on a real target, resumably.

``profile(target, space, n, out_dir)`` draws ``n`` candidates with `stratified_candidates`,
builds and times them in interleaved groups (``group_size`` models per group, protocol of
`tritune.kernels.timing`) and appends one JSON line per candidate to
``out_dir/measurements.jsonl``; ``out_dir/metadata.json`` says what produced the numbers.

Files
-----
``metadata.json`` (schema `SCHEMA_VERSION`)::

    {"schema_version": 1, "tritune_version": "0.1.0",
     "target": {"name": "ort-cpu", "fingerprint": {...}},
     "space": {"name": "mobilenet-small", "config": {...}},
     "protocol": {"threads": 1, "warmup": 10, "rounds": 5, "runs_per_round": 20},
     "created": "2026-...Z", "seed": 0, "runs": [{"started": ..., "seed": 0, "n": 700, "strata": [...],
     "group_size": 8, "host": {...}}, ...]}

``measurements.jsonl``: one object per measured candidate::

    {"schema_version": 1, "candidate_id": "3f2a...", "candidate": {<Candidate.to_json()>},
     "index": 17, "seed": 0, "run": 0, "group": 2, "latency_ms": 1.92, "median_ms": ..., "p10_ms": ...,
     "p90_ms": ..., "spread": 0.04, "round_medians_ms": [...], "runs": 100, "warmup": 10,
     "threads": 1, "cpu_latency_ms": 1.90, "cpu_share": 0.99,
     "build_s": {"net": ..., "export": ..., "quantize": ..., "session": ..., "total": ...},
     "quantized_layers": 12, "reference_ms": 9.87, "timestamp": "2026-...Z"}

``steps`` (targets whose runnables report them, ``step_times()``: ``codegen-cpu``): each plan
step's name, kind, bits and median ms *inside* whole inferences -- what the codegen-cpu predictor
(`tritune.predictors.codegen_layerwise`) learns step costs from. Such a target may also build for
profiling (``for_profiling()``: ``codegen-cpu`` then seeds weights per layer configuration, so
each configuration compiles once) and build several candidates at once (``parallel_builds``:
compilation runs in subprocesses; the timing never overlaps a build) and ask to be measured in
fresh processes of a few groups each (``groups_per_process``: ``codegen-cpu``, whose models load
compiled libraries that stay mapped until their process ends).

``reference_ms`` (profiles taken with ``reference="largest"``, the default): the latency of the
space's largest dense candidate, timed interleaved in the same group. A shared machine's speed
drifts between groups by a few percent -- as much as a good predictor's error -- and a model timed
in the same rounds sees the same drift, so `normalized_latency` divides it out (nn-Meter and HELP
compare devices by latencies relative to reference models for the same reason).

Resuming: a re-run skips candidate ids already in ``measurements.jsonl`` (rows are flushed
after every group, so an interruption loses at most one group). The candidate list for ``(space,
seed, strata)`` is prefix-stable: the first m candidates are the same for every ``n >= m``, so a
re-run with a larger ``n`` extends a profile. A re-run whose target fingerprint, space config or
protocol differs from ``metadata.json`` is refused (`ProfileMismatchError`): those numbers must
not be mixed; use another ``out_dir``. Seed, n, strata and group size may change between runs
(each run is listed under ``runs``).

Sessions
--------
One session's numbers are not the whole truth on a shared machine: its level drifts by several
percent, and per model by more -- two 720-model profiles of the same candidates taken two hours
apart agreed within +-10 % for 96 % of the fp32 models but 77 % of the int8-heavy ones, while
runtime sessions of one model built and timed side by side differ by a median 3-4 %, so it is
the machine's state over time, not the runtime session, that moves. `profile_sessions`
(``tritune profile --sessions K``) therefore measures the same candidates K times, one pass after
the other, each pass with freshly built runnables into ``out_dir/session-<k>`` (each a complete,
resumable profile); `session_dirs` finds them again and `pooled_latency` labels each candidate
with the median over the passes.

Stratified sampling
-------------------
`stratified_candidates` balances every gene group named in ``strata``:

* architecture genes (``resolution``, ``width``, ``depth`` per stage, ``kernel`` and ``expand``
  per block): each gene's column is a concatenation of independent random permutations of its
  choices -- randomised cycling, i.e. a Latin-hypercube design for categorical genes: in every
  prefix of the sample each choice of each gene appears within +-1 of equally often, and genes
  are paired at random. A block's kernel/expand only count where the block exists;
* compression (``pattern``, ``bits``): per-slot choices would otherwise be independent, so every
  candidate would mix ~2/3 low-bit layers and ~all patterns and the extremes (all float, all
  int8, all dense) would never be seen. So each candidate first draws, from balanced cycles, a
  *low-bit fraction* and a *patterned fraction* in {0, 1/4, 1/2, 3/4, 1}; each slot then is
  low-bit / patterned with those probabilities, and among the slot's menu options of that kind
  the *least used so far at that slot* is taken (ties at random) -- a greedy fill that covers
  every pattern, ratio, weight and activation bit-width of every slot.

Genes outside ``strata`` are drawn uniformly. Duplicates (same candidate id) are skipped.
"""
from __future__ import annotations

import datetime as _dt
import json
import multiprocessing
import os
import platform
import time
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..spaces.base import Genome, SearchSpace
from ..spaces.candidate import Candidate
from ..spaces.compression import LayerCompression, parse_pattern
from ..kernels.timing import Protocol

SCHEMA_VERSION = 1
METADATA_FILE = "metadata.json"
MEASUREMENTS_FILE = "measurements.jsonl"
STRATA = ("resolution", "width", "depth", "kernel", "expand", "pattern", "bits")
#: Candidate-level fractions of low-bit / patterned slots (see the module docstring).
MIX_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: ``profile(reference=...)`` choices.
REFERENCES = ("largest", "none")
#: Sub-directory of one pass of `profile_sessions` (k = 1, 2, ...).
SESSION_DIR = "session-{k}"


class ProfileMismatchError(ValueError):
    """``out_dir`` holds measurements of another target, space or protocol."""


# ----- stratified sampling -----------------------------------------------------------------------
def gene_group(name: str) -> str:
    """Stratum of a gene: ``comp:*`` -> ``compression``; ``s1.depth`` -> ``depth``;
    ``s1.b2.kernel`` -> ``kernel``; ``s1.b2.ratio`` -> ``expand``; else the gene's name."""
    if name.startswith("comp:"):
        return "compression"
    last = name.rsplit(".", 1)[-1]
    return {"depth": "depth", "kernel": "kernel", "ratio": "expand"}.get(last, name)


class _Cycle:
    """Concatenated random permutations of ``choices`` from a stream of its own (prefix-stable)."""

    def __init__(self, choices: Sequence[Any], seed: int, key: str) -> None:
        self.choices = list(choices)
        self.rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode())])
        self.buffer: list[Any] = []

    def next(self) -> Any:
        if not self.buffer:
            self.buffer = [self.choices[i] for i in self.rng.permutation(len(self.choices))]
        return self.buffer.pop()


def stratified_candidates(space: SearchSpace, n: int, seed: int = 0, strata: Iterable[str] = STRATA) -> list[Candidate]:
    """``n`` distinct candidates covering every choice of every gene group in ``strata`` (see the
    module docstring). Deterministic and prefix-stable in ``(space, seed, strata)``."""
    strata = set(strata)
    unknown = strata - set(STRATA)
    if unknown:
        raise ValueError(f"profile.strata: {sorted(unknown)} not allowed; allowed: {', '.join(STRATA)}")
    genes = space._genes
    cycles = {g.name: _Cycle(g.choices, seed, g.name) for g in genes if not g.name.startswith("comp:") and gene_group(g.name) in strata}
    balance_bits, balance_patterns = "bits" in strata, "pattern" in strata
    bits_levels = _Cycle(MIX_LEVELS, seed, "#bits-level")
    pattern_levels = _Cycle(MIX_LEVELS, seed, "#pattern-level")
    used: dict[str, Counter] = {g.name: Counter() for g in genes if g.name.startswith("comp:")}
    out: list[Candidate] = []
    seen: set[str] = set()
    index = 0
    limit = 50 * n + 1000
    while len(out) < n:
        if index >= limit:
            raise ValueError(f"profile: could not draw {n} distinct candidates from space {space.name} (size {space.size()})")
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5EED, index])
        index += 1
        q_bits = bits_levels.next() if balance_bits else None
        q_pattern = pattern_levels.next() if balance_patterns else None
        genome: Genome = {}
        for gene in genes:
            if gene.name.startswith("comp:"):
                # Every candidate consumes the same random numbers, active gene or not, so the
                # stream of one slot does not depend on others being active.
                u_bits, u_pattern, u_pick = rng.random(), rng.random(), rng.random()
                if not gene.is_active(genome):
                    genome[gene.name] = gene.default
                    continue
                genome[gene.name] = _pick_compression(gene.choices, used[gene.name], q_bits, q_pattern, u_bits, u_pattern, u_pick, rng)
                continue
            value = cycles[gene.name].next() if gene.name in cycles else gene.choices[rng.integers(len(gene.choices))]
            genome[gene.name] = value if gene.is_active(genome) else gene.default
        cand = space.from_genome(space.canonical_genome(genome))
        if cand.id in seen:
            continue
        seen.add(cand.id)
        for gene in genes:
            if gene.name.startswith("comp:") and gene.is_active(genome):
                used[gene.name][genome[gene.name]] += 1
        out.append(cand)
    return out


def _pick_compression(options: Sequence[LayerCompression], used: Counter, q_bits: float | None, q_pattern: float | None,
                      u_bits: float, u_pattern: float, u_pick: float, rng: np.random.Generator) -> LayerCompression:
    if q_bits is None and q_pattern is None:
        return options[min(int(u_pick * len(options)), len(options) - 1)]
    top_w = max(o.w_bits for o in options)
    pool = list(options)
    if q_bits is not None:
        want = u_bits < q_bits
        match = [o for o in pool if (o.w_bits < top_w) == want]
        pool = match or pool
    if q_pattern is not None:
        want = u_pattern < q_pattern
        match = [o for o in pool if (parse_pattern(o.pattern).family != "dense") == want]
        pool = match or pool
    least = min(used[o] for o in pool)
    ties = [o for o in pool if used[o] == least]
    return ties[int(rng.integers(len(ties)))]


def coverage(space: SearchSpace, candidates: Sequence[Candidate]) -> dict[str, Counter]:
    """How often each choice occurs among active genes: ``resolution``, ``width``, ``depth``,
    ``kernel``, ``expand`` (values), ``pattern`` (names), ``sparsity``, ``w_bits``, ``a_bits``
    (over active compression slots), plus ``quantized_fraction`` (share of a candidate's slots
    with w_bits <= 8, rounded to 0.1)."""
    out: dict[str, Counter] = {}
    for cand in candidates:
        genome = space.to_genome(cand)
        active = {}
        for gene in space._genes:
            if gene.is_active(active):
                active[gene.name] = genome[gene.name]
        low = total = 0
        for name, value in active.items():
            group = gene_group(name)
            if group == "compression":
                out.setdefault("pattern", Counter())[value.pattern] += 1
                out.setdefault("sparsity", Counter())[value.sparsity] += 1
                out.setdefault("w_bits", Counter())[value.w_bits] += 1
                out.setdefault("a_bits", Counter())[value.a_bits] += 1
                total += 1
                low += value.w_bits <= 8
            else:
                out.setdefault(group, Counter())[value] += 1
        if total:
            out.setdefault("quantized_fraction", Counter())[round(low / total, 1)] += 1
    return out


# ----- profiling ---------------------------------------------------------------------------------
def tritune_version() -> str:
    """The installed distribution's version, else pyproject.toml's, else ``'unknown'``."""
    try:
        from importlib.metadata import version

        return version("tritune")
    except Exception:  # PackageNotFoundError or a broken environment
        pass
    try:
        import tomllib

        with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as fh:
            return str(tomllib.load(fh)["project"]["version"])
    except Exception:
        return "unknown"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _host() -> dict[str, Any]:
    """Informative only (not compared on resume)."""
    return {"hostname": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _canonical(data: Any) -> Any:
    """JSON round trip so tuples/lists and int/float keys compare as they are stored."""
    return json.loads(json.dumps(data, sort_keys=True))


def read_measurements(out_dir: str | os.PathLike) -> list[dict]:
    """Rows of ``measurements.jsonl`` (an unreadable line, e.g. cut by a crash, is skipped)."""
    path = Path(out_dir) / MEASUREMENTS_FILE
    rows: list[dict] = []
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _check_metadata(old: dict, new: dict, path: Path) -> None:
    problems = []
    if old.get("schema_version") != new["schema_version"]:
        problems.append(f"schema_version {old.get('schema_version')!r} != {new['schema_version']!r}")
    if old.get("target", {}).get("name") != new["target"]["name"]:
        problems.append(f"target {old.get('target', {}).get('name')!r} != {new['target']['name']!r}")
    else:
        a, b = old.get("target", {}).get("fingerprint", {}), new["target"]["fingerprint"]
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            problems.append("target fingerprint differs in " + ", ".join(f"{k} ({a.get(k)!r} != {b.get(k)!r})" for k in diff))
    if old.get("space", {}).get("name") != new["space"]["name"]:
        problems.append(f"space {old.get('space', {}).get('name')!r} != {new['space']['name']!r}")
    elif old.get("space", {}).get("config") != new["space"]["config"]:
        a, b = old["space"].get("config", {}), new["space"]["config"]
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        problems.append("space config differs in " + ", ".join(diff))
    if old.get("protocol") != new["protocol"]:
        problems.append(f"protocol {old.get('protocol')} != {new['protocol']}")
    if old.get("reference") != new.get("reference"):
        a, b = old.get("reference") or {}, new.get("reference") or {}
        if a.get("kind") != b.get("kind"):
            problems.append(f"reference {a.get('kind', 'none')!r} != {b.get('kind', 'none')!r}")
        else:  # same kind, another candidate: the space now draws other candidates (e.g. it gained slots)
            problems.append(f"reference candidate differs ({a.get('kind')!r} of this space is now another candidate)")
    if problems:
        raise ProfileMismatchError(
            f"profile: {path} holds measurements of another setup: " + "; ".join(problems)
            + ". Numbers from different setups must not be mixed: use another --out directory."
        )


@dataclass
class ProfileResult:
    out_dir: Path
    candidates: list[Candidate]
    measured: int  # rows written by this call
    skipped: int  # candidates already in measurements.jsonl
    builds: int
    seconds: dict[str, float] = field(default_factory=dict)


def reference_candidate(space: Any) -> Candidate:
    """The reference model timed in every group: the space's largest dense candidate (large models
    have the steadiest latency), else its first stratified candidate."""
    largest = getattr(space, "largest", None)
    return largest() if callable(largest) else stratified_candidates(space, 1, seed=0)[0]


def normalized_latency(rows: Sequence[dict]) -> np.ndarray:
    """``latency_ms`` of each row rescaled by its group's reference: ``latency_ms * median(reference_ms)
    / reference_ms``, i.e. the latency at the profile's median machine state. Rows without a
    reference (profiles taken with ``reference="none"``) keep ``latency_ms``."""
    lat = np.array([r["latency_ms"] for r in rows], dtype=np.float64)
    ref = np.array([r.get("reference_ms") or np.nan for r in rows], dtype=np.float64)
    ok = np.isfinite(ref) & (ref > 0)
    if not ok.any():
        return lat
    return np.where(ok, lat * np.median(ref[ok]) / np.where(ok, ref, 1.0), lat)


def pooled_latency(profiles: Sequence[Sequence[dict]], column: str | None = None) -> tuple[np.ndarray, list[dict]]:
    """One label per candidate from several profiles of the same candidates (sessions).

    On a shared machine one session's numbers drift by several percent as a whole and per model;
    more repeats spread over sessions give a steadier ground truth. Each profile's labels
    (``column``, or `normalized_latency` when None) are scaled to the first profile's level (the
    median ratio over the candidates both measured) and each candidate's label is the median over
    the profiles. Returns the labels and the first profile's rows of the candidates every profile
    measured, in the first profile's order."""
    if not profiles:
        raise ValueError("profiles: empty; allowed: one or more lists of profiling rows")
    columns = []
    for rows in profiles:
        values = normalized_latency(rows) if column is None else np.array([r[column] for r in rows], dtype=np.float64)
        columns.append(dict(zip((r["candidate_id"] for r in rows), values)))
    first = columns[0]
    for k, col in enumerate(columns[1:], 1):
        shared = [c for c in col if c in first]
        if not shared:
            raise ValueError(f"profiles[{k}]: no candidate in common with profiles[0]; allowed: profiles of the same candidates (same space, n and seed)")
        level = float(np.median([col[c] / first[c] for c in shared]))
        columns[k] = {c: v / level for c, v in col.items()}
    keep = [r for r in profiles[0] if all(r["candidate_id"] in col for col in columns)]
    return np.array([np.median([col[r["candidate_id"]] for col in columns]) for r in keep]), keep


def profile(target: Any, space: Any, n: int, out_dir: str | os.PathLike, seed: int = 0, protocol: Protocol | None = None,
            strata: Iterable[str] = STRATA, group_size: int = 8, progress: bool = True, reference: str = "largest") -> ProfileResult:
    """Measure ``n`` stratified candidates of ``space`` on ``target`` into ``out_dir`` (resumable).

    A target with ``groups_per_process`` (codegen-cpu: every model loads tens of compiled
    libraries, and a process holds only so many memory mappings) is measured in fresh processes
    of that many groups each, one after another.

    ``target``: a `Target` with ``build(candidate, space=...)`` and ``measure(runnables,
    protocol=...)``, or a registered name (created with ``threads=protocol.threads``).
    ``space``: a `SearchSpace` or a registered name. ``reference``: ``"largest"`` times
    `reference_candidate` interleaved in every group and stores its latency as ``reference_ms``
    in each row, so `normalized_latency` can remove the drift of a shared machine's speed between
    groups; ``"none"``: no reference. See the module docstring for the files."""
    protocol = protocol or Protocol()
    if isinstance(space, str):
        from ..spaces.registry import create

        space = create(space)
    if isinstance(target, str):
        from .registry import create_target

        target = create_target(target, threads=protocol.threads)
    if not hasattr(target, "build") or not hasattr(target, "measure"):
        raise ValueError(f"profile: target {getattr(target, 'name', target)!r} cannot build and measure models")
    if callable(getattr(target, "for_profiling", None)):
        target = target.for_profiling()
    workers = max(1, int(getattr(target, "parallel_builds", 1) or 1))
    if not target.supports(space.name):
        raise ValueError(f"profile: target {target.name!r} does not support space {space.name!r}")
    if n < 1 or group_size < 1:
        raise ValueError("profile: n and group_size must be >= 1")
    if reference not in REFERENCES:
        raise ValueError(f"profile.reference: {reference!r} not allowed; allowed: {', '.join(REFERENCES)}")
    ref_cand = reference_candidate(space) if reference == "largest" else None
    strata = list(strata)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / METADATA_FILE
    meta = _canonical({
        "schema_version": SCHEMA_VERSION,
        "tritune_version": tritune_version(),
        "target": {"name": target.name, "fingerprint": target.fingerprint()},
        "space": {"name": space.name, "config": space.config()},
        "protocol": protocol.to_json(),
        **({"reference": {"kind": reference, "candidate": ref_cand.to_json()}} if ref_cand is not None else {}),
    })
    run_info = {"started": _now(), "seed": seed, "n": n, "strata": strata, "group_size": group_size, "host": _host()}
    if meta_path.exists():
        with open(meta_path, encoding="utf-8") as fh:
            old = json.load(fh)
        _check_metadata(old, meta, meta_path)
        old.setdefault("runs", []).append(run_info)
        meta = old
    else:
        meta["created"] = run_info["started"]
        meta["seed"] = seed  # of the first run; every run's seed is under "runs"
        meta["runs"] = [run_info]
    tmp = meta_path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)
    os.replace(tmp, meta_path)

    candidates = stratified_candidates(space, n, seed, strata)
    done = {row.get("candidate_id") for row in read_measurements(out) if row.get("latency_ms") is not None}
    todo = [(i, c) for i, c in enumerate(candidates) if c.id not in done]
    result = ProfileResult(out, candidates, 0, len(candidates) - len(todo), 0, {"build": 0.0, "measure": 0.0})
    rows_path = out / MEASUREMENTS_FILE
    if rows_path.exists() and rows_path.stat().st_size:
        with open(rows_path, "rb") as fh:  # a line cut by a crash must not swallow the next row
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                with open(rows_path, "a", encoding="utf-8") as fa:
                    fa.write("\n")
    job = _Groups(target, space, candidates, out, protocol, ref_cand, seed, len(meta["runs"]) - 1, group_size, workers, progress)
    per_process = int(getattr(target, "groups_per_process", 0) or 0)
    if not per_process or not todo:
        _merge(result, _measure_groups(job, todo, 0, result.skipped))
        return result
    chunk = per_process * group_size
    shipped = replace(job, space={"name": space.name, "config": space.config()})  # a child rebuilds the space from its config
    for start in range(0, len(todo), chunk):
        # a fresh process per chunk: the libraries its builds load leave with it
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                part = pool.submit(_measure_groups, shipped, todo[start:start + chunk], start // group_size,
                                   result.skipped + start).result()
            except BrokenProcessPool:
                raise RuntimeError(f"profile: the process measuring models {start}-{start + chunk - 1} of this run died; "
                                   f"run the command again to resume from {out}") from None
        _merge(result, part)
    return result


@dataclass
class _Groups:
    """What measuring groups of a profile needs, in a form a child process can receive."""

    target: Any
    space: Any  # a SearchSpace, or {"name", "config"} to create one in a child process
    candidates: list[Candidate]
    out: Path
    protocol: Protocol
    ref_cand: Candidate | None
    seed: int
    run_no: int
    group_size: int
    workers: int
    progress: bool


def _merge(result: ProfileResult, part: ProfileResult) -> None:
    result.measured += part.measured
    result.builds += part.builds
    for key, value in part.seconds.items():
        result.seconds[key] = result.seconds.get(key, 0.0) + value


def _measure_groups(job: _Groups, todo: list[tuple[int, Candidate]], group_no: int, initial: int) -> ProfileResult:
    """Build and time ``todo`` group by group (numbered from ``group_no``), appending a row per
    model to the profile's measurements as each group finishes."""
    from tqdm.auto import tqdm

    target, space, protocol = job.target, job.space, job.protocol
    if isinstance(space, dict):
        from ..spaces.registry import create

        space = create(space["name"], **space["config"])
    result = ProfileResult(job.out, job.candidates, 0, 0, 0, {"build": 0.0, "measure": 0.0})
    rows_path = job.out / MEASUREMENTS_FILE
    ref_runnable = target.build(job.ref_cand, space=space) if (job.ref_cand is not None and todo) else None
    with tqdm(total=len(job.candidates), initial=initial, desc=f"profile {space.name} on {target.name}", unit="model",
              disable=not job.progress, dynamic_ncols=True) as bar:
        for start in range(0, len(todo), job.group_size):
            group = todo[start:start + job.group_size]
            t0 = time.perf_counter()
            if job.workers > 1:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(job.workers) as pool:
                    runnables = list(pool.map(lambda c: target.build(c, space=space), [cand for _, cand in group]))
            else:
                runnables = [target.build(cand, space=space) for _, cand in group]
            result.builds += len(group)
            t1 = time.perf_counter()
            measurements = target.measure(runnables + ([ref_runnable] if ref_runnable is not None else []), protocol=protocol)
            ref_ms = measurements.pop().latency_ms if ref_runnable is not None else None
            steps = [r.step_times() if callable(getattr(r, "step_times", None)) else None for r in runnables]
            t2 = time.perf_counter()
            result.seconds["build"] += t1 - t0
            result.seconds["measure"] += t2 - t1
            stamp = _now()
            lines = []
            for (index, cand), runnable, m, st in zip(group, runnables, measurements, steps):
                row = {
                    "schema_version": SCHEMA_VERSION,
                    "candidate_id": cand.id,
                    "candidate": cand.to_json(),
                    "index": index,
                    "seed": job.seed,
                    "run": job.run_no,
                    "group": group_no,
                    **{k: v for k, v in m.to_json().items() if k != "name"},
                    "build_s": dict(getattr(runnable, "build_s", {}) or {}),
                    "quantized_layers": len(getattr(runnable, "quantized_layers", ()) or ()),
                    **({"reference_ms": ref_ms} if ref_ms is not None else {}),
                    **({"steps": st} if st is not None else {}),
                    "timestamp": stamp,
                }
                lines.append(json.dumps(row, sort_keys=True) + "\n")
            with open(rows_path, "a", encoding="utf-8") as fh:
                fh.writelines(lines)
                fh.flush()
                os.fsync(fh.fileno())
            result.measured += len(group)
            group_no += 1
            del runnables
            bar.update(len(group))
            bar.set_postfix(build_s=f"{(t1 - t0) / len(group):.2f}", measure_s=f"{(t2 - t1) / len(group):.2f}")
    return result


def profile_sessions(target: Any, space: Any, n: int, out_dir: str | os.PathLike, sessions: int = 1, **options: Any) -> list[ProfileResult]:
    """`profile` the same candidates ``sessions`` times, pass after pass, into
    ``out_dir/session-<k>`` (``sessions == 1``: into ``out_dir`` itself, as `profile` does).

    Every pass builds its own runnables at a later time, so pooling the passes (`session_dirs`,
    `pooled_latency`) averages both the machine's drift and the luck of one runtime session.
    Resumable like `profile`: a re-run finishes the unfinished passes. ``options`` go to `profile`."""
    if isinstance(sessions, bool) or not isinstance(sessions, int) or sessions < 1:
        raise ValueError(f"profile.sessions: {sessions!r} not allowed; allowed: an integer >= 1")
    out = Path(out_dir)
    if sessions == 1:
        return [profile(target, space, n, out, **options)]
    if (out / METADATA_FILE).exists():
        raise ValueError(f"profile.sessions: {str(out)!r} already holds a single-session profile; allowed: sessions=1 "
                         f"for it, or another out_dir for {sessions} sessions")
    return [profile(target, space, n, out / SESSION_DIR.format(k=k), **options) for k in range(1, sessions + 1)]


def session_dirs(path: str | os.PathLike) -> list[Path]:
    """The profile directories behind ``path``: ``[path]`` when it is a profile, else its
    ``session-<k>`` sub-directories in pass order (see `profile_sessions`)."""
    path = Path(path)
    if (path / METADATA_FILE).is_file():
        return [path]
    found = []
    for sub in path.glob(SESSION_DIR.format(k="*")) if path.is_dir() else ():
        number = sub.name.rpartition("-")[2]
        if number.isdigit() and (sub / METADATA_FILE).is_file():
            found.append((int(number), sub))
    if not found:
        raise ValueError(f"{str(path)!r} is not a profile directory (no {METADATA_FILE}, no {SESSION_DIR.format(k='<k>')} "
                         f"sub-directories); make one with `tritune profile`")
    return [sub for _, sub in sorted(found)]
