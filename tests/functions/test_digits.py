"""The digits example end to end: the committed model through the registry, and through a
pinned function in a real gateway."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gateway.ml import ModelError, ModelRegistry, ModelSettings
from tests.conftest import BrokerProcess

from .conftest import Collector

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "digits"
META = json.loads((EXAMPLE / "digits.json").read_text())


def registry(path: Path | None = None, sha256: str | None = META["sha256"]) -> ModelRegistry:
    return ModelRegistry([ModelSettings("digits", str(path or EXAMPLE / "digits.onnx"),
                                        sha256)])


def test_committed_model_matches_recorded_accuracy() -> None:
    pytest.importorskip("sklearn")
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_train", EXAMPLE / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    _x_train, x_test, _y_train, y_test = train.split()
    assert len(y_test) == META["test_samples"]
    out = registry().infer("digits", {"X": x_test})
    accuracy = float((out["label"] == y_test).mean())
    assert accuracy == pytest.approx(META["accuracy"], abs=1e-6)
    assert accuracy > 0.9


def test_sha256_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="sha256 mismatch.*expected 0000"):
        registry(sha256="0" * 64).get("digits")


def test_bad_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(ModelError, match="is not a usable ONNX model"):
        registry(bad, sha256=None).get("digits")


def test_inputs_checked_against_the_model() -> None:
    reg = registry()
    x = np.zeros((1, 64), np.float32)
    with pytest.raises(ModelError, match=r"missing \['X'\], unknown \['pixels'\]"):
        reg.infer("digits", {"pixels": x})
    with pytest.raises(ModelError, match="must have dtype float32, got float64"):
        reg.infer("digits", {"X": x.astype(np.float64)})
    with pytest.raises(ModelError, match=r"must have shape \('N', 64\), got \(1, 63\)"):
        reg.infer("digits", {"X": x[:, :63]})
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        reg.infer("nope", {"X": x})
    assert reg.infer("digits", {"X": x.tolist()})["label"].shape == (1,)  # lists converted


def test_example_config_runs_in_a_gateway(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    example = tmp_path / "digits"
    shutil.copytree(EXAMPLE, example)
    gw = BrokerProcess(tmp_path / "state", tls=False,
                       extra_args=["--config", str(example / "lichen.toml")]).start()
    col = Collector(gw.port)
    try:
        col.subscribe("digits/result", "digits/error")
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        digits = load_digits()
        for i in range(5):
            col.publish("digits/cam1/pixels", {"pixels": (digits.data[i] / 16).tolist()})
            r = col.expect_json("digits/result")
            assert r["digit"] == digits.target[i] and 0.5 < r["confidence"] <= 1
        col.publish("digits/cam1/pixels", {"pixels": [0.0] * 63})
        err = col.expect_json("digits/error")
        assert err["errorType"] == "ValueError" and "64 values" in err["errorMessage"]
        # the batched function: the same answers, one per event, a bad image its own error
        events = [{"pixels": (digits.data[i] / 16).tolist()} for i in range(12)]
        events[7] = {"pixels": [0.0] * 10}
        for event in events:
            col.publish("digits/cam2/stream", event, qos=0)
        got = [col.expect_json("digits/result") for _ in range(11)]
        good = [i for i in range(12) if i != 7]
        want = registry().infer("digits", {"X": (digits.data[good] / 16).astype(np.float32)})
        assert [r["digit"] for r in got] == want["label"].tolist()   # the model's own answers
        err = col.expect_json("digits/error")
        assert err["topic"] == "digits/cam2/stream" and "64 values" in err["errorMessage"]
    finally:
        col.close()
        assert gw.stop() == 0
