"""Register test pairs with a trained network: ``python inference.py config.ini`` (``-h``)."""

import sys

from labelreg.cli import infer_main

if __name__ == "__main__":
    sys.exit(infer_main())
