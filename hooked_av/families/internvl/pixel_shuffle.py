"""InternVL's pixel shuffle: a grid of ViT patch features folded 2x2 into the channels (4x fewer tokens).

Output token (i, j) of the v2 layout (row-major) concatenates the features at (2i, 2j), (2i, 2j+1), (2i+1, 2j),
(2i+1, 2j+1), in that order. "v1" skips the final transpose, so its grid is transposed (the official code warns).
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from hooked_av.model.errors import UnsupportedCheckpointError


def pixel_shuffle(x: Float[Tensor, "tiles rows cols channels"], ratio: float, version: str = "v2"
                  ) -> Float[Tensor, "tiles out_rows out_cols out_channels"]:
    if version not in ("v1", "v2"):
        raise UnsupportedCheckpointError(f"unknown ps_version {version!r}: InternVL writes 'v1' or 'v2'")
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * ratio), int(c / ratio)).permute(0, 2, 1, 3)
    x = x.reshape(n, int(h * ratio), int(w * ratio), int(c / (ratio * ratio)))
    return x.permute(0, 2, 1, 3).contiguous() if version == "v2" else x.contiguous()
