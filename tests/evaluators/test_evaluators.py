"""Tests for tritune.evaluators: table accuracy, target latency, the pipeline and the registry."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tritune.evaluators import (
    Evaluation,
    EvaluationPipeline,
    Evaluator,
    TabularAccuracy,
    TargetLatency,
    create_evaluator,
    list_evaluators,
)
from tritune.evaluators.problem import Problem
from tritune.spaces import NB201Space
from tritune.targets import NB201Table, NB201TableTarget

SPACE = NB201Space()


def cands(indices):
    return [SPACE.from_index(int(i)) for i in indices]


@pytest.fixture(scope="module")
def table() -> NB201Table:
    return NB201Table()


class Spy(Evaluator):
    """A costly evaluator that records what it was asked and can be told to fail."""

    def __init__(self, metric="score", cheap=False, fail=False):
        self.metrics, self.cheap, self.fail, self.seen = (metric,), cheap, fail, []

    def _evaluate(self, candidates):
        self.seen.extend(c.id for c in candidates)
        if self.fail:
            raise RuntimeError("out of GPU memory")
        return [{self.metrics[0]: float(SPACE.index(c))} for c in candidates]


def problem(max_latency=None, extra_constraints=()):
    cons = ([{"metric": "latency", "max": max_latency}] if max_latency is not None else []) + list(extra_constraints)
    return Problem.from_config([{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency"}], cons)


# --------------------------------------------------------------------------------------------
# evaluators
# --------------------------------------------------------------------------------------------
def test_tabular_accuracy_known_values():
    c10 = TabularAccuracy()
    assert c10.metrics == ("accuracy",) and c10.cheap is False
    assert c10.evaluate(cands([6111]))[0]["accuracy"] == pytest.approx(94.37, abs=0.01)
    c100 = TabularAccuracy("cifar100", metric="acc100")
    assert c100.evaluate(cands([9930]))[0] == {"acc100": pytest.approx(73.51, abs=0.01)}
    in16 = TabularAccuracy(dataset="imagenet16_120")
    assert in16.evaluate(cands([857]))[0]["accuracy"] == pytest.approx(47.31, abs=0.01)
    out = c10.evaluate(SPACE.enumerate())
    assert len(out) == 15625 and c10.queries == 15626
    assert max(range(15625), key=lambda i: out[i]["accuracy"]) == 6111
    with pytest.raises(ValueError, match="dataset: 'imagenet' not allowed; allowed: cifar10, cifar100, imagenet16_120"):
        TabularAccuracy("imagenet")
    with pytest.raises(ValueError, match="pass \\[candidate\\]"):
        c10.evaluate(SPACE.from_index(0))


def test_tabular_accuracy_simulated_cost_and_pickling():
    import pickle
    import time

    slow = create_evaluator("nb201-accuracy", simulated_cost_s=0.02)
    start = time.perf_counter()
    assert slow.evaluate(cands([6111, 0]))[0]["accuracy"] == pytest.approx(94.37, abs=0.01)
    assert time.perf_counter() - start >= 0.04
    with pytest.raises(ValueError, match="simulated_cost_s"):
        TabularAccuracy(simulated_cost_s=-1)
    # evaluators and pipelines travel to worker processes
    pipe = EvaluationPipeline([TabularAccuracy(), create_evaluator("latency", target="nb201-table")], problem(max_latency=3.0))
    clone = pickle.loads(pickle.dumps(pipe))
    assert clone.evaluate(SPACE.from_index(0)) == pipe.evaluate(SPACE.from_index(0))


def test_tabular_accuracy_user_table(tmp_path):
    arch0 = SPACE.arch_str(SPACE.from_index(0))
    path = tmp_path / "acc.csv"
    path.write_text(f"nb201_index,arch_str,nats_cifar10_test_acc,lat_ms\n0,{arch0},12.5,1\n")
    acc = TabularAccuracy(path=path)
    assert acc.evaluate(cands([0])) == [{"accuracy": 12.5}]
    with pytest.raises(ValueError, match="no nats_cifar10_test_acc value for nb201_index 1"):
        acc.evaluate(cands([1]))
    with pytest.raises(ValueError, match="has no column 'nats_cifar100_test_acc'"):
        TabularAccuracy("cifar100", path=path)


def test_target_latency_asks_the_target(table):
    target = NB201TableTarget("help_raspi4")
    lat = TargetLatency(target)
    assert lat.cheap is True and lat.metrics == ("latency",)
    got = lat.evaluate(cands([0, 1, 2]))
    np.testing.assert_allclose([g["latency"] for g in got], table.lookup("help_raspi4", [0, 1, 2]))
    assert lat.fingerprint()["column"] == "help_raspi4"
    assert TargetLatency(target, metric="raspi_ms").evaluate(cands([0]))[0]["raspi_ms"] == pytest.approx(10.48198, rel=1e-5)
    with pytest.raises(ValueError, match="does not support space 'mobilenet-small'"):
        from tritune.spaces import create

        lat.evaluate([create("mobilenet-small").sample(np.random.default_rng(1))])
    with pytest.raises(TypeError, match="not a target"):
        TargetLatency(object())


def test_evaluator_contract_checks_results():
    class Lazy(Evaluator):
        metrics = ("a", "b")

        def _evaluate(self, candidates):
            return [{"a": 1.0} for _ in candidates]

    with pytest.raises(RuntimeError, match=r"lacks \['b'\]"):
        Lazy().evaluate(cands([0]))

    class Short(Evaluator):
        metrics = ("a",)

        def _evaluate(self, candidates):
            return []

    with pytest.raises(RuntimeError, match="returned 0 results for 2 candidates"):
        Short().evaluate(cands([0, 1]))


# --------------------------------------------------------------------------------------------
# pipeline
# --------------------------------------------------------------------------------------------
def test_pipeline_counts_queries_and_skips_infeasible(table):
    acc = create_evaluator("nb201-accuracy", dataset="cifar10")
    lat = create_evaluator("latency", target="nb201-table", column="help_pixel3")
    limit = 5.0
    pipe = EvaluationPipeline([acc, lat], problem(max_latency=limit))
    assert [e.label for e in pipe.cheap] == ["TargetLatency/latency"]
    assert [e.label for e in pipe.costly] == ["TabularAccuracy/accuracy"]
    picks = np.random.default_rng(7).choice(15625, size=300, replace=False)
    pixel = table.lookup("help_pixel3", picks)
    feasible = pixel <= limit
    assert 0 < feasible.sum() < len(picks)
    results = pipe.evaluate_batch(cands(picks))
    for i, r, ok in zip(picks, results, feasible):
        assert isinstance(r, Evaluation)
        assert r.metrics["latency"] == pytest.approx(table.lookup("help_pixel3", [i])[0])
        if ok:
            assert r.status == "complete" and r.error is None
            assert r.metrics["accuracy"] == table.lookup("nats_cifar10_test_acc", [i])[0]
        else:
            assert r.status == "infeasible" and "accuracy" not in r.metrics
    counts = pipe.query_counts()
    assert counts == {"TabularAccuracy/accuracy": int(feasible.sum()), "TargetLatency/latency": 300}
    assert pipe.costly_queries == int(feasible.sum()) and pipe.cheap_queries == 300
    assert acc.queries == int(feasible.sum())
    # evaluating again, one by one, spends nothing
    for c in cands(picks[:20]):
        pipe.evaluate(c)
    assert pipe.query_counts() == counts
    # the oracle answers from memory too, and never asks for accuracy
    assert pipe.oracle(SPACE.from_index(int(picks[0]))) == {"latency": pytest.approx(pixel[0])}
    fresh = SPACE.from_index(int(next(i for i in range(15625) if i not in set(picks.tolist()))))
    assert set(pipe.oracle(fresh)) == {"latency"}
    pipe.oracle(fresh)
    after = pipe.query_counts()
    assert after["TargetLatency/latency"] == 301 and after["TabularAccuracy/accuracy"] == counts["TabularAccuracy/accuracy"]
    # the oracle's memo is reused by evaluate
    assert pipe.evaluate(fresh).metrics["latency"] == pipe.oracle(fresh)["latency"]
    assert pipe.query_counts()["TargetLatency/latency"] == 301


def test_pipeline_never_spends_budget_on_infeasible_candidates():
    spy = Spy(metric="accuracy")
    lat = TargetLatency(NB201TableTarget("help_fpga"))
    pipe = EvaluationPipeline([spy, lat], problem(max_latency=3.0))
    fpga = NB201Table().column("help_fpga")
    slow = int(np.flatnonzero(fpga > 3.0)[0])
    fast, fast2 = (int(i) for i in np.flatnonzero(fpga <= 3.0)[:2])
    out = pipe.evaluate(SPACE.from_index(slow))
    assert out.status == "infeasible" and out.metrics == {"latency": fpga[slow]}
    assert spy.seen == []
    ok = pipe.evaluate(SPACE.from_index(fast))
    assert ok.status == "complete" and ok.metrics == {"latency": fpga[fast], "accuracy": float(fast)}
    assert spy.seen == [SPACE.from_index(fast).id]
    # a batch with duplicates asks once per distinct candidate
    res = pipe.evaluate_batch(cands([slow, fast2, fast2, slow, fast]))
    assert [r.status for r in res] == ["infeasible", "complete", "complete", "infeasible", "complete"]
    assert res[1] == res[2] and res[1].metrics["accuracy"] == float(fast2)
    assert spy.seen == [SPACE.from_index(fast).id, SPACE.from_index(fast2).id]


def test_pipeline_missing_latency_is_infeasible_under_a_constraint():
    target = NB201TableTarget("nnmeter_cortexA76cpu_tflite21_ms")
    col = target.table.column(target.column)
    unknown = int(np.flatnonzero(np.isnan(col))[0])
    spy = Spy(metric="accuracy")
    pipe = EvaluationPipeline([TargetLatency(target), spy], problem(max_latency=100.0))
    r = pipe.evaluate(SPACE.from_index(unknown))
    assert r.status == "infeasible" and math.isnan(r.metrics["latency"]) and spy.seen == []


def test_pipeline_reports_failures_with_metrics_so_far():
    spy = Spy(metric="accuracy", fail=True)
    pipe = EvaluationPipeline([TargetLatency(NB201TableTarget("help_fpga")), spy], problem())
    c = SPACE.from_index(0)
    r = pipe.evaluate(c)
    assert r.status == "failed" and not r.ok
    assert r.metrics == {"latency": pytest.approx(2.57296, rel=1e-6)}
    assert "Spy/accuracy" in r.error and "RuntimeError" in r.error and "out of GPU memory" in r.error
    # failures are not memoised: a retry asks again
    spy.fail = False
    r2 = pipe.evaluate(c)
    assert r2.status == "complete" and r2.metrics["accuracy"] == 0.0
    assert pipe.query_counts()["Spy/accuracy"] == 2 and pipe.query_counts()["TargetLatency/latency"] == 1


def test_pipeline_cheap_failure_and_costly_constraints():
    from tritune.spaces import create

    pipe = EvaluationPipeline([TargetLatency(NB201TableTarget("help_fpga")), Spy(metric="accuracy")],
                              problem(extra_constraints=[{"metric": "accuracy", "min": 1e9}]))
    # a constraint on a costly metric does not stop the costly query; the problem judges it later
    r = pipe.evaluate(SPACE.from_index(5))
    assert r.status == "complete" and not pipe.problem.feasible(r.metrics)
    bad = pipe.evaluate(create("mobilenet-small").sample(np.random.default_rng(0)))
    assert bad.status == "failed" and "does not support space" in bad.error and bad.metrics == {}
    with pytest.raises(ValueError, match="does not support space"):
        pipe.oracle(create("mobilenet-small").sample(np.random.default_rng(0)))


def test_pipeline_construction_checks_metrics():
    lat = TargetLatency(NB201TableTarget())
    with pytest.raises(ValueError, match=r"objective metric 'accuracy' is produced by no evaluator; available metrics: latency"):
        EvaluationPipeline([lat], problem())
    acc = TabularAccuracy()
    with pytest.raises(ValueError, match="constrained metric 'energy' is produced by no evaluator; available metrics: accuracy, latency"):
        EvaluationPipeline([acc, lat], problem(extra_constraints=[{"metric": "energy", "max": 1.0}]))
    with pytest.raises(ValueError, match="produced by both"):
        EvaluationPipeline([acc, lat, TabularAccuracy("cifar100")], problem())
    with pytest.raises(ValueError, match="at least one evaluator"):
        EvaluationPipeline([], problem())
    with pytest.raises(ValueError, match="status"):
        Evaluation("done", {})


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
def test_evaluator_registry():
    assert {"nb201-accuracy", "latency"} <= set(list_evaluators())
    acc = create_evaluator("nb201-accuracy", dataset="cifar100", metric="acc")
    assert isinstance(acc, TabularAccuracy) and acc.metrics == ("acc",) and acc.column == "nats_cifar100_test_acc"
    lat = create_evaluator("latency", target="nb201-table", target_options={"column": "help_gold_6226"}, metric="xeon_ms")
    assert isinstance(lat, TargetLatency) and lat.metrics == ("xeon_ms",) and lat.target.column == "help_gold_6226"
    built = create_evaluator("latency", target=NB201TableTarget("help_eyeriss"))
    assert built.evaluate(cands([0]))[0]["latency"] == pytest.approx(3.64562, rel=1e-6)
    with pytest.raises(ValueError, match="evaluator kind: 'accuracy' not allowed; allowed: latency, nb201-accuracy"):
        create_evaluator("accuracy")
    with pytest.raises(ValueError, match=r"unknown options \['datset'\]; allowed: dataset, path, metric, simulated_cost_s"):
        create_evaluator("nb201-accuracy", datset="cifar10")
    with pytest.raises(ValueError, match="option 'target' is required; allowed targets: .*nb201-table"):
        create_evaluator("latency")
    with pytest.raises(ValueError, match="target: 'tpu' not allowed"):
        create_evaluator("latency", target="tpu")
    with pytest.raises(ValueError, match=r"unknown options \['colum'\]"):
        create_evaluator("latency", target="nb201-table", colum="help_fpga")
    with pytest.raises(ValueError, match="both inline and in target_options"):
        create_evaluator("latency", target="nb201-table", column="help_fpga", target_options={"column": "help_raspi4"})
