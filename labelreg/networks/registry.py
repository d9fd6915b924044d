"""Names of the networks as written in INI files (``[Network] network_type = local``).

The built-in names are known without importing TensorFlow, so a misspelt ``network_type`` is
reported before it loads; a class added with :func:`register_network` is selectable from the INI
with no other edit.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from labelreg.registry import Registry

__all__ = ["NETWORKS", "register_network", "get_network", "available_networks", "build_network"]

NETWORKS = Registry("network type", {
    "local": "labelreg.networks.localnet:LocalNet",
}, sort_names=True)
# A network with options of its own declares them beside its code, in a module without
# TensorFlow, so that an INI file is checked before TensorFlow loads.
NETWORKS.add("global", "labelreg.networks.globalnet:GlobalNet",
             options="labelreg.networks.affine_options:OPTIONS")
NETWORKS.add("composite", "labelreg.networks.composite:CompositeNet",
             options="labelreg.networks.affine_options:OPTIONS")
NETWORKS.add("centroid_align", "labelreg.networks.centroid_align:CentroidAlignNet",
             options="labelreg.networks.centroid_align_options:OPTIONS")
NETWORKS.add("unet", "labelreg.networks.unet:UNet",
             options="labelreg.networks.unet_options:OPTIONS")
NETWORKS.add("gradirn", "labelreg.networks.gradirn:GraDIRN",
             options="labelreg.networks.gradirn_options:OPTIONS")


def register_network(name: str, options: Any = None) -> Callable[[type], type]:
    """Class decorator adding a ``[moving, fixed] -> ddf`` network under ``name``
    (case-insensitive).

    Args:
        name: the ``[Network] network_type`` value.
        options: the INI options the network declares (a
            :class:`labelreg.config.ComponentOptions`; or give the class an ``ini_options``
            attribute): its ``[Network]`` keys become constructor arguments when set.

    Raises:
        ValueError: when ``name`` is empty or already taken by another class.
    """
    return NETWORKS.register(name, options=options)


def available_networks() -> tuple[str, ...]:
    """The registered names, sorted."""
    return tuple(sorted(NETWORKS))


def get_network(name: str) -> type:
    """The network class registered as ``name`` (case-insensitive, surrounding spaces ignored).

    Raises:
        ConfigError: for an unknown name; the message lists the known ones.
    """
    return NETWORKS.get(name)


def build_network(
    name: str, ndim: int, fixed_shape: Sequence[int] | None = None, **kwargs: Any
) -> Any:
    """Create the network registered as ``name``.

    Args:
        name: ``local``, ``global``, ``composite``, ``unet`` or a name added with
            :func:`register_network`.
        ndim: 2 or 3.
        fixed_shape: the fixed images' spatial shape; passed to the networks that take it
            (``global``, ``composite``: their dense layer depends on it), checked and otherwise
            unused.
        **kwargs: constructor arguments of the class (e.g. ``num_channel_initial``,
            ``ddf_levels``); arguments the class does not take are an error.

    Returns:
        An unbuilt ``keras.Model``.

    Raises:
        ConfigError: for an unknown name or an argument the class does not take.
        ValueError: for a bad ``ndim``, ``fixed_shape`` or argument value.
    """
    from labelreg.errors import ConfigError
    from labelreg.networks.layers import check_ndim, check_spatial_shape

    cls = get_network(name)
    ndim = check_ndim(ndim)
    if fixed_shape is not None:
        fixed_shape = check_spatial_shape(fixed_shape, ndim, "fixed_shape")
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in _constructor_arguments(cls)
                if p not in ("self", "kwargs", "ndim", "fixed_shape")]
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise ConfigError(
            f"network type {name!r} ({cls.__name__}) does not take the argument(s) {unknown}; "
            f"it takes: {', '.join(accepted)}."
        )
    if "fixed_shape" in params:
        kwargs["fixed_shape"] = fixed_shape
    return cls(ndim=ndim, **kwargs)


def _constructor_arguments(cls: type) -> list[str]:
    """Named constructor arguments of ``cls``, and of its labelreg bases while a constructor
    forwards ``**kwargs`` (e.g. ``moving_input`` of every registration network's base)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        names += [p.name for p in params.values()
                  if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names]
        forwards = any(p.kind is p.VAR_KEYWORD for p in params.values())
        if not forwards or not klass.__module__.startswith("labelreg"):
            break
    return names
