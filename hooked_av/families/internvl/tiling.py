"""InternVL's dynamic tiling: an image becomes a grid of square tiles (plus a thumbnail), each one ViT input.

The grid (cols, rows), 1 <= cols * rows <= max_tiles, is the one whose aspect ratio is closest to the image's;
among grids with the same ratio a later (larger) one wins when the image covers more than half its pixel area.
The image is resized to the grid (PIL bicubic) and cut row-major; with more than one tile the whole image resized
to one tile is appended as a thumbnail.
"""

from __future__ import annotations

from PIL import Image


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """(cols, rows) grids by tile count, as the official `dynamic_preprocess` orders them."""
    grids = {(i, j) for n in range(min_tiles, max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1)
             if min_tiles <= i * j <= max_tiles}
    return sorted(grids, key=lambda g: g[0] * g[1])


def closest_grid(width: int, height: int, grids: list[tuple[int, int]], tile: int) -> tuple[int, int]:
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def tile_image(image: Image.Image, tile: int, min_tiles: int = 1, max_tiles: int = 12,
               use_thumbnail: bool = True) -> list[Image.Image]:
    cols, rows = closest_grid(*image.size, candidate_grids(min_tiles, max_tiles), tile)
    resized = image.resize((tile * cols, tile * rows), Image.Resampling.BICUBIC)
    tiles = [resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
             for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile, tile), Image.Resampling.BICUBIC))
    return tiles
