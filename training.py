"""Train a registration network: ``python training.py config.ini`` (``-h`` for options)."""

import sys

from labelreg.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
