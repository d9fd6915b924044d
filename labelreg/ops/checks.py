"""Input validation shared by the operations, losses and networks.

The checks run on static shapes, so they cost nothing inside a ``tf.function``; the NaN check
reads values and therefore only runs on eager tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labelreg._tf import tf
from labelreg.errors import shape_text

__all__ = ["check_image", "check_ddf", "check_finite", "check_integer", "check_number",
           "spatial_rank"]


def check_number(
    value: Any,
    name: str,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
) -> float:
    """A finite real scalar argument (not a bool) within the given bounds, as ``float``.

    Raises:
        ValueError: naming ``name``, the bound and the value received, e.g. ``tau must be a
            finite number >= 0.0; received tau=-1`` or ``p must be in (0, 1.0]; received
            p=2``. The bounds are printed as given.
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and bool(np.isfinite(value))
    if ok and minimum is not None:
        ok = value > minimum if exclusive_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if exclusive_maximum else value <= maximum
    if not ok:
        if minimum is not None and maximum is not None:
            bound = (f"in {'(' if exclusive_minimum else '['}{minimum}, "
                     f"{maximum}{')' if exclusive_maximum else ']'}")
        elif minimum is not None:
            bound = f"a finite number {'>' if exclusive_minimum else '>='} {minimum}"
        elif maximum is not None:
            bound = f"a finite number {'<' if exclusive_maximum else '<='} {maximum}"
        else:
            bound = "a finite number"
        raise ValueError(f"{name} must be {bound}; received {name}={value!r}.")
    return float(value)


def check_integer(value: Any, name: str, minimum: int = 0, *, odd: bool = False,
                  description: str | None = None) -> int:
    """A Python or NumPy integer argument (not a bool) ``>= minimum``, odd if ``odd``, as
    ``int``.

    Raises:
        ValueError: naming ``name`` and the value received, e.g. ``bins must be an integer >=
            2; received bins=1``; ``description`` replaces "an integer >= 2" (e.g. "a positive
            integer").
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    ok = ok and value >= minimum and not (odd and value % 2 == 0)
    if not ok:
        kind = description or f"{'an odd integer' if odd else 'an integer'} >= {minimum}"
        raise ValueError(f"{name} must be {kind}; received {name}={value!r}.")
    return int(value)



def _real_tensor(x: Any, name: str) -> tf.Tensor:
    """``x`` as a tensor of its own dtype, refused unless it holds real numbers (float, integer
    or bool): a cast would silently drop an imaginary part, and text cannot be cast."""
    try:
        t = tf.convert_to_tensor(x)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{name} must be a numeric array or tensor [batch, *spatial, channels]; received a "
            f"{type(x).__name__} that cannot be converted to a tensor ({err})."
        ) from None
    if t.dtype.is_complex:
        raise ValueError(
            f"{name} must hold real numbers; received dtype {t.dtype.name} (pass tf.math.real "
            "or tf.abs of it explicitly)."
        )
    if not (t.dtype.is_floating or t.dtype.is_integer or t.dtype.is_bool):
        raise ValueError(
            f"{name} must be numeric (float, integer or bool); received dtype {t.dtype.name}."
        )
    return t


def spatial_rank(x: tf.Tensor) -> int:
    """Number of spatial axes of a channels-last batch ``[B, *S, C]``."""
    return x.shape.rank - 2


def check_image(
    x: Any, name: str, ndim: int | None = None, channels: int | None = None
) -> tf.Tensor:
    """Convert ``x`` to a float32 tensor ``[B, *S, C]`` and check its rank and channels.

    Args:
        x: NumPy array or tensor, channels-last with a batch axis.
        name: the argument's name, used in the error message.
        ndim: required number of spatial axes (2 or 3); ``None`` accepts either.
        channels: required channel count; ``None`` accepts any.

    Returns:
        ``x`` as a float32 ``tf.Tensor``.

    Raises:
        ValueError: when ``x`` is not a real numeric array (complex, text, ragged), or the rank
            or the channel count is not the expected one.
    """
    t = _real_tensor(x, name)
    if t.dtype != tf.float32:
        t = tf.cast(t, tf.float32)
    rank = t.shape.rank
    if rank is None:
        return t
    allowed = (ndim + 2,) if ndim is not None else (4, 5)
    if rank not in allowed:
        expected = (
            f"[batch, {', '.join(f'S{i}' for i in range(ndim))}, channels] (rank {ndim + 2})"
            if ndim is not None
            else "[batch, *spatial, channels] with 2 or 3 spatial axes (rank 4 or 5)"
        )
        raise ValueError(
            f"{name} must have shape {expected}; received shape {shape_text(t.shape)} "
            f"(rank {rank})."
        )
    if channels is not None and t.shape[-1] is not None and t.shape[-1] != channels:
        raise ValueError(
            f"{name} must have {channels} channel(s) on its last axis; received shape "
            f"{shape_text(t.shape)}."
        )
    return t


def check_ddf(ddf: Any, name: str = "ddf", ndim: int | None = None) -> tf.Tensor:
    """Convert a dense displacement field ``[B, *S, n]`` and check that ``n == len(S)``.

    Raises:
        ValueError: when ``ddf`` is not a real numeric array (a bool field is refused too), the
            rank is not 4 or 5, or the number of displacement components (the last axis)
            differs from the number of spatial axes.
    """
    t = _real_tensor(ddf, name)
    if t.dtype.is_bool:
        raise ValueError(
            f"{name} must hold displacements in voxels (float); received dtype bool."
        )
    t = check_image(t, name, ndim=ndim)
    n = spatial_rank(t)
    if t.shape[-1] is not None and t.shape[-1] != n:
        raise ValueError(
            f"{name} has {t.shape[-1]} displacement components on its last axis but {n} spatial "
            f"axes; a DDF must have shape [batch, *spatial, {n}]. Received shape "
            f"{shape_text(t.shape)}."
        )
    return t


def check_finite(x: Any, name: str) -> None:
    """Raise ``ValueError`` if an eager value holds NaN or Inf; do nothing in graph mode.

    Reading values would force a sync inside a compiled graph, so this check is meant for the
    entry points that users call eagerly.
    """
    if isinstance(x, np.ndarray):
        values = x
    elif tf.is_tensor(x) and tf.executing_eagerly() and hasattr(x, "numpy"):
        if not (x.dtype.is_floating or x.dtype.is_complex):
            return  # integers and booleans are always finite
        magnitude = tf.math.abs(x) if x.dtype.is_complex else x
        if bool(tf.reduce_all(tf.math.is_finite(magnitude))):
            return  # the common case, without copying the values to the host
        values = x.numpy()
    else:
        return
    if values.dtype.kind in "fc":
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(
                f"{name} contains {int(bad.sum())} NaN or Inf value(s) out of {values.size} "
                f"(shape {shape_text(values.shape)}); registration inputs must be finite."
            )
