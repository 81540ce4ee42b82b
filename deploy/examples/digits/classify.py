"""The digits example's handlers: {"pixels": [64 floats, 0..1, row by row]} ->
{"digit": n, "confidence": p}, published to the function's result topic. An image may also
come as a binary payload of 256 bytes: the 64 values as little-endian float32, as a camera
would send a tensor (no JSON to parse).

`handler` classifies one image per call. `batch_handler` is for a function with
batch_max > 1: it gets a list of events, runs the model once on all their images stacked,
and returns one result per event (an event without a valid image gets its own error).

The model named "digits" comes from the gateway's [[models]]; the worker loads it once, on
the first invocation, and keeps it for the ones after.
"""

from __future__ import annotations

import numpy as np

MODEL = "digits"


def pixels(event) -> np.ndarray:
    """The event's image as 64 float32 values; ValueError if it has none."""
    if isinstance(event, bytes):
        if len(event) != 256:
            raise ValueError(f"a binary image is 64 float32 values (256 bytes), got "
                             f"{len(event)} bytes")
        return np.frombuffer(event, dtype="<f4")
    if not isinstance(event, dict) or "pixels" not in event:
        raise ValueError('expected {"pixels": [64 values]} or 256 bytes of float32')
    image = np.asarray(event["pixels"], dtype=np.float32)
    if image.shape != (64,):
        raise ValueError(f"pixels: expected 64 values (8x8), got shape {image.shape}")
    return image


def handler(event, context):
    out = context.infer(MODEL, {"X": pixels(event).reshape(1, 64)})
    probabilities = out["probabilities"][0]
    digit = int(out["label"][0])
    return {"digit": digit, "confidence": round(float(probabilities[digit]), 4)}


def batch_handler(events, context):
    results: list = [None] * len(events)
    images, where = [], []
    for i, event in enumerate(events):
        try:
            images.append(pixels(event))
            where.append(i)
        except ValueError as exc:  # this event's error; the rest of the batch goes on
            results[i] = exc
    if images:
        out = context.infer(MODEL, {"X": np.stack(images)})  # one session.run for all
        labels = out["label"]
        confidence = out["probabilities"][np.arange(len(labels)), labels]
        for i, digit, p in zip(where, labels.tolist(), confidence.tolist(), strict=True):
            results[i] = {"digit": digit, "confidence": round(p, 4)}
    return results
