"""The paper's figures as PNG, one module per analysis (matplotlib, Agg backend); each also writes the table it
drew as CSV next to the PNG."""

from hooked_av.plot.attention import plot_attention_by_modality
from hooked_av.plot.expert_routing import plot_expert_routing
from hooked_av.plot.fidelity import fidelity_table, plot_fidelity
from hooked_av.plot.knockout import plot_knockout_curves
from hooked_av.plot.logit_lens import plot_logit_lens
from hooked_av.plot.token_shift import plot_token_shift

__all__ = ["fidelity_table", "plot_attention_by_modality", "plot_expert_routing", "plot_fidelity", "plot_knockout_curves",
           "plot_logit_lens",
           "plot_token_shift"]
