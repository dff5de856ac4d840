"""Layer outputs as feature maps: which layout a layer's output has and how it becomes ``N×K×h×w``.

Three layouts are read, from the output's shape and the input's ``H×W`` alone:

- ``maps``: ``N×K×h×w`` (convolutional networks), used as is;
- ``channels_last``: ``N×h×w×K`` (Swin stages, ConvNeXt block internals), ``permute(0, 3, 1, 2)``;
- ``tokens``: ``N×(p + h·w)×D`` (ViT, DeiT, register ViTs): the first ``p`` prefix tokens
  (class, distillation, register) are dropped and the rest is the row-major patch grid,
  ``tokens[:, p:].reshape(N, h, w, D).permute(0, 3, 1, 2)``.

Every mapping is linear (a slice and a permutation), so a gradient ``∂f/∂output`` becomes
``∂f/∂A`` by the same mapping. A 4-D output is ``maps`` or ``channels_last``, whichever pair of
sizes has the input's aspect ratio (closest in ``|log(h/w) − log(H/W)|``, within a factor of 2);
when both fit equally (``h = w = K``) it is ``maps`` unless the layer acts on the last dimension
(``nn.Linear``, a last-dimension ``nn.LayerNorm``). A token grid is ``h = ⌊H/s⌋`` or ``⌈H/s⌉``,
``w = ⌊W/s⌋`` or ``⌈W/s⌉`` for the smallest stride ``s`` with ``h·w = N − p`` (``p``: the model's
``num_prefix_tokens`` as timm declares it, or 0; up to :data:`MAX_PREFIX` when undeclared), so
non-square and dynamic input sizes need no configuration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

MAX_PREFIX = 8           # leading tokens tried when a model does not declare num_prefix_tokens
ASPECT_TOLERANCE = math.log(2.0)
KINDS = ("maps", "channels_last", "tokens")


class LayoutError(ValueError):
    """A layer's output cannot be read as feature maps; the message says what was found."""


