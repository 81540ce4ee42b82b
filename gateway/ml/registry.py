"""Loads models named in config into onnxruntime sessions and checks what callers feed them.

A registry lives in each worker process: sessions are not shared across processes, and
creating one is costly, so each is made on the first `infer` for that model and reused.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from ..errors import UserError
from .settings import ModelSettings

# onnxruntime's type strings for the tensor element types numpy can hold
_ONNX_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(uint8)": "uint8", "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
    "tensor(string)": "object",
}


class ModelError(UserError, ValueError):
    """A model that cannot be loaded, or inputs that do not fit it; the message says why."""


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LoadedModel:
    """One onnxruntime session and the input signature it expects."""

    def __init__(self, settings: ModelSettings) -> None:
        import onnxruntime as ort  # only in processes that run inference

        self.settings = settings
        try:
            actual = file_sha256(settings.path)
        except OSError as exc:
            raise ModelError(f"model {settings.name}: cannot read {settings.path}: "
                             f"{exc.strerror}") from None
        if settings.sha256 and actual != settings.sha256:
            raise ModelError(f"model {settings.name}: sha256 mismatch for {settings.path}: "
                             f"expected {settings.sha256}, file has {actual}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = settings.intra_op_threads
        opts.inter_op_num_threads = 1
        available = set(ort.get_available_providers())
        providers = [p for p in settings.execution_providers if p in available]
        if not providers:
            raise ModelError(f"model {settings.name}: none of the execution providers "
                             f"{settings.execution_providers} is available here "
                             f"(available: {sorted(available)})")
        try:
            self.session = ort.InferenceSession(settings.path, opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"model {settings.name}: {settings.path} is not a usable ONNX "
                             f"model: {first}") from None
        self.inputs = {i.name: (i.type, i.shape) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        # what a well-formed input looks like, for a check of a few attribute reads per
        # call (the full check below explains what is wrong; for a small model it costs
        # as much as the inference)
        import numpy as np

        self._ndarray = np.ndarray
        self._fast = {name: (np.dtype(_ONNX_DTYPES[t]) if t in _ONNX_DTYPES else None,
                             len(shape),
                             tuple((i, d) for i, d in enumerate(shape) if isinstance(d, int)))
                      for name, (t, shape) in self.inputs.items()}

    def _well_formed(self, inputs: Any) -> bool:
        if type(inputs) is not dict or len(inputs) != len(self._fast):
            return False
        for name, value in inputs.items():
            spec = self._fast.get(name)
            if spec is None or type(value) is not self._ndarray:
                return False
            dtype, ndim, fixed = spec
            if dtype is None or value.dtype != dtype or value.ndim != ndim:
                return False
            shape = value.shape
            for i, d in fixed:
                if shape[i] != d:
                    return False
        return True

    def check_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if self._well_formed(inputs):
            return inputs
        import numpy as np

        if not isinstance(inputs, dict):
            raise ModelError(f"model {self.settings.name}: inputs must be a dict of name -> "
                             f"array, got {type(inputs).__name__}")
        missing = sorted(set(self.inputs) - set(inputs))
        extra = sorted(set(inputs) - set(self.inputs))
        if missing or extra:
            raise ModelError(f"model {self.settings.name}: inputs must be exactly "
                             f"{sorted(self.inputs)}; missing {missing}, unknown {extra}")
        feed = {}
        for name, value in inputs.items():
            onnx_type, shape = self.inputs[name]
            want = _ONNX_DTYPES.get(onnx_type)
            if not isinstance(value, np.ndarray):
                # plain lists are a convenience: converted to the model's own type
                try:
                    value = np.asarray(value, dtype=want)
                except (TypeError, ValueError) as exc:
                    raise ModelError(f"model {self.settings.name}: input {name!r} cannot be "
                                     f"made a {want} array: {exc}") from None
            elif want is not None and value.dtype != np.dtype(want):
                raise ModelError(f"model {self.settings.name}: input {name!r} must have dtype "
                                 f"{want}, got {value.dtype}")
            if len(shape) != value.ndim or any(
                    isinstance(d, int) and d != n for d, n in zip(shape, value.shape,
                                                                  strict=True)):
                want_shape = tuple(d if isinstance(d, int) else "N" for d in shape)
                raise ModelError(f"model {self.settings.name}: input {name!r} must have shape "
                                 f"{want_shape}, got {tuple(value.shape)}")
            feed[name] = value
        return feed

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        feed = self.check_inputs(inputs)
        results = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, results, strict=True))


class ModelRegistry:
    """Models by name; each loaded on first use and kept for the life of the process."""

    def __init__(self, models: list[ModelSettings]) -> None:
        self.settings = {m.name: m for m in models}
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()  # a handler may run inference from its own threads

    def get(self, name: str) -> LoadedModel:
        model = self._loaded.get(name)
        if model is not None:
            return model
        with self._lock:
            model = self._loaded.get(name)
            if model is None:
                settings = self.settings.get(name)
                if settings is None:
                    known = ", ".join(sorted(self.settings)) or "none configured"
                    raise ModelError(f"unknown model {name!r} (known: {known})")
                model = self._loaded[name] = LoadedModel(settings)
        return model

    def infer(self, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run model `name` on named numpy arrays; returns the outputs by name."""
        return self.get(name).run(inputs)
