"""The classify stage: `base` (the Classifier contract, imageNet semantics), the ONNX Runtime and
jetson-inference backends, and `factory.load_classifier`."""
