"""``python -m neuralode``: the same as the ``neuralode`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m neuralode"))
