"""The organism's word-level vocabulary, tokenizers and processors, built offline as ordinary HF objects.

Word ids are shared by the audio-visual organism (Qwen2.5-Omni specials) and its vision-only twin (Qwen2.5-VL
specials): the three chat specials and every word have the same id in both, the family's own specials come
after the words. So a response token names the same token in both vocabularies, which the token-shift analysis
checks (`check_tokenizers_agree`).
"""

from __future__ import annotations

from hooked_av.organism.world import OBJECTS, SOUNDS
from hooked_av.testing.tiny import OMNI_CHAT_TEMPLATE, OMNI_NAMED_TOKENS, VL_CHAT_TEMPLATE, VL_NAMED_TOKENS

CHAT_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
OMNI_EXTRA = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|vision_bos|>", "<|vision_eos|>", "<|vision_pad|>",
              "<|IMAGE|>", "<|VIDEO|>")
VL_EXTRA = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
# Every word of the chat template's default system prompt, the paper's three prompts and the captions.
TEMPLATE_WORDS = ("\n", "system", "user", "assistant", "you", "are", "a", "helpful", ".", "describe", "what",
                  "see", "and", "hear", "i")
WORDS = TEMPLATE_WORDS + OBJECTS + SOUNDS
# Words and punctuation (lower-cased first); spaces separate tokens and are dropped, "\n" is a token.
PIECE_PATTERN = r"[a-z]+|\n|[^\sa-z]"


def vocabulary(family_specials: tuple[str, ...]) -> dict[str, int]:
    return {token: i for i, token in enumerate(CHAT_SPECIALS + WORDS + family_specials)}


def word_tokenizer(family_specials: tuple[str, ...], named: dict[str, str]):
    """A fast HF tokenizer over the closed vocabulary; unknown words map to <|endoftext|>."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = CHAT_SPECIALS + family_specials
    core = Tokenizer(models.WordLevel(vocabulary(family_specials), unk_token="<|endoftext|>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" +"), behavior="removed"),
        pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")])
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with single spaces
    # Registered, specials never split and are not lower-cased ("<|im_start|>" stays one token).
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", extra_special_tokens=named)


def video_processor():
    """HF's Qwen2-VL video processor without resizing: the world's 112 px frames give 8 x 8 patches each, so a
    2 s clip at 2 fps is 32 video tokens (the processor's default minimum size would upscale them nine-fold)."""
    from transformers import Qwen2VLVideoProcessor

    return Qwen2VLVideoProcessor(do_resize=False)


def omni_processor():
    from transformers import Qwen2_5OmniProcessor, Qwen2VLImageProcessor, WhisperFeatureExtractor

    tokenizer = word_tokenizer(OMNI_EXTRA, OMNI_NAMED_TOKENS)
    return Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(do_resize=False), video_processor=video_processor(),
        feature_extractor=WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, return_attention_mask=True),
        tokenizer=tokenizer, chat_template=OMNI_CHAT_TEMPLATE)


def vl_processor():
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor

    tokenizer = word_tokenizer(VL_EXTRA, VL_NAMED_TOKENS)
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(do_resize=False),
                               video_processor=video_processor(), tokenizer=tokenizer,
                               chat_template=VL_CHAT_TEMPLATE)
