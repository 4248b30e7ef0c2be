"""Train stage: presets and the training loop that writes a self-describing checkpoint."""
