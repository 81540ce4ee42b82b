"""Train a digit classifier on scikit-learn's bundled 8x8 digits, export it to ONNX.

    python deploy/examples/digits/train.py        # writes digits.onnx and digits.json here

The held-out split is fixed by SEED and TEST_SIZE so that tests can rebuild it and check the
committed model against the accuracy recorded in digits.json. Needs scikit-learn and
skl2onnx (the `test` extra); the gateway itself needs neither.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 7
TEST_SIZE = 0.25


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test): pixels scaled to 0..1 as float32."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return train_test_split(x, digits.target, test_size=TEST_SIZE, random_state=SEED,
                            stratify=digits.target)


def main() -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x_train, x_test, y_train, y_test = split()
    model = LogisticRegression(max_iter=2000, C=1.0)
    model.fit(x_train, y_train)
    sk_accuracy = float(model.score(x_test, y_test))
    # zipmap off: probabilities come out as one float tensor, not a list of dicts
    onx = to_onnx(model, x_train[:1], options={id(model): {"zipmap": False}},
                  target_opset=17)
    data = onx.SerializeToString()
    (HERE / "digits.onnx").write_bytes(data)

    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    labels = sess.run(None, {sess.get_inputs()[0].name: x_test})[0]
    onnx_accuracy = float((labels == y_test).mean())
    meta = {"model": "digits.onnx", "sha256": hashlib.sha256(data).hexdigest(),
            "input": sess.get_inputs()[0].name, "outputs": [o.name for o in sess.get_outputs()],
            "seed": SEED, "test_size": TEST_SIZE, "test_samples": int(len(y_test)),
            "sklearn_accuracy": round(sk_accuracy, 6), "accuracy": round(onnx_accuracy, 6),
            "classifier": "LogisticRegression(max_iter=2000)"}
    (HERE / "digits.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
