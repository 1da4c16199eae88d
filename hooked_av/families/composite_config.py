"""The model config of a family whose checkpoint config.json is not a transformers config (MiniCPM-o, VideoLLaMA2,
InternVL / InternOmni): the LLM's and the encoders' transformers configs as attributes, with what the hooked core
and transformers' in-tree modules ask of a model config."""

from __future__ import annotations

from transformers import PretrainedConfig


class CompositeConfig:
    text_config: PretrainedConfig  # the LLM's; set by the family's __init__

    def get_text_config(self) -> PretrainedConfig:
        return self.text_config

    def sub_configs(self) -> list[PretrainedConfig]:
        """Every transformers config among the attributes (the LLM's and the encoders')."""
        return [value for value in vars(self).values() if isinstance(value, PretrainedConfig)]

    @property
    def _attn_implementation(self) -> str | None:
        return self.text_config._attn_implementation

    @_attn_implementation.setter
    def _attn_implementation(self, value: str) -> None:
        """One attention implementation for the LLM and every encoder."""
        for sub in self.sub_configs():
            sub._attn_implementation = value
