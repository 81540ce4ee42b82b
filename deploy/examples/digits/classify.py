"""The digits example's handler: {"pixels": [64 floats, 0..1, row by row]} ->
{"digit": n, "confidence": p}, published to the function's result topic.

The model named "digits" comes from the gateway's [[models]]; the worker loads it once, on
the first invocation, and keeps it for the ones after.
"""

from __future__ import annotations

import numpy as np

MODEL = "digits"


def handler(event, context):
    pixels = np.asarray(event["pixels"], dtype=np.float32)
    if pixels.shape != (64,):
        raise ValueError(f"pixels: expected 64 values (8x8), got shape {pixels.shape}")
    out = context.infer(MODEL, {"X": pixels.reshape(1, 64)})
    probabilities = out["probabilities"][0]
    digit = int(out["label"][0])
    return {"digit": digit, "confidence": round(float(probabilities[digit]), 4)}
