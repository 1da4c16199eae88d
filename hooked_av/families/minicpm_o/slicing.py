"""MiniCPM-V / MiniCPM-o image slicing: the source image resized to about scale^2 pixels, plus, for large
images, a grid of slices of about scale^2 each. Every side is a multiple of the patch size.

Follows the official image processor's arithmetic (Python `round`, `int` truncation, PIL bicubic on the 8-bit
image), since a one-patch difference changes the placeholder count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class SliceSettings:
    scale: int  # scale_resolution: a slice holds about scale^2 pixels
    patch: int
    max_slices: int


def ensure_divide(length: float, patch: int) -> int:
    return max(round(length / patch) * patch, patch)


def best_resize(size: tuple[float, float], s: SliceSettings, allow_upscale: bool) -> tuple[int, int]:
    """(width, height) of about scale^2 pixels with the aspect ratio kept (only shrinks unless allowed)."""
    width, height = size
    if width * height > s.scale * s.scale or allow_upscale:
        ratio = width / height
        height = int(s.scale / math.sqrt(ratio))
        width = int(height * ratio)
    return ensure_divide(width, s.patch), ensure_divide(height, s.patch)


def slice_grid(size: tuple[int, int], s: SliceSettings, max_slices: int) -> tuple[int, int] | None:
    """(cols, rows) of the slice grid, or None when the image is not sliced.

    Among slice counts n-1, n, n+1 (n = pixels / scale^2 rounded up), the factor pair closest in log aspect
    ratio to the image; the first one found wins a tie.
    """
    width, height = size
    n = min(math.ceil(width * height / (s.scale * s.scale)), max_slices)
    if n <= 1:
        return None
    log_ratio = math.log(width / height)
    best, best_error = (1, 1), float("inf")
    for count in (n - 1, n, n + 1):
        if count == 1 or count > max_slices:
            continue
        for cols in range(1, count + 1):
            if count % cols:
                continue
            error = abs(log_ratio - math.log(cols / (count // cols)))
            if error < best_error:
                best, best_error = (cols, count // cols), error
    return best


def refine_size(size: tuple[int, int], grid: tuple[int, int], s: SliceSettings) -> tuple[int, int]:
    """Size the image is resized to before it is cut into the grid: grid x the best size of one cell."""
    cols, rows = grid
    cell = best_resize((ensure_divide(size[0], cols) / cols, ensure_divide(size[1], rows) / rows), s,
                       allow_upscale=True)
    return cell[0] * cols, cell[1] * rows


def slice_image(image: Image.Image, s: SliceSettings, max_slices: int
                ) -> tuple[list[Image.Image], tuple[int, int] | None]:
    """The images the encoder sees (source first, then slices row by row) and the grid (cols, rows)."""
    grid = slice_grid(image.size, s, max_slices)
    if grid is None:  # small images are enlarged to about scale^2
        return [image.resize(best_resize(image.size, s, allow_upscale=True), Image.Resampling.BICUBIC)], None
    source = image.resize(best_resize(image.size, s, allow_upscale=False), Image.Resampling.BICUBIC)
    refined = image.resize(refine_size(image.size, grid, s), Image.Resampling.BICUBIC)
    cell_w, cell_h = refined.width // grid[0], refined.height // grid[1]
    slices = [refined.crop((x, y, x + cell_w, y + cell_h))
              for y in range(0, refined.height, cell_h) for x in range(0, refined.width, cell_w)]
    return [source, *slices], grid
