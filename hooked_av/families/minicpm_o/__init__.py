"""MiniCPM-o 2.6 (OpenBMB): its family adapter and the pieces of its model transformers does not have."""

from hooked_av.families.minicpm_o.adapter import ADAPTER, MiniCPMOAdapter
from hooked_av.families.minicpm_o.modeling import MiniCPMO, MiniCPMOConfig
from hooked_av.families.minicpm_o.processor import MiniCPMOProcessor

__all__ = ["ADAPTER", "MiniCPMO", "MiniCPMOAdapter", "MiniCPMOConfig", "MiniCPMOProcessor"]
