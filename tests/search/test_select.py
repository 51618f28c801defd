"""Picking the models the refine and fine-tune stages take, and those successive halving keeps:
spread along the front, topped up from the next fronts when the front is smaller than asked."""
from __future__ import annotations

import numpy as np

from tritune.evaluators.problem import Objective, Problem
from tritune.search.pareto import knee_point, spread_rows
from tritune.search.stages.finetune import promoted
from tritune.search.stages.select import spread
from tritune.search.store import TrialRecord
from tritune.spaces import create

PROBLEM = Problem((Objective("acc", "maximize"), Objective("lat", "minimize")))


def _records(points: list[tuple[float, float]]) -> list[TrialRecord]:
    space = create("nb201")
    rng = np.random.default_rng(0)
    cands = []
    while len(cands) < len(points):
        c = space.sample(rng)
        if c not in cands:
            cands.append(c)
    return [TrialRecord(i, c, "complete", {"acc": a, "lat": l}) for i, (c, (a, l)) in enumerate(zip(cands, points))]


def test_a_long_front_is_spread_with_its_ends():
    records = _records([(50.0 + i, 1.0 + i) for i in range(9)] + [(40.0, 5.0)])
    picked = spread(records, PROBLEM, 3)
    assert len(picked) == 3 and {r.number for r in picked} >= {0, 8}
    assert 9 not in {r.number for r in picked}  # dominated


def test_a_short_front_is_topped_up_from_the_next_fronts():
    # front: 0 and 1; second front: 2 and 3 (each dominated only by the first); third: 4
    records = _records([(90.0, 2.0), (80.0, 1.0), (85.0, 2.5), (75.0, 1.5), (70.0, 3.0)])
    picked = [r.number for r in spread(records, PROBLEM, 4)]
    assert sorted(picked[:2]) == [0, 1]  # the front first
    assert sorted(picked) == [0, 1, 2, 3]
    assert sorted(r.number for r in spread(records, PROBLEM, 9)) == [0, 1, 2, 3, 4]  # all there is, each once
    again = [TrialRecord(10 + r.number, r.candidate, "complete", dict(r.metrics)) for r in records]  # a refine stage re-scores its base
    assert sorted(r.candidate.id for r in spread(records + again, PROBLEM, 9)) == sorted(r.candidate.id for r in records)
    failed = [TrialRecord(9, records[0].candidate, "failed")]
    assert sorted(r.number for r in spread(records[:2] + failed, PROBLEM, 4)) == [0, 1]


def test_a_clustered_front_is_spread_by_distance_not_by_count():
    # six models crowd the accurate end, two lie far apart on the fast side
    values = np.array([(99.0, 10.0), (98.9, 9.9), (98.8, 9.8), (98.7, 9.7), (98.6, 9.6), (98.5, 9.5), (90.0, 5.5), (80.0, 1.0)])
    picked = spread_rows(values, ["maximize", "minimize"], 3, knee=False)
    assert picked == [0, 6, 7]  # both ends and the model halfway along; counting rows would take row 4 of the crowd
    assert spread_rows(values, ["maximize", "minimize"], 1) == [knee_point(values, ["maximize", "minimize"])]


def test_successive_halving_promotes_along_the_front_not_by_accuracy_alone():
    records = _records([(0.0, 10.0), (0.0, 9.0), (0.0, 8.0), (0.0, 1.0)])
    problem = Problem((Objective("accuracy", "maximize"), Objective("lat", "minimize")))
    accuracy = {r.candidate.id: a for r, a in zip(records, [95.0, 94.0, 93.0, 80.0])}
    kept = promoted(records, accuracy, problem, 2)
    assert [r.number for r in kept] == [0, 3]  # the most accurate and the fastest, not the two most accurate
    dominated = {**accuracy, records[3].candidate.id: 80.0}
    records[3].metrics["lat"] = 11.0  # now slower and less accurate than every other: it stops
    assert 3 not in [r.number for r in promoted(records, dominated, problem, 3)]
    records[3].metrics["lat"] = float("nan")  # a missing objective counts as the worst
    assert 3 not in [r.number for r in promoted(records, accuracy, problem, 3)]

