"""`tritune predict`: table look-ups, a saved predictor with its measured error, clear refusals."""
from __future__ import annotations

import json

from tritune.cli.main import main as cli_main
from tritune.predictors import FewShotLatencyPredictor
from tritune.spaces import create
from tritune.targets import NB201Table, NB201TableTarget


def test_predict_looks_up_a_table_target(tmp_path, capsys):
    space = create("nb201")
    path = tmp_path / "cand.json"
    path.write_text(json.dumps([space.from_index(0).to_json(), space.from_index(6111).to_json()]))
    assert cli_main(["predict", str(path), "--target", "nb201-table", "--target-option", "column=help_pixel3"]) == 0
    out = capsys.readouterr().out
    table = NB201Table()
    for idx in (0, 6111):
        assert f"{table.column('help_pixel3')[idx]:10.4g}" in out
    assert "not from a model" in out


def test_predict_with_a_saved_predictor_prints_its_error_and_refuses_other_targets(tmp_path, capsys):
    table = NB201Table()
    train = [c for c in table.latency_columns if c != "help_pixel3"]
    target = NB201TableTarget("help_pixel3")
    predictor = FewShotLatencyPredictor.pretrain(table, train)
    design = predictor.design(20)
    predictor.fit(design, table.column("help_pixel3")[design], target=target)
    file = tmp_path / "pixel3.json"
    predictor.save(file)
    assert cli_main(["predict", "--target", "nb201-table", "--target-option", "column=help_pixel3",
                     "--predictor", str(file), "--space", "nb201", "--sample", "4"]) == 0
    out = capsys.readouterr().out
    assert "FewShotLatencyPredictor" in out and "measured error on held-out data" in out
    assert len([line for line in out.splitlines() if len(line.split()) == 2]) == 4
    # the same file for another device's table is refused
    assert cli_main(["predict", "--target", "nb201-table", "--target-option", "column=help_fpga",
                     "--predictor", str(file), "--space", "nb201"]) == 2
    assert "fingerprint" in capsys.readouterr().err


def test_predict_refuses_a_space_the_target_cannot_run(capsys):
    assert cli_main(["predict", "--target", "nb201-table", "--space", "mobilenet"]) == 2
    assert "does not support space 'mobilenet'" in capsys.readouterr().err
