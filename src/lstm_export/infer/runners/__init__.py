"""One file per backend; register each in :mod:`lstm_export.infer.registry`."""
