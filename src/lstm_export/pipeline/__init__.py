"""The one-command demo: data, training, export, classification of a folder, benchmark."""
