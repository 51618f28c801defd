"""Picking the models the refine and fine-tune stages take: spread along the front, topped up from
the next fronts when the front is smaller than asked."""
from __future__ import annotations

import numpy as np

from tritune.evaluators.problem import Objective, Problem
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
    failed = [TrialRecord(9, records[0].candidate, "failed")]
    assert sorted(r.number for r in spread(records[:2] + failed, PROBLEM, 4)) == [0, 1]
