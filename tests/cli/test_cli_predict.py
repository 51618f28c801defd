"""`tritune predict`: table look-ups, a saved predictor with its measured error, clear refusals."""
from __future__ import annotations

import json

from tritune.cli.main import main as cli_main
from tritune.predictors import FewShotLatencyPredictor
from tritune.predictors.io import KEY_ENV, seal
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


def test_predict_with_a_saved_predictor_prints_its_error_and_refuses_other_targets(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
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
    assert "FewShotLatencyPredictor, unauthenticated" in out
    assert "error the file claims (unverified" in out and "measured error" not in out  # no key: nothing vouches for it
    assert len([line for line in out.splitlines() if len(line.split()) == 2]) == 4
    # the same file for another device's table is refused
    assert cli_main(["predict", "--target", "nb201-table", "--target-option", "column=help_fpga",
                     "--predictor", str(file), "--space", "nb201"]) == 2
    assert "fingerprint" in capsys.readouterr().err


def test_predict_refuses_a_space_the_target_cannot_run(capsys):
    assert cli_main(["predict", "--target", "nb201-table", "--space", "mobilenet"]) == 2
    assert "does not support space 'mobilenet'" in capsys.readouterr().err


def test_a_forged_error_is_never_printed_as_measured(tmp_path, capsys, monkeypatch):
    """A file re-sealed after its error was edited: without a key its error is shown as an unverified
    claim; with the key set the forgery is refused and a file saved with the key is authenticated."""
    table = NB201Table()
    target = NB201TableTarget("help_pixel3")
    predictor = FewShotLatencyPredictor.pretrain(table, [c for c in table.latency_columns if c != "help_pixel3"])
    design = predictor.design(20)
    monkeypatch.setenv(KEY_ENV, "a team secret of enough bytes")
    predictor.fit(design, table.column("help_pixel3")[design], target=target)
    signed = predictor.save(tmp_path / "signed.json")
    doc = json.loads(signed.read_text())
    doc["error"].update(mape=0.5, within_10=0.99)
    seal(doc)  # the checksum anyone can recompute; no key, so no HMAC
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    argv = ["predict", "--target", "nb201-table", "--target-option", "column=help_pixel3", "--space", "nb201", "--predictor"]
    assert cli_main(argv + [str(signed)]) == 0
    out = capsys.readouterr().out
    assert "authenticated file" in out and "measured error on held-out data" in out
    assert cli_main(argv + [str(forged)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tritune: error: predictor file") and "carries no HMAC" in err and err.count("\n") == 1
    monkeypatch.delenv(KEY_ENV)
    assert cli_main(argv + [str(forged)]) == 0
    out = capsys.readouterr().out
    assert "error the file claims (unverified" in out and "MAPE 0.50%" in out and "measured" not in out


def test_predict_refuses_empty_and_malformed_candidate_files(tmp_path, capsys):
    argv = ["predict", "--target", "nb201-table"]
    cases = {"empty.json": "[]", "junk.json": "\x00\x01binary", "nested.json": "[" * 100_000 + "]" * 100_000,
             "nan.json": '{"schema": NaN}', "dup.json": '{"a": 1, "a": 2}', "number.json": "7"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert cli_main([*argv, str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("tritune: error: ") and name in err and err.count("\n") == 1, (name, err)
    assert cli_main([*argv, str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert cli_main([*argv, "--space", "nb201", "--sample", "0"]) == 2
    assert "--sample" in capsys.readouterr().err
