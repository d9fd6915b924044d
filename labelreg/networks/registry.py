"""Names of the networks as written in INI files (``[Network] network_type = local``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import keras

from labelreg.errors import ConfigError
from labelreg.networks.composite import CompositeNet
from labelreg.networks.globalnet import GlobalNet
from labelreg.networks.layers import check_ndim, check_spatial_shape
from labelreg.networks.localnet import LocalNet
from labelreg.networks.unet import UNet

__all__ = ["register_network", "get_network", "available_networks", "build_network"]

_NETWORKS: dict[str, type[keras.Model]] = {}


def register_network(name: str) -> Callable[[type[keras.Model]], type[keras.Model]]:
    """Class decorator adding a network under ``name`` (case-insensitive).

    Raises:
        ValueError: when ``name`` is empty or already taken by another class.
    """
    key = str(name).strip().lower()
    if not key:
        raise ValueError(f"a network name must be a non-empty string; received name={name!r}.")

    def decorator(cls: type[keras.Model]) -> type[keras.Model]:
        if key in _NETWORKS and _NETWORKS[key] is not cls:
            raise ValueError(
                f"network name {key!r} is already registered to {_NETWORKS[key].__name__}."
            )
        _NETWORKS[key] = cls
        return cls

    return decorator


for _name, _cls in (
    ("local", LocalNet),
    ("global", GlobalNet),
    ("composite", CompositeNet),
    ("unet", UNet),
):
    register_network(_name)(_cls)


def available_networks() -> tuple[str, ...]:
    """The registered names, sorted."""
    return tuple(sorted(_NETWORKS))


def get_network(name: str) -> type[keras.Model]:
    """The network class registered as ``name`` (case-insensitive, surrounding spaces ignored).

    Raises:
        ConfigError: for an unknown name; the message lists the known ones.
    """
    key = str(name).strip().lower()
    if key not in _NETWORKS:
        raise ConfigError(
            f"unknown network type {name!r}; expected one of: {', '.join(available_networks())}."
        )
    return _NETWORKS[key]


def build_network(
    name: str, ndim: int, fixed_shape: Sequence[int] | None = None, **kwargs: Any
) -> keras.Model:
    """Create the network registered as ``name``.

    Args:
        name: ``local``, ``global``, ``composite``, ``unet`` or a name added with
            :func:`register_network`.
        ndim: 2 or 3.
        fixed_shape: the fixed images' spatial shape; passed to the networks that take it
            (``global``, ``composite``: their dense layer depends on it), checked and otherwise
            unused.
        **kwargs: constructor arguments of the class (e.g. ``num_channel_initial``,
            ``ddf_levels``).

    Returns:
        An unbuilt ``keras.Model``.

    Raises:
        ConfigError: for an unknown name or an argument the class does not take.
        ValueError: for a bad ``ndim``, ``fixed_shape`` or argument value.
    """
    cls = get_network(name)
    ndim = check_ndim(ndim)
    if fixed_shape is not None:
        fixed_shape = check_spatial_shape(fixed_shape, ndim, "fixed_shape")
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p not in ("self", "kwargs", "ndim", "fixed_shape")]
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise ConfigError(
            f"network type {name!r} ({cls.__name__}) does not take the argument(s) {unknown}; "
            f"it takes: {', '.join(accepted)}."
        )
    if "fixed_shape" in params:
        kwargs["fixed_shape"] = fixed_shape
    return cls(ndim=ndim, **kwargs)
