"""VideoLLaMA2.1-AV (DAMO-NLP-SG): its family adapter and the pieces of its model transformers does not have."""

from hooked_av.families.videollama2.adapter import ADAPTER, VideoLLaMA2Adapter
from hooked_av.families.videollama2.modeling import VideoLLaMA2AV, VideoLLaMA2Config
from hooked_av.families.videollama2.processor import VideoLLaMA2Processor

__all__ = ["ADAPTER", "VideoLLaMA2AV", "VideoLLaMA2Adapter", "VideoLLaMA2Config", "VideoLLaMA2Processor"]
