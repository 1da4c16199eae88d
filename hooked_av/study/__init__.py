"""The paper's whole study, resumable: `run_study(StudyInputs(model, data, base_model), StudyConfig(...), out)`
or `hooked-av study` (see docs/study.md)."""

from hooked_av.study.run import STEPS, StudyConfig, StudyInputs, run_study, study_commands

__all__ = ["STEPS", "StudyConfig", "StudyInputs", "run_study", "study_commands"]
