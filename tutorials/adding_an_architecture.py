# %% [markdown]
# # Adding an architecture
#
# A family is one YAML file (where things are: classes, module paths of the decoder, placeholders, chat markers,
# stop tokens) and one adapter in `hooked_av/families/` (what data cannot say: how the encoders' features are
# computed and merged). Everything else (hook points, caching, generation, the modality map, every analysis) is
# generic. The full walk-through, with MiniCPM-o 2.6 (a model transformers has no class for), is
# `docs/adding_an_architecture.md`; this notebook runs the two ends of it:
#
# 1. a **user family file**: `HookedAVModel.from_pretrained(folder, family="my_family.yaml")`, here a copy of the
#    shipped Qwen2.5-Omni family under a new name, loading the model organism;
# 2. the **MiniCPM-o 2.6 family** (`model_configs/minicpm_o_2_6.yaml` + `hooked_av/families/minicpm_o/`) loading
#    the tiny official-layout fixture checkpoint in `tests/fixtures/minicpmo_2_6_tiny/checkpoint`, with its hooks.
#
# Both run on CPU in seconds. Set `HOOKED_AV_MODEL` (and `HOOKED_AV_FAMILY`, a YAML) to load your own checkpoint
# with your own family file instead (with a GPU for a real model).

# %%
import os
from pathlib import Path

import numpy as np
import yaml
from _common import output_folder

import hooked_av
from hooked_av import HookedAVModel
from hooked_av.analysis.attention import attention_by_modality
from hooked_av.organism import shipped_organism
from hooked_av.plot import plot_attention_by_modality

CONFIGS = Path(hooked_av.__file__).resolve().parent.parent / "model_configs"
out = output_folder("adding_an_architecture")

# %% [markdown]
# ## 1. A family file of your own
# The YAML names the HF classes, where the decoder's modules are (`decoder.modules`, `decoder.layer`), the rope
# kind, the placeholder tokens of each modality, the chat markers and the stop tokens. Here we copy the shipped
# Qwen2.5-Omni file under another name and load the organism with it.

# %%
spec = yaml.safe_load((CONFIGS / "qwen2_5_omni.yaml").read_text())
print("keys of a family file:", list(spec))
print("decoder modules:", spec["decoder"]["modules"])
spec["name"] = "my_omni"
family_file = out / "my_omni.yaml"
family_file.write_text(yaml.safe_dump(spec))

if "HOOKED_AV_MODEL" in os.environ:
    mine = HookedAVModel.from_pretrained(os.environ["HOOKED_AV_MODEL"],
                                         family=os.environ.get("HOOKED_AV_FAMILY", str(family_file)))
else:
    mine = HookedAVModel.from_pretrained(shipped_organism(), family=str(family_file))
print("loaded with family", mine.cfg.family, "-", mine.cfg.n_layers, "layers")

# %% [markdown]
# Same weights, same decoder: the logits through the user file equal those through the built-in family.

# %%
builtin = HookedAVModel.from_pretrained(shipped_organism()) if "HOOKED_AV_MODEL" not in os.environ else None
tokens = mine.to_tokens("Describe what you hear.")
if builtin is not None:
    diff = (mine(tokens) - builtin(tokens)).abs().max().item()
    print("max |logits(my_omni) - logits(qwen2_5_omni)|:", diff)
    assert diff == 0.0

# %% [markdown]
# ## 2. MiniCPM-o 2.6: a family with its own modules
# The fixture is a tiny random-weight checkpoint in the official folder layout (`llm.*`, `vpm.*`, `resampler.*`,
# `apm.*`, `tts.*`); the family's YAML finds it by `model_type`, builds `MiniCPMO` from dotted class paths and
# points the hooked core at `llm.model.layers`. The hook names are the same as for every family.

# %%
fixture = CONFIGS.parent / "tests" / "fixtures" / "minicpmo_2_6_tiny" / "checkpoint"
print(yaml.safe_load((CONFIGS / "minicpm_o_2_6.yaml").read_text())["hf"])
minicpm = HookedAVModel.from_pretrained(fixture)
print("family:", minicpm.cfg.family, "| layers:", minicpm.cfg.n_layers, "| d_model:", minicpm.cfg.d_model)

rng = np.random.default_rng(0)
image = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)
audio = (0.1 * rng.standard_normal(16000)).astype(np.float32)
batch = minicpm.prepare_inputs("Describe what you see and hear.", image=image, audio=audio)
logits, cache = minicpm.run_with_cache(batch)
print("positions per modality:", cache.modality_map.counts())
print("blocks.0.attn.hook_pattern:", tuple(cache["pattern", 0].shape))

# %% [markdown]
# ## The figure: attention by modality through the new family
# Every analysis works on the new family unchanged; here Fig. 4's attention by modality on the (random-weight)
# fixture, so the numbers only show that the pipeline runs.

# %%
result = attention_by_modality(minicpm, batch, max_new_tokens=4)
png = plot_attention_by_modality(result, out / "minicpm_o_attention.png")
for group, shares in zip(result.groups, np.asarray(result.shares).T):
    print(f"{group}: {[round(float(x), 3) for x in shares]}")
print("figure:", png)