@dataclass(frozen=True)
class Layout:
    """How one layer's output maps onto ``N×K×h×w``: ``kind`` (one of :data:`KINDS`), the map
    size ``grid = (h, w)`` and, for tokens, the number of leading ``prefix`` tokens dropped."""

    kind: str
    grid: tuple[int, int]
    prefix: int = 0

    def to_map(self, output: torch.Tensor) -> torch.Tensor:
        """The ``N×K×h×w`` view of ``output`` (or of its gradient: the mapping is linear)."""
        if self.kind == "maps":
            return output
        if self.kind == "channels_last":
            return output.permute(0, 3, 1, 2)
        patches = output[:, self.prefix:]
        return patches.reshape(len(output), *self.grid, output.shape[-1]).permute(0, 3, 1, 2)

    def map_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The ``N×K×h×w`` shape that :meth:`to_map` gives an output of ``shape``."""
        channels = shape[1] if self.kind == "maps" else shape[-1]
        return (shape[0], channels, *self.grid)

    def describe(self) -> str:
        """A short human-readable form, e.g. ``tokens: 1 prefix + 14×14``."""
        grid = f"{self.grid[0]}×{self.grid[1]}"
        return f"tokens: {self.prefix} prefix + {grid}" if self.kind == "tokens" else f"{self.kind}: {grid}"


def declared_prefix(model: nn.Module) -> int | None:
    """The number of prefix tokens ``model`` declares (timm's ``num_prefix_tokens``), if any."""
    value = getattr(model, "num_prefix_tokens", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def acts_on_last_dim(layer: nn.Module) -> bool:
    """Whether ``layer`` transforms its input's last dimension (so a 4-D output is channels-last
    when the shape alone cannot tell): a linear layer, or a layer norm that is not a ``…2d`` one."""
    if isinstance(layer, nn.Linear):
        return True
    return isinstance(layer, nn.LayerNorm) and not type(layer).__name__.lower().endswith("2d")


def _aspect_error(grid: tuple[int, int], input_size: tuple[int, int]) -> float:
    """``|log(h/w) − log(H/W)|``: 0 when the grid has the input's aspect ratio."""
    return abs(math.log(grid[0] / grid[1]) - math.log(input_size[0] / input_size[1]))


def token_grid(count: int, input_size: tuple[int, int]) -> tuple[int, int] | None:
    """The patch grid ``(h, w)`` with ``h·w = count`` for the smallest stride ``s`` where
    ``h ∈ {⌊H/s⌋, ⌈H/s⌉}`` and ``w ∈ {⌊W/s⌋, ⌈W/s⌉}``; ``None`` if no stride gives one."""
    height, width = input_size
    for stride in range(1, max(height, width) + 1):
        for h in sorted({height // stride, -(-height // stride)}):
            for w in sorted({width // stride, -(-width // stride)}):
                if h * w == count and min(h, w) > 1:
                    return h, w
        if -(-height // stride) * -(-width // stride) < count:
            return None
    return None


def _spatial_4d(shape: tuple[int, ...], input_size: tuple[int, int], last_dim: bool, where: str) -> Layout:
    """``maps`` or ``channels_last`` for a 4-D output (see the module docstring)."""
    readings = {"maps": (shape[2], shape[3]), "channels_last": (shape[1], shape[2])}
    errors = {kind: _aspect_error(grid, input_size) for kind, grid in readings.items() if min(grid) > 0}
    fitting = sorted((error, kind) for kind, error in errors.items() if error <= ASPECT_TOLERANCE)
    if not fitting:
        raise LayoutError(f"{where} outputs {_shape(shape)}: neither {shape[2]}×{shape[3]} (as N×K×h×w) nor "
                          f"{shape[1]}×{shape[2]} (as N×h×w×K) is a grid with the {_size(input_size)} "
                          "input's aspect ratio")
    kind = fitting[0][1]
    if len(fitting) == 2 and math.isclose(fitting[0][0], fitting[1][0], abs_tol=1e-9):
        kind = "channels_last" if last_dim else "maps"
    grid = readings[kind]
    if min(grid) < 2:
        raise LayoutError(f"{where} outputs {_shape(shape)}: its {grid[0]}×{grid[1]} maps hold no spatial evidence")
    return Layout(kind, grid)


def _tokens(shape: tuple[int, ...], input_size: tuple[int, int], prefix: int | None, where: str) -> Layout:
    """``tokens`` for a 3-D output: a declared prefix (or none), else up to :data:`MAX_PREFIX`."""
    tried = [prefix, 0] if prefix is not None else list(range(MAX_PREFIX + 1))
    for leading in dict.fromkeys(tried):
        grid = token_grid(shape[1] - leading, input_size) if shape[1] - leading > 0 else None
        if grid is not None:
            return Layout("tokens", grid, leading)
    dropped = f"{prefix} prefix token{'s' if prefix != 1 else ''}" if prefix is not None else \
        f"up to {MAX_PREFIX} leading tokens"
    raise LayoutError(f"{where} outputs tokens {_shape(shape)}: {shape[1]} tokens (less {dropped}) form no "
                      f"patch grid of the {_size(input_size)} input")


def infer_layout(shape: tuple[int, ...], input_size: tuple[int, int], prefix: int | None = None,
                 last_dim: bool = False, where: str = "the layer") -> Layout:
    """The :class:`Layout` of an output of ``shape`` for a model input of ``input_size = (H, W)``.

    ``prefix`` is the model's declared number of prefix tokens (``None``: undeclared);
    ``last_dim`` whether the layer acts on the last dimension (breaks 4-D ties); ``where``
    names the layer in the :class:`LayoutError` sentence.
    """
    if len(shape) == 4:
        return _spatial_4d(shape, input_size, last_dim, where)
    if len(shape) == 3:
        return _tokens(shape, input_size, prefix, where)
    raise LayoutError(f"{where} outputs {_shape(shape)}, not a 4-D feature map (N×K×h×w or N×h×w×K) "
                      "nor N×tokens×D tokens")


def layout_of(model: nn.Module, layer: nn.Module, output: object, input_size: tuple[int, int],
              where: str = "the layer") -> Layout:
    """:func:`infer_layout` for ``layer``'s actual ``output`` inside ``model``."""
    if not isinstance(output, torch.Tensor):
        raise LayoutError(f"{where} outputs a {type(output).__name__}, not a tensor of feature maps")
    return infer_layout(tuple(output.shape), input_size, declared_prefix(model), acts_on_last_dim(layer), where)


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(size) for size in shape)


def _size(input_size: tuple[int, int]) -> str:
    return f"{input_size[0]}×{input_size[1]}"
