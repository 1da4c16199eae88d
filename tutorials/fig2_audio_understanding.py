# %% [markdown]
# # Fig. 2: does the model hear, or does it read the sound off the picture?
#
# The paper captions factual clips (sight and sound agree) and counterfactual clips (Algorithm 1 swaps in the
# least-similar sound) and scores how often the answer names the sound actually played ("audio fidelity").
# A model that hears keeps its fidelity on counterfactuals; one that answers from the picture loses it.
#
# By default this runs on the shipped model organism (a tiny Qwen2.5-Omni thinker trained with a planted visual
# bias) and a small held-out synthetic set, on CPU in seconds. On a real checkpoint (a GPU is needed then) set
# `HOOKED_AV_MODEL` (checkpoint folder) and `HOOKED_AV_DATA` (a manifest of factual and counterfactual rows, e.g.
# from `hooked-av build-counterfactuals`); `HOOKED_AV_SAMPLES` sets the sample count per setting.

# %%
from _common import SAMPLES, output_folder, print_inputs, print_numbers, run_step, tutorial_inputs

from hooked_av.data.jsonl import iter_rows
from hooked_av.plot.files import FIGURE_FILES, RESULT_FILES, figure2
from hooked_av.study import report
from hooked_av.study.run import StudyConfig

inputs = tutorial_inputs()
out = output_folder("fig2")
print_inputs(inputs, out)

# %% [markdown]
# The study's `caption` step answers each prompt ("Describe what you see and hear.", "Describe what you hear.",
# "Describe what you see.") per sample; `judge` scores each answer, here with the deterministic keyword scorer
# (on the organism's closed vocabulary an answer names the sound or it does not). These are the very commands
# `hooked-av study` runs, printed as command lines.

# %%
run_step(inputs, StudyConfig(steps=("caption",), samples=SAMPLES, max_new_tokens=16), out)

# %% [markdown]
# A few counterfactual answers show the bias directly: asked what it hears, the model names the picture's sound.

# %%
for row in [r for r in iter_rows(out / RESULT_FILES["captions"]) if r["counterfactual"]][:4]:
    print(row["sample_id"], repr(row["prompt"]), "->", repr(row["caption"]))

# %% [markdown]
# ## The figure and its numbers

# %%
png = figure2(out / RESULT_FILES["caption_scores"], out / FIGURE_FILES["fig2"])
print_numbers(report.fig2(out))
print("figure:", png)
