"""InternVL 2 and InternOmni (OpenGVLab): their family adapter and the pieces of the models transformers lacks."""

from hooked_av.families.internvl.adapter import ADAPTER, InternVLAdapter
from hooked_av.families.internvl.modeling import (InternOmniConfig, InternOmniModel, InternVLChatConfig,
                                                 InternVLChatModel)
from hooked_av.families.internvl.processor import InternVLProcessor

__all__ = ["ADAPTER", "InternOmniConfig", "InternOmniModel", "InternVLAdapter", "InternVLChatConfig",
           "InternVLChatModel", "InternVLProcessor"]
