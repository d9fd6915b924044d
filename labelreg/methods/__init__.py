"""Registration methods, each a :class:`~labelreg.methods.base.Method` served by the one engine.

- :mod:`labelreg.methods.base`: the protocol;
- :mod:`labelreg.methods.registry`: INI file -> method (``[Method] name``), validated before
  TensorFlow loads;
- :mod:`labelreg.methods.pairwise`: the shared base of methods predicting a DDF from a pair;
- :mod:`labelreg.methods.label_driven`: label-driven registration (``labelreg``);
- :mod:`labelreg.methods.comir`: CoMIR (``comir``).

Only the base and the registry are imported here; a method's module is imported when it is used.
"""

from labelreg.methods.base import Method
from labelreg.methods.registry import (
    METHODS,
    get_method,
    load_config,
    method_name,
    register_method,
)

__all__ = ["Method", "METHODS", "get_method", "load_config", "method_name", "register_method"]
