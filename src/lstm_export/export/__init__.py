"""Export stage: checkpoint -> ONNX / TorchScript, proven against eager PyTorch at export time.

Modules (each imports torch / onnx / onnxruntime inside its functions, so the CLI stays fast):

- :mod:`.to_onnx` -- ``export_onnx``: torch.onnx (dynamo or legacy), native-LSTM audit, metadata.
- :mod:`.to_torchscript` -- ``export_torchscript``: scripted, frozen, optimised ``.ts``.
- :mod:`.derive` -- the one recipe for files derived from the fp32 graph, with its accuracy guard.
- :mod:`.quantize` -- ``quantize_int8``: dynamic int8 with ``DynamicQuantizeLSTM``.
- :mod:`.fp16` -- ``convert_fp16``: float16 weights, float32 inputs and outputs.
- :mod:`.source` -- every export's plan (checkpoint, target, test images) and last step (write
  under a temporary name, validate, rename).
- :mod:`.validate` -- the checks every exported file passes before it is renamed into place:
  the file and the checkpoint run through the runner registry, compared by :mod:`lstm_export.parity`.
- :mod:`.simplify` -- the exported graph's LSTM bookkeeping rewritten away (onnxscript rules).
- :mod:`.audit` -- what an ONNX graph holds (opset, ops, LSTM nodes, inputs and outputs).
- :mod:`.placement` -- which ONNX Runtime execution provider runs each node.
- :mod:`.inspect_model` -- ``inspect_model`` for ``.onnx``, ``.ts`` and ``.pt``.
- :mod:`.shapes` -- ``lstm-export shapes``: ``nn.LSTM``'s arguments and shapes, measured.
- :mod:`.metadata`, :mod:`.quiet` -- what files carry; progress callbacks, exporters kept quiet.
- :mod:`.cli`, :mod:`.render` -- the commands, and how their reports read (the printing modules).
"""
