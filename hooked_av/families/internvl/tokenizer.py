"""InternLM2's tokenizer without the checkpoint's remote code: sentencepiece over the text between special tokens.

The official `InternLM2Tokenizer` is a slow transformers tokenizer around the folder's `tokenizer.model`: the added
and special tokens (`<|im_start|>`, `<img>`, `<AUDIO_CONTEXT>`, ...) are split out by transformers before
sentencepiece sees the text, the pieces in between are encoded as they are (no dummy prefix), and `<s>` is put in
front of every encoded string.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import sentencepiece as spm
from transformers import PreTrainedTokenizer


class InternLM2Tokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, unk_token: str = "<unk>", bos_token: str = "<s>", eos_token: str = "</s>",
                 pad_token: str = "</s>", add_bos_token: bool = True, add_eos_token: bool = False, **kwargs: Any):
        self.vocab_file = vocab_file
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        self.sp_model = spm.SentencePieceProcessor()
        self.sp_model.Load(vocab_file)
        kwargs.pop("auto_map", None)  # names the remote class; never used
        super().__init__(unk_token=unk_token, bos_token=bos_token, eos_token=eos_token, pad_token=pad_token,
                         **{"clean_up_tokenization_spaces": False, **kwargs})

    @property
    def vocab_size(self) -> int:
        return self.sp_model.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp_model.IdToPiece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        return self.sp_model.IdToPiece(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Sentencepiece decodes runs of ordinary pieces; special tokens are kept as they are written."""
        out, run = [], []
        for token in tokens:
            if token in self.all_special_tokens:
                out += [self.sp_model.decode(run), token]
                run = []
            else:
                run.append(token)
        return "".join(out + [self.sp_model.decode(run)])

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None
                                         ) -> list[int]:
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        return bos + token_ids_0 + (token_ids_1 or []) + eos

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        bos, eos = [1] * self.add_bos_token, [1] * self.add_eos_token
        return bos + [0] * len(token_ids_0) + [0] * len(token_ids_1 or []) + eos

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        target = Path(save_directory) / f"{filename_prefix + '-' if filename_prefix else ''}tokenizer.model"
        if Path(self.vocab_file).resolve() != target.resolve():
            shutil.copyfile(self.vocab_file, target)
        return (str(target),)
