"""``python -m lstm_export``: the same command line as the ``lstm-export`` script."""

from lstm_export.cli import main

if __name__ == "__main__":
    main()
