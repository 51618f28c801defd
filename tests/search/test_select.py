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


def test_successive_halving_stops_the_dominated_and_keeps_every_front_member():
    records = _records([(0.0, 10.0), (0.0, 9.0), (0.0, 8.0), (0.0, 1.0)])
    problem = Problem((Objective("accuracy", "maximize"), Objective("lat", "minimize")))
    accuracy = {r.candidate.id: a for r, a in zip(records, [95.0, 92.0, 93.0, 80.0])}  # row 1 is dominated by row 2
    assert [r.number for r in promoted(records, accuracy, problem, 2)] == [0, 2, 3]  # the front, not half of it
    assert [r.number for r in promoted(records, accuracy, problem, 4)] == [0, 1, 2, 3]
    assert [r.number for r in promoted(records, accuracy, problem, 1)] == [0, 2, 3]
    dominated = {**accuracy, records[3].candidate.id: 80.0}
    records[3].metrics["lat"] = 11.0  # now slower and less accurate than every other: it stops
    assert 3 not in [r.number for r in promoted(records, dominated, problem, 3)]
    records[3].metrics["lat"] = float("nan")  # a missing objective counts as the worst
    assert 3 not in [r.number for r in promoted(records, accuracy, problem, 3)]
    assert [r.number for r in promoted(records, accuracy, problem, 4)] == [0, 1, 2, 3]


def test_leading_fronts_take_whole_fronts_until_enough():
    from tritune.search.stages.retime import leading_fronts

    front0 = [(60.0, 1.0), (70.0, 2.0)]
    front1 = [(55.0, 1.5), (65.0, 2.5), (68.0, 4.0)]
    front2 = [(50.0, 3.0)]
    records = _records(front2 + front1 + front0)
    ids = lambda rs: sorted(r.candidate.id for r in rs)  # noqa: E731
    assert ids(leading_fronts(records, PROBLEM, 1)) == ids(records[-2:])
    assert ids(leading_fronts(records, PROBLEM, 3)) == ids(records[1:])  # the second front whole, not one of it
    assert ids(leading_fronts(records, PROBLEM, 10)) == ids(records)
    assert leading_fronts([], PROBLEM, 3) == []


def test_hypervolume_promotion_keeps_the_knee_where_spreading_keeps_the_ends():
    from tritune.search.pareto import hypervolume_rows

    # a rung of successive halving as the example job saw it: fastest, knee, most accurate, one dominated
    values = np.array([(75.2, 0.124), (78.5, 0.264), (81.0, 0.524), (79.2, 0.666)])
    directions = ["maximize", "minimize"]
    assert sorted(spread_rows(values, directions, 2)) == [0, 2]
    assert hypervolume_rows(values, directions, 2) == [1, 2]
    assert hypervolume_rows(values, directions, 1) == [knee_point(values[:3], directions)] == [1]
    assert hypervolume_rows(values, directions, 3) == [0, 1, 2]  # the dominated one only when nothing else is left
    assert hypervolume_rows(values, directions, 4) == [0, 1, 2, 3]
    with_nan = np.vstack([values, [(-np.inf, 0.1)]])  # a missing accuracy counts as the worst
    assert hypervolume_rows(with_nan, directions, 5) == [0, 1, 2, 3, 4]
    assert 4 not in hypervolume_rows(with_nan, directions, 3)
    four = np.array([(90.0, 1.0, 2.0, 3.0), (80.0, 0.5, 1.0, 1.0), (85.0, 0.7, 1.5, 2.0)])
    four_dirs = ["maximize"] + ["minimize"] * 3
    assert hypervolume_rows(four, four_dirs, 2) == spread_rows(four, four_dirs, 2)  # more than 3 objectives: spread
