"""Export stage: checkpoint -> ONNX / TorchScript (and int8 / fp16 ONNX), each file proven against
eager PyTorch before it is renamed into place (docs/design.md). Modules import torch, onnx and
onnxruntime inside their functions, so the CLI stays fast."""
