"""[[functions]] and [[models]] validation: one clear line naming the field."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.config import ConfigError, config_from_dict, load_config
from gateway.errors import UserError

from .conftest import write_code


@pytest.fixture
def code(tmp_path: Path) -> Path:
    return write_code(tmp_path / "code", {"app": "def handler(event, context):\n    return 1\n",
                                          "broken": "def handler(:\n"})


def load(text: str, base: Path) -> object:
    return config_from_dict(tomllib.loads(text), base)


def test_valid_function_and_relative_paths(code: Path, tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")
    cfg = load('[[functions]]\nname = "f"\ncode = "code"\nhandler = "app.handler"\n'
               'triggers = ["a/+"]\nlifecycle = "pinned"\ninstances = 2\n'
               '[[models]]\nname = "m"\npath = "m.onnx"\n', tmp_path)
    fn = cfg.functions[0]
    assert fn.code == str(code.resolve()) and fn.instances == 2 and fn.triggers == ["a/+"]
    assert cfg.models[0].path == str((tmp_path / "m.onnx").resolve())


def test_config_file_paths_are_relative_to_the_file(code: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "gw.toml").write_text('[[functions]]\nname = "f"\ncode = "code"\n'
                                      'handler = "app.handler"\n'
                                      '[[models]]\nname = "m"\npath = "m.onnx"\n')
    monkeypatch.chdir(tmp_path.parent)
    cfg = load_config(Path(tmp_path.name) / "gw.toml")  # a relative config path
    assert cfg.functions[0].code == str(code.resolve())
    assert cfg.models[0].path == str((tmp_path / "m.onnx").resolve())


@pytest.mark.parametrize(("body", "message"), [
    ('code = "nowhere"\nhandler = "app.handler"', "functions.f.code: no directory at"),
    ('code = "code"\nhandler = "missing.handler"',
     "functions.f.handler: unknown handler module 'missing'"),
    ('code = "code"\nhandler = "app.other"', "defines no 'other'"),
    ('code = "code"\nhandler = "app"', "must be 'module.function'"),
    ('code = "code"\nhandler = "broken.handler"', "has a syntax error"),
    ('code = "code"\nhandler = "app.handler"\ntimeout_s = 0',
     "functions.f.timeout_s: must be between 0.01 and 900, got 0"),
    ('code = "code"\nhandler = "app.handler"\nmemory_mb = "lots"',
     "functions.f.memory_mb: must be an integer"),
    ('code = "code"\nhandler = "app.handler"\nlifecycle = "forever"',
     "functions.f.lifecycle: must be one of on-demand, pinned"),
    ('code = "code"\nhandler = "app.handler"\ntriggers = ["a/#/b"]', "functions.f.triggers"),
    ('code = "code"\nhandler = "app.handler"\nresult_topic = "a/+"',
     "functions.f.result_topic"),
    ('code = "code"\nhandler = "app.handler"\nretries = 3', "functions[0].retries: unknown"),
    ('code = "code"\nhandler = "app.handler"\nenvironment = {A = 1}',
     "functions.f.environment: must be a table of strings"),
    ('code = "code"\nhandler = "app.handler"\nlifecycle = "pinned"\nbatch_max = 0',
     "functions.f.batch_max: must be between 1 and 4096, got 0"),
    ('code = "code"\nhandler = "app.handler"\nlifecycle = "pinned"\nbatch_max = 2.5',
     "functions.f.batch_max: must be an integer, got 2.5"),
    ('code = "code"\nhandler = "app.handler"\nbatch_max = 8',
     'functions.f.batch_max: batching is for pinned functions; set lifecycle = "pinned"'),
    ('code = "code"\nhandler = "app.handler"\nlifecycle = "pinned"\nbatch_max = 64\n'
     'queue_size = 32', "functions.f.batch_max: must be at most queue_size (32), got 64"),
    ('code = "code"\nhandler = "app.handler"\nlifecycle = "pinned"\nbatch_max = 8\n'
     'batch_window_ms = -1', "functions.f.batch_window_ms: must be between 0 and 10000, "
     "got -1"),
    ('code = "code"\nhandler = "app.handler"\nlifecycle = "pinned"\nbatch_max = 8\n'
     'batch_window_ms = "5ms"', "functions.f.batch_window_ms: must be a number, got '5ms'"),
    ('code = "code"\nhandler = "app.handler"\nlifecycle = "pinned"\nbatch_window_ms = 5',
     "functions.f.batch_window_ms: has no effect unless batch_max is more than 1"),
    ('code = "code"\nhandler = "app.handler"\nmax_invoke_depth = 0',
     "functions.f.max_invoke_depth: must be between 1 and 64, got 0"),
])
def test_bad_function_settings(code: Path, tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(f'[[functions]]\nname = "f"\n{body}\n', tmp_path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_models(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="models.m.path: no model file at"):
        load('[[models]]\nname = "m"\npath = "none.onnx"\n', tmp_path)
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(UserError, match="models.m.sha256: must be 64 hex digits"):
        load('[[models]]\nname = "m"\npath = "m.onnx"\nsha256 = "abc"\n', tmp_path)
    with pytest.raises(UserError, match="unknown provider 'GPU'"):
        load('[[models]]\nname = "m"\npath = "m.onnx"\nexecution_providers = ["GPU"]\n',
             tmp_path)


def test_duplicate_names(code: Path, tmp_path: Path) -> None:
    one = '[[functions]]\nname = "f"\ncode = "code"\nhandler = "app.handler"\n'
    with pytest.raises(ConfigError, match="functions.f: declared twice"):
        load(one + one, tmp_path)


def test_result_topic_feeding_own_trigger_is_refused(code: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="functions.f.result_topic: 'a/out' matches the "
                                          "function's own trigger 'a/#'"):
        load('[[functions]]\nname = "f"\ncode = "code"\nhandler = "app.handler"\n'
             'triggers = ["a/#"]\nresult_topic = "a/out"\n', tmp_path)


def test_batching_settings(code: Path, tmp_path: Path) -> None:
    cfg = load('[[functions]]\nname = "f"\ncode = "code"\nhandler = "app.handler"\n'
               'lifecycle = "pinned"\nbatch_max = 32\nbatch_window_ms = 2\n'
               '[[functions]]\nname = "g"\ncode = "code"\nhandler = "app.handler"\n',
               tmp_path)
    f, g = cfg.functions
    assert (f.batch_max, f.batch_window_ms, f.batching) == (32, 2.0, True)
    assert (g.batch_max, g.batch_window_ms, g.batching) == (1, 0.0, False)   # off by default
