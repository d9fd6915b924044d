"""INI configuration: the typed engine (:mod:`.engine`), the sections every method shares
(:mod:`.sections`), options declared by components (:mod:`.components`) and the generated
reference pages (:mod:`.docs`). Each method's schema lives with the method
(``labelreg.methods.*_config``); this package knows no method, network or loss.
"""

import os
from collections.abc import Sequence

from labelreg.config.components import ComponentOptions, Selector, parse_with_components
from labelreg.config.docs import (
    components_markdown,
    docs_command,
    replace_generated_block,
    schema_markdown,
)
from labelreg.config.engine import KINDS, REQUIRED, Config, Key, Schema, check_pair, fail, parse
from labelreg.config.sections import (
    check_train,
    derive_run_paths,
    method_section,
    parse_method,
    train_section,
)
from labelreg.errors import ConfigError
from labelreg.registry import import_target

__all__ = ["load", "ConfigError", "Key", "Schema", "REQUIRED", "KINDS", "Config", "parse", "fail", "check_pair",
           "ComponentOptions", "Selector", "parse_with_components", "schema_markdown",
           "components_markdown", "replace_generated_block", "docs_command", "method_section",
           "train_section", "derive_run_paths", "parse_method", "check_train"]


def load(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Parse and validate any method's INI file (the method its ``[Method] name`` names,
    label-driven registration by default) into typed settings, before TensorFlow loads.

    The schema is the method's: this looks the method up by name in the method registry
    (``labelreg.methods.registry.load_config``), as a network is looked up by
    ``network_type``; the config package itself knows no method.

    Raises:
        ConfigError: any problem, naming the file, section, key and value.
    """
    return import_target("labelreg.methods.registry:load_config")(path, overrides)[1]
