"""Infer stage: one Runner contract over eager PyTorch, TorchScript and ONNX Runtime."""
