"""Test helper: the digits test accuracy of an ONNX file, computed independently of the build."""

import sys

import numpy as np
import onnxruntime as ort

from conftest import ROOT

sys.path.insert(0, str(ROOT / "examples"))
import digits_cnn  # noqa: E402


def accuracy_of_onnx(path) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, _, x, y = digits_cnn.load_digits_split()
    logits = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float((np.argmax(logits, 1) == y.numpy()).mean())


def per_class_accuracy_of_onnx(path) -> dict[str, float]:
    """The accuracy of an ONNX file on each digit of the test split, computed independently of the build."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, _, x, y = digits_cnn.load_digits_split()
    predicted = np.argmax(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], 1)
    labels = y.numpy()
    return {f"digit {d}": float((predicted[labels == d] == d).mean()) for d in range(10)}
