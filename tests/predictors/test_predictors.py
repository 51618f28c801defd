"""Predictors: the error report, few-shot NB201 latency, BitFusion layer costs, the signed file format.

Real data: the embedded NB201 table (always there) and, where the shared data sit beside the
repository (``../shared/data``), the full 27-device HELP table and APQ's BitFusion table.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from tritune import predictors
from tritune.predictors import (
    FewShotLatencyPredictor,
    LayerBatch,
    LayerwiseTablePredictor,
    NotFittedError,
    bitfusion_key,
    score_report,
    table_arrays,
)
from tritune.predictors.io import KEY_ENV, digest, seal
from tritune.predictors.nb201_features import FEATURE_NAMES, nb201_features
from tritune.spaces import LayerSpec, NB201Space, create
from tritune.spaces.nb201.space import OPS
from tritune.targets import BitFusionTable, NB201Table, NB201TableTarget

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
JOINT_CSV = SHARED / "derived" / "nb201_joint_latency_accuracy.csv"
BITFUSION = SHARED / "apq" / "BitFusion_new.b1.dict"
HELD_OUT = ("help_pixel3", "help_fpga", "help_eyeriss", "help_raspi4", "help_gold_6240", "help_titanxp_1")


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (expected beside the repository at ../shared/data)")
    return path


def rho_outside(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> float:
    mask = np.ones(y.size, dtype=bool)
    mask[idx] = False
    return float(spearmanr(y[mask], pred[mask])[0])


# ----------------------------------------------------------------------------------------------
# score_report
# ----------------------------------------------------------------------------------------------
def test_score_report_matches_hand_computed_values():
    # relative errors 1.1, 0.1, 0.025, 0.2; ranks of the predictions 2, 1, 3, 4
    report = score_report([1.0, 2.0, 4.0, 5.0], [2.1, 1.8, 4.1, 6.0])
    assert report["n"] == 4
    assert report["mape"] == pytest.approx((110 + 10 + 2.5 + 20) / 4)
    assert report["rmse"] == pytest.approx(math.sqrt((1.21 + 0.04 + 0.01 + 1.0) / 4))
    assert report["within_5"] == 0.25
    assert report["within_10"] == 0.5  # 0.1 exactly counts as within 10 %
    assert report["spearman"] == pytest.approx(1 - 6 * 2 / (4 * (16 - 1)))  # sum d^2 = 2
    assert report["kendall"] == pytest.approx((5 - 1) / 6)  # one discordant pair of six


def test_score_report_refuses_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        score_report([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="3 values"):
        score_report([1.0, 2.0, 3.0], [1.0, 2.0])
    assert math.isnan(score_report([1.0, 1.0], [1.0, 2.0])["spearman"])  # constant truth: undefined


# ----------------------------------------------------------------------------------------------
# features
# ----------------------------------------------------------------------------------------------
def test_nb201_features_count_operations_and_dead_cells():
    feats = nb201_features()
    assert feats.shape == (15625, len(FEATURE_NAMES))
    space = NB201Space()
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    # |conv3~0|+|conv3~0|conv3~1|+|none~0|none~1|none~2|: three convs, none on a path to the output
    i = space.index(space.from_arch_str("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|none~1|none~2|"))
    assert feats[i, col["n_nor_conv_3x3"]] == 3 and feats[i, col["live_nor_conv_3x3"]] == 0 and feats[i, col["disconnected"]] == 1
    assert int(feats[:, col["disconnected"]].sum()) == 341
    # the one-hot block: edge by edge, one of the five ops
    ops = space.from_index(1234)["ops"]
    onehot = feats[1234, col["edge1<-0=none"]:].reshape(6, 5)
    assert [OPS[j] for j in onehot.argmax(axis=1)] == list(ops) and np.all(onehot.sum(axis=1) == 1)


# ----------------------------------------------------------------------------------------------
# few-shot latency
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded():
    return NB201Table()


@pytest.fixture(scope="module")
def pixel3_predictor(embedded):
    """Prior from the 8 other columns of the embedded table (nn-Meter's has 2,000 cells), adapted to
    Pixel 3 from 20 random cells."""
    train = [c for c in embedded.latency_columns if c != "help_pixel3"]
    assert len(train) == 8
    pred = FewShotLatencyPredictor.pretrain(embedded, train)
    y = embedded.column("help_pixel3")
    idx = np.random.default_rng(0).choice(y.size, 20, replace=False)
    pred.adapt(idx, y[idx], target=NB201TableTarget("help_pixel3"))
    return pred, idx


def test_fewshot_pixel3_from_20_cells_ranks_the_rest(embedded, pixel3_predictor):
    pred, idx = pixel3_predictor
    y = embedded.column("help_pixel3")
    rho = rho_outside(y, pred.predict_all(), idx)
    assert rho >= 0.9
    # the 20 cells must teach something: the un-adapted average device ranks Pixel 3 at ~0.90
    zero_shot = rho_outside(y, nb201_features() @ pred.prior_.mean, idx)
    assert rho >= zero_shot + 0.02, (rho, zero_shot)
    assert pred.error_["n"] == 20 and "leave-one-out" in pred.error_["on"]
    assert pred.prior_.devices[-1] == "nnmeter_cortexA76cpu_tflite21_ms"  # partial column used


def test_fewshot_predicts_candidates_and_indices_alike(pixel3_predictor):
    pred, _ = pixel3_predictor
    space = NB201Space()
    idx = np.array([0, 5, 15624, 777])
    cands = [space.from_index(int(i)) for i in idx]
    assert np.array_equal(pred.predict(cands), pred.predict(idx))
    assert pred.predict(idx).dtype == np.float64 and np.all(pred.predict(idx) > 0)
    with pytest.raises(ValueError, match="not in 0..15624"):
        pred.predict([15625])
    with pytest.raises(ValueError, match="nb201"):
        pred.predict([create("mobilenet").sample(np.random.default_rng(0))])


def test_fewshot_design_is_device_independent_and_nested(embedded):
    train = [c for c in embedded.latency_columns if c != "help_fpga"]
    pred = FewShotLatencyPredictor.pretrain(embedded, train)
    design = pred.design(12)
    assert len(set(design.tolist())) == 12
    assert np.array_equal(pred.design(5), design[:5])
    y = embedded.column("help_fpga")
    pred.fit(design[:10], y[design[:10]])
    assert rho_outside(y, pred.predict_all(), design[:10]) >= 0.99  # the average device alone: 0.976


def test_fewshot_needs_pretraining_and_adapting(embedded):
    with pytest.raises(NotFittedError, match="pretrain"):
        FewShotLatencyPredictor().fit([1, 2, 3], [1.0, 2.0, 3.0])
    pred = FewShotLatencyPredictor.pretrain(embedded, ["help_fpga", "help_eyeriss"])
    with pytest.raises(NotFittedError, match="adapt"):
        pred.predict([0])
    with pytest.raises(ValueError, match="positive"):
        pred.fit([1, 2, 3], [1.0, -2.0, 3.0])
    with pytest.raises(ValueError, match="no measured error"):
        pred.save("/nonexistent/never-written.json")


def test_fewshot_on_full_help_table_held_out_devices():
    """The benchmark protocol at k = 20 (one draw): train on 21 HELP devices, adapt to each of 6."""
    table = NB201Table(need_shared(JOINT_CSV))
    train = [c for c in table.latency_columns if c.startswith("help_") and c not in HELD_OUT]
    assert len(train) == 21
    pred = FewShotLatencyPredictor.pretrain(table, train)
    rhos = []
    for device in HELD_OUT:
        y = table.column(device)
        idx = np.random.default_rng(0).choice(y.size, 20, replace=False)
        rhos.append(rho_outside(y, pred.fit(idx, y[idx]).predict_all(), idx))
    assert min(rhos) >= 0.85 and np.mean(rhos) >= 0.93, rhos


# ----------------------------------------------------------------------------------------------
# the file format
# ----------------------------------------------------------------------------------------------
@pytest.fixture()
def saved_fewshot(tmp_path, pixel3_predictor):
    pred, _ = pixel3_predictor
    return pred, pred.save(tmp_path / "pixel3.json")


def rewrite(path: Path, edit, resign: bool) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    if resign:
        seal(doc)
    path.write_text(json.dumps(doc))


def test_fewshot_round_trip_predicts_identically(saved_fewshot):
    pred, path = saved_fewshot
    loaded = predictors.load(path, expected_fingerprint=NB201TableTarget("help_pixel3"))
    assert type(loaded) is FewShotLatencyPredictor
    assert np.array_equal(loaded.predict_all(), pred.predict_all())
    assert loaded.error_ == pred.error_ and loaded.metric == "latency_ms"
    assert loaded.target_fingerprint == NB201TableTarget("help_pixel3").fingerprint()
    doc = json.loads(path.read_text())
    assert doc["format"] == "tritune-predictor" and doc["schema"] == 2 and doc["kind"] == "fewshot-latency"
    assert doc["checksum"] == "sha256:" + digest(doc) and "hmac" not in doc and "sha256" not in doc
    assert set(doc["error"]) >= {"mape", "rmse", "within_5", "within_10", "spearman", "kendall", "n"}


def test_tampered_file_is_refused(saved_fewshot):
    _, path = saved_fewshot
    text = path.read_text()
    match = re.search(r'"scale": (\d+\.\d+)', text)
    assert match is not None
    edited = match.group(1)[:-1] + ("1" if match.group(1)[-1] != "1" else "2")
    path.write_text(text[: match.start(1)] + edited + text[match.end(1):])
    with pytest.raises(ValueError, match="checksum mismatch"):
        predictors.load(path)


def test_newer_schema_is_refused(saved_fewshot):
    _, path = saved_fewshot
    rewrite(path, lambda d: d.update(schema=3), resign=True)
    with pytest.raises(ValueError, match="schema 3 is newer"):
        predictors.load(path)


def test_schema_1_files_still_load_unauthenticated(saved_fewshot):
    pred, path = saved_fewshot
    doc = json.loads(path.read_text())
    del doc["checksum"]
    doc["schema"] = 1
    doc["sha256"] = digest(doc)
    path.write_text(json.dumps(doc))
    loaded = predictors.load(path)
    assert np.array_equal(loaded.predict_all(), pred.predict_all()) and loaded.authenticated_ is False
    doc["error"]["mape"] = 0.5  # an edit without recomputing the checksum
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="checksum mismatch"):
        predictors.load(path)


def test_checksum_is_no_authentication_but_the_hmac_is(saved_fewshot, tmp_path, monkeypatch):
    """A re-sealed forgery passes the checksum (anyone can compute it) and loads unauthenticated;
    with TRITUNE_PREDICTOR_KEY set, only files saved with that key load."""
    pred, plain = saved_fewshot
    monkeypatch.delenv(KEY_ENV, raising=False)
    forged = tmp_path / "forged.json"
    forged.write_text(plain.read_text())
    rewrite(forged, lambda d: d["error"].update(mape=0.5, within_10=0.99), resign=True)
    loaded = predictors.load(forged)
    assert loaded.error_["mape"] == 0.5 and loaded.authenticated_ is False

    monkeypatch.setenv(KEY_ENV, "a team secret of enough bytes")
    signed = pred.save(tmp_path / "signed.json")
    doc = json.loads(signed.read_text())
    assert doc["hmac"].startswith("hmac-sha256:") and len(doc["hmac"]) == len("hmac-sha256:") + 64
    assert predictors.load(signed).authenticated_ is True
    with pytest.raises(ValueError, match="carries no HMAC"):
        predictors.load(forged)  # a checksum-only file is refused while the key is set
    forged_signed = tmp_path / "forged_signed.json"
    forged_signed.write_text(signed.read_text())
    rewrite(forged_signed, lambda d: d["error"].update(mape=0.5), resign=True)  # re-sealed without the key
    with pytest.raises(ValueError, match="carries no HMAC"):
        predictors.load(forged_signed)
    doc["error"]["mape"] = 0.5
    doc["checksum"] = seal(dict(doc))["checksum"]  # a correct checksum, the old HMAC
    forged_signed.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="HMAC mismatch"):
        predictors.load(forged_signed)
    monkeypatch.setenv(KEY_ENV, "another key of enough bytes!")
    with pytest.raises(ValueError, match="HMAC mismatch"):
        predictors.load(signed)
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ValueError, match="at least 16"):
        predictors.load(signed)
    monkeypatch.delenv(KEY_ENV)
    assert predictors.load(signed).authenticated_ is False  # no key: nothing can be verified


def test_damaged_params_are_a_clean_error(saved_fewshot):
    _, path = saved_fewshot
    rewrite(path, lambda d: d["params"].clear(), resign=True)
    with pytest.raises(ValueError, match="params do not make a 'fewshot-latency' predictor"):
        predictors.load(path)
    rewrite(path, lambda d: d.update(error=[1, 2]), resign=True)
    with pytest.raises(ValueError, match="field 'error' is list"):
        predictors.load(path)


def test_unknown_kind_is_refused(saved_fewshot):
    _, path = saved_fewshot
    rewrite(path, lambda d: d.update(kind="crystal-ball"), resign=True)
    with pytest.raises(ValueError, match="predictor kind: 'crystal-ball' not allowed; allowed: .*fewshot-latency"):
        predictors.load(path)


def test_predictor_for_another_target_is_refused(saved_fewshot):
    _, path = saved_fewshot
    with pytest.raises(ValueError, match="another target.*column"):
        predictors.load(path, expected_fingerprint=NB201TableTarget("help_fpga"))
    with pytest.raises(ValueError, match="another target"):
        predictors.load(path, expected_fingerprint={"device": "help_raspi4"})
    assert predictors.load(path, expected_fingerprint={"device": "help_pixel3"}).fitted


def test_load_through_the_wrong_class_is_refused(saved_fewshot):
    _, path = saved_fewshot
    with pytest.raises(ValueError, match="not a 'layerwise-table'"):
        LayerwiseTablePredictor.load(path)


# ----------------------------------------------------------------------------------------------
# BitFusion layer-wise
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bitfusion():
    return BitFusionTable(need_shared(BITFUSION))


@pytest.fixture(scope="module")
def bitfusion_latency(bitfusion):
    return LayerwiseTablePredictor.from_bitfusion(bitfusion, "latency_ms", n_estimators=150, learning_rate=0.2, refit=False)


def test_bitfusion_lookups_are_exact_on_known_keys(bitfusion, bitfusion_latency):
    keys, values = table_arrays(bitfusion, "latency_ms")
    assert np.array_equal(bitfusion_latency.predict(keys), values)
    # through the IR: a 1x1 conv and a depthwise 5x5 stride-2 conv that the table holds
    conv = LayerSpec("pw", "conv", 96, 456, 14, 14, kernel=1, w_bits=4, a_bits=4)
    dw = LayerSpec("dw", "dwconv", 480, 480, 14, 14, kernel=5, stride=2, groups=480, w_bits=8, a_bits=6)
    pool = LayerSpec("pool", "global_pool", 480, 480, 7, 7)
    expected = bitfusion.lookup(96, 456, 14, 1, 1, 1, 4, 4)[0] + bitfusion.lookup(480, 480, 14, 5, 2, 480, 8, 6)[0]
    assert bitfusion_latency.predict([[conv, dw, pool]])[0] == pytest.approx(expected, rel=1e-15)
    # float layers run at the widest precision the accelerator has (8 bits)
    assert bitfusion_latency.predict([[LayerSpec("pw", "conv", 96, 456, 14, 14)]])[0] == bitfusion.lookup(96, 456, 14, 1, 1, 1, 8, 8)[0]
    assert bitfusion_key(pool) is None


def test_bitfusion_regressor_error_is_measured_and_small(bitfusion_latency):
    err = bitfusion_latency.error_
    assert err["n"] == round(0.2 * 6567) and "held-out" in err["on"]
    assert err["mape"] < 5.0 and err["within_10"] > 0.9


def test_bitfusion_round_trip_predicts_identically(tmp_path, bitfusion, bitfusion_latency):
    space = create("mobilenet")
    rng = np.random.default_rng(3)
    batch = LayerBatch.from_candidates(space, [space.sample(rng) for _ in range(8)])
    before = bitfusion_latency.predict(batch)
    path = bitfusion_latency.save(tmp_path / "bitfusion_latency.json")
    loaded = LayerwiseTablePredictor.load(path, expected_fingerprint=bitfusion_latency.target_fingerprint)
    assert np.array_equal(loaded.predict(batch), before)
    assert np.all(before > 0) and 0 < loaded.coverage(batch) < 1
    keys = batch.keys[:50]
    assert np.array_equal(loaded.predict_layers(keys), bitfusion_latency.predict_layers(keys))
    # the network sum is the sum of its layers
    networks = [space.layers(space.sample(rng)) for _ in range(2)]
    per_layer = [sum(loaded.predict_layers(np.array([bitfusion_key(l)]))[0] for l in net if bitfusion_key(l)) for net in networks]
    assert np.allclose(loaded.predict(networks), per_layer, rtol=1e-12)
    with pytest.raises(ValueError, match="another target"):
        predictors.load(path, expected_fingerprint=NB201TableTarget("help_fpga"))
