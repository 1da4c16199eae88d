"""Which sequence positions are video, audio, image, prompt text, template text, special tokens or generated.

Computed from token ids alone, so it is right under left padding, in batches and with audio interleaved into
video (`use_audio_in_video=True`): placeholders keep their own ids wherever the processor puts them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from itertools import groupby

import torch
from jaxtyping import Int
from torch import Tensor


class Modality(IntEnum):
    PAD = 0
    TEXT = 1  # prompt text written by the user (or all text, without a chat template)
    TEMPLATE = 2  # text the chat template adds: system prompt, role names, newlines between turns
    SPECIAL = 3  # special tokens: turn markers, modality begin/end markers
    IMAGE = 4
    VIDEO = 5
    AUDIO = 6
    GENERATED = 7

    @classmethod
    def parse(cls, name: str | Modality) -> Modality:
        if isinstance(name, Modality):
            return name
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown modality {name!r}; known: {[m.name.lower() for m in cls]}") from None


@dataclass(frozen=True)
class TokenRoles:
    """What the modality map needs to know about a family's vocabulary."""

    placeholders: dict[Modality, int]  # modality -> placeholder token id
    special_ids: frozenset[int]
    turn_start: int | None = None
    turn_end: int | None = None
    newline_ids: frozenset[int] = frozenset()  # tokens ending a role header ("user\n")
    role_of: dict[tuple[int, ...], str] | None = None  # role-header token ids (without the newline) -> role


@dataclass
class ModalityMap:
    codes: Int[Tensor, "batch pos"]

    def mask(self, *modalities: str | Modality) -> torch.Tensor:
        """Boolean [batch, pos], True where the position belongs to any of `modalities`."""
        wanted = torch.tensor([Modality.parse(m) for m in modalities], device=self.codes.device)
        return torch.isin(self.codes, wanted)

    def positions(self, modality: str | Modality, batch_index: int = 0) -> torch.Tensor:
        return torch.nonzero(self.mask(modality)[batch_index]).flatten()

    def counts(self, batch_index: int = 0) -> dict[str, int]:
        values = torch.bincount(self.codes[batch_index], minlength=len(Modality)).tolist()
        return {m.name.lower(): values[m] for m in Modality if values[m]}

    def runs(self, batch_index: int = 0) -> list[tuple[str, int]]:
        """Consecutive runs, e.g. [("template", 5), ("special", 1), ("video", 280), ("audio", 50), ...]."""
        return [(Modality(k).name.lower(), len(list(g))) for k, g in groupby(self.codes[batch_index].tolist())]

    def extend(self, n_new: int, finished: torch.Tensor | None = None) -> ModalityMap:
        """The map of the prompt followed by `n_new` generated positions (PAD where a row had finished)."""
        new = torch.full((self.codes.shape[0], n_new), int(Modality.GENERATED), dtype=self.codes.dtype,
                         device=self.codes.device)
        if finished is not None:
            new[finished] = int(Modality.PAD)
        return ModalityMap(torch.cat([self.codes, new], dim=1))

    def __repr__(self) -> str:
        rows = ["  " + " ".join(f"{name}×{n}" for name, n in self.runs(b)) for b in range(self.codes.shape[0])]
        return "ModalityMap(\n" + "\n".join(rows) + "\n)"


def _mark_turns(row: list[int], codes: list[int], roles: TokenRoles) -> None:
    """Within chat turns, mark role headers and non-user content as template text."""
    assert roles.turn_start is not None
    i = 0
    n = len(row)
    role = None
    while i < n:
        if row[i] != roles.turn_start:
            if role is not None and role != "user" and codes[i] == Modality.TEXT:
                codes[i] = Modality.TEMPLATE
            elif role is None and codes[i] == Modality.TEXT:
                codes[i] = Modality.TEMPLATE  # text between turns ("\n" after <|im_end|>)
            if row[i] == roles.turn_end:
                role = None
            i += 1
            continue
        j = i + 1
        while j < n and row[j] not in roles.newline_ids and row[j] not in roles.special_ids:
            j += 1
        header = tuple(row[i + 1:j])
        role = (roles.role_of or {}).get(header, "unknown")
        end = min(j + 1, n) if j < n and row[j] in roles.newline_ids else j
        for p in range(i + 1, end):
            codes[p] = Modality.TEMPLATE
        i = end


def build_modality_map(input_ids: Int[Tensor, "batch pos"], attention_mask: Tensor | None,
                       roles: TokenRoles, placeholder_masks: dict[Modality, Tensor] | None = None) -> ModalityMap:
    """`placeholder_masks` ([batch, pos] per modality) replace the placeholder-id lookup, for families whose
    modalities share one placeholder token."""
    ids = input_ids.cpu()
    codes = torch.full_like(ids, int(Modality.TEXT))
    specials = torch.tensor(sorted(roles.special_ids), dtype=ids.dtype)
    codes[torch.isin(ids, specials)] = int(Modality.SPECIAL)
    if placeholder_masks is None:
        placeholder_masks = {modality: ids == token_id for modality, token_id in roles.placeholders.items()}
    for modality, slots in placeholder_masks.items():
        codes[slots.cpu()] = int(modality)
    if roles.turn_start is not None and roles.role_of is not None:
        for b in range(ids.shape[0]):
            row = ids[b].tolist()
            if roles.turn_start not in row:  # no chat template: all text is the user's
                continue
            row_codes = codes[b].tolist()
            _mark_turns(row, row_codes, roles)
            codes[b] = torch.tensor(row_codes, dtype=codes.dtype)
    if attention_mask is not None:
        codes[attention_mask.cpu() == 0] = int(Modality.PAD)
    return ModalityMap(codes.to(input_ids.device))


def roles_from_tokenizer(tokenizer, placeholders: dict[Modality, int], turn_start: str | None,
                         turn_end: str | None, role_names: Iterable[str] = ("system", "user", "assistant")) -> TokenRoles:
    special_ids = frozenset(tokenizer.all_special_ids) | frozenset(
        i for t, i in tokenizer.get_added_vocab().items() if t.startswith("<|") and t.endswith("|>"))
    vocab = tokenizer.get_vocab()
    newline_ids = frozenset(i for t, i in vocab.items()
                            if tokenizer.convert_tokens_to_string([t]).endswith("\n") and i not in special_ids)
    role_of = {tuple(tokenizer.encode(r, add_special_tokens=False)): r for r in role_names}
    start = tokenizer.convert_tokens_to_ids(turn_start) if turn_start else None
    end = tokenizer.convert_tokens_to_ids(turn_end) if turn_end else None
    return TokenRoles(placeholders=placeholders, special_ids=special_ids - set(placeholders.values()),
                      turn_start=start, turn_end=end, newline_ids=newline_ids, role_of=role_of)
