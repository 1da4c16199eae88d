"""Family descriptions: the YAML files in the top-level `model_configs/` folder, parsed safely and validated.

The folder is installed as the `hooked_av.model_configs` package data (a setuptools package-dir mapping), so a
wheel carries it; a source checkout reads it in place.

A file says which HF checkpoints the family matches, which HF classes are reused (model, processor, encoders),
where the decoder's modules sit inside the HF model (so weights are shared, never copied), how the rotary
embedding is laid out, and which tokens are modality placeholders. Everything that cannot be said as data
lives in the family's adapter module, `hooked_av.families.<adapter>`.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hooked_av.model.components import ACTIVATIONS
from hooked_av.model.errors import ModelConfigError, UnsupportedCheckpointError

MODALITY_NAMES = ("audio", "image", "video")
LAYER_MODULE_KEYS = ("ln1", "ln2", "q", "k", "v", "o")
# The MLP of a layer: a dense gated MLP, or a router with its experts (a family may have both kinds of layers).
MLP_MODULE_GROUPS = {"dense": ("gate", "up", "down"), "moe": ("router", "experts")}
OPTIONAL_LAYER_KEYS = ("q_norm", "k_norm") + tuple(k for group in MLP_MODULE_GROUPS.values() for k in group)
DECODER_MODULE_KEYS = ("embed", "layers", "norm", "unembed")
ROPE_KINDS = ("default", "mrope", "mrope_interleaved")


@dataclass(frozen=True)
class RopeSpec:
    kind: str  # "default" (1-D), "mrope" (contiguous t/h/w sections), "mrope_interleaved"
    sections_from: str | None = None  # dotted path in the HF text config, for mrope kinds


@dataclass(frozen=True)
class ExpertStack:
    """Per-expert checkpoint tensors stacked into one [n_experts, ...] HF parameter.

    Each pattern of `parts` matches a checkpoint name (after renames) with group 1 the module prefix and group 2
    the expert index; the parts of one expert are concatenated along their first axis, in the order given (e.g.
    gate then up into `gate_up_proj`); `into` is the parameter name, `\\1` standing for the prefix.
    """

    parts: tuple[str, ...]
    into: str


@dataclass(frozen=True)
class FamilySpec:
    name: str
    adapter: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    model_class: str
    config_class: str
    processor_class: str
    wrappers: dict[str, str]
    full_config_key: str | None
    encoders: dict[str, str]
    strip_prefix: str
    skip_prefixes: tuple[str, ...]
    renames: tuple[tuple[str, str], ...]
    stack_experts: tuple[ExpertStack, ...]
    text_config: str
    decoder_modules: dict[str, str]
    layer_modules: dict[str, str]
    rope: RopeSpec
    act_fn: str
    placeholders: dict[str, str]
    turn_start: str | None
    turn_end: str | None
    stop_tokens: tuple[str, ...]
    source: str = field(default="<memory>", compare=False)

    def checkpoint_key(self, key: str) -> str | None:
        """The HF-model parameter name of a checkpoint tensor name, or None for tensors never loaded."""
        if key.startswith(self.skip_prefixes):
            return None
        key = key.removeprefix(self.strip_prefix)
        for pattern, replacement in self.renames:
            key = re.sub(pattern, replacement, key)
        return key

    def expert_part(self, name: str) -> tuple[str, int, int, int] | None:
        """(HF parameter, expert index, part index, number of parts) of a per-expert tensor, else None."""
        for stack in self.stack_experts:
            for part, pattern in enumerate(stack.parts):
                if m := re.fullmatch(pattern, name):
                    return m.expand(stack.into), int(m.group(2)), part, len(stack.parts)
        return None

    def matches(self, config: dict[str, Any]) -> bool:
        archs = set(config.get("architectures") or ())
        return config.get("model_type") in self.model_types or bool(archs & set(self.architectures))


class _Reader:
    """Pulls typed values out of the parsed YAML, naming the file and key in every error."""

    def __init__(self, data: Any, source: str):
        if not isinstance(data, dict):
            raise ModelConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
        self.source = source
        self.data = data

    def _fail(self, key: str, problem: str):
        raise ModelConfigError(f"{self.source}: '{key}' {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is not ...:
                    return default
                self._fail(key, "is missing")
            node = node[part]
        if not isinstance(node, kind):
            self._fail(key, f"must be {getattr(kind, '__name__', kind)}, got {type(node).__name__}")
        return node

    def str_list(self, key: str, default: Any = ...) -> tuple[str, ...]:
        value = self.get(key, list, default)
        if not all(isinstance(v, str) for v in value):
            self._fail(key, "must be a list of strings")
        return tuple(value)

    def renames(self, key: str) -> tuple[tuple[str, str], ...]:
        value = self.get(key, list, [])
        out = []
        for item in value:
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item)):
                self._fail(key, f"must be a list of [pattern, replacement] pairs, got {item!r}")
            try:
                re.compile(item[0])
            except re.error as err:
                self._fail(key, f"holds an invalid pattern {item[0]!r} ({err})")
            out.append((item[0], item[1]))
        return tuple(out)

    def expert_stacks(self, key: str) -> tuple[ExpertStack, ...]:
        out = []
        for item in self.get(key, list, []):
            if not (isinstance(item, dict) and set(item) == {"parts", "into"} and isinstance(item["into"], str)
                    and isinstance(item["parts"], list) and item["parts"]
                    and all(isinstance(p, str) for p in item["parts"])):
                self._fail(key, f"must be a list of {{parts: [pattern, ...], into: name}}, got {item!r}")
            for pattern in item["parts"]:
                try:
                    groups = re.compile(pattern).groups
                except re.error as err:
                    self._fail(key, f"holds an invalid pattern {pattern!r} ({err})")
                if groups < 2:
                    self._fail(key, f"pattern {pattern!r} needs two groups: the module prefix and the expert index")
            out.append(ExpertStack(tuple(item["parts"]), item["into"]))
        return tuple(out)

    def str_map(self, key: str, required: tuple[str, ...] = (), allowed: tuple[str, ...] | None = None,
                default: Any = ...) -> dict[str, str]:
        value = self.get(key, dict, default)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            self._fail(key, "must map strings to strings")
        if missing := [k for k in required if k not in value]:
            self._fail(key, f"lacks {missing}")
        if allowed is not None and (extra := sorted(set(value) - set(allowed))):
            self._fail(key, f"has unknown keys {extra}; allowed: {list(allowed)}")
        return dict(value)


TOP_LEVEL_KEYS = {"name", "description", "adapter", "match", "hf", "weights", "decoder", "placeholders", "chat",
                  "stop_tokens"}
SECTION_KEYS = {"match": {"model_types", "architectures"},
                "hf": {"model_class", "config_class", "processor_class", "wrappers", "full_config_key", "encoders"},
                "weights": {"strip_prefix", "skip_prefixes", "renames", "stack_experts"},
                "decoder": {"text_config", "modules", "layer", "rope", "act_fn"},
                "decoder.rope": {"kind", "sections_from"}, "chat": {"turn_start", "turn_end"}}


def parse_family_spec(data: Any, source: str = "<memory>") -> FamilySpec:
    r = _Reader(data, source)
    if unknown := sorted(set(data) - TOP_LEVEL_KEYS):
        raise ModelConfigError(f"{source}: unknown top-level keys {unknown}; allowed: {sorted(TOP_LEVEL_KEYS)}")
    for section, allowed in SECTION_KEYS.items():  # a misspelt optional key would silently take its default
        if unknown := sorted(set(r.get(section, dict, {})) - allowed):
            raise ModelConfigError(f"{source}: unknown keys {unknown} in '{section}'; allowed: {sorted(allowed)}")
    rope_kind = r.get("decoder.rope.kind", str)
    if rope_kind not in ROPE_KINDS:
        raise ModelConfigError(f"{source}: 'decoder.rope.kind' is {rope_kind!r}; allowed: {list(ROPE_KINDS)}")
    sections = r.get("decoder.rope.sections_from", str, None)
    if rope_kind != "default" and sections is None:
        raise ModelConfigError(f"{source}: rope kind {rope_kind!r} needs 'decoder.rope.sections_from'")
    adapter = r.get("adapter", str)
    if not all(part.isidentifier() for part in adapter.split(".")):
        raise ModelConfigError(f"{source}: 'adapter' must name a module of hooked_av.families (or a dotted module "
                               f"path), got {adapter!r}")
    spec = FamilySpec(
        name=r.get("name", str), adapter=adapter,
        model_types=r.str_list("match.model_types"), architectures=r.str_list("match.architectures", []),
        model_class=r.get("hf.model_class", str), config_class=r.get("hf.config_class", str),
        processor_class=r.get("hf.processor_class", str), wrappers=r.str_map("hf.wrappers", default={}),
        full_config_key=r.get("hf.full_config_key", str, None),
        encoders=r.str_map("hf.encoders", allowed=MODALITY_NAMES + ("vision",), default={}),
        strip_prefix=r.get("weights.strip_prefix", str, ""), skip_prefixes=r.str_list("weights.skip_prefixes", []),
        renames=r.renames("weights.renames"), stack_experts=r.expert_stacks("weights.stack_experts"),
        text_config=r.get("decoder.text_config", str),
        decoder_modules=r.str_map("decoder.modules", required=DECODER_MODULE_KEYS, allowed=DECODER_MODULE_KEYS),
        layer_modules=r.str_map("decoder.layer", required=LAYER_MODULE_KEYS,
                                allowed=LAYER_MODULE_KEYS + OPTIONAL_LAYER_KEYS),
        rope=RopeSpec(rope_kind, sections), act_fn=r.get("decoder.act_fn", str),
        placeholders=r.str_map("placeholders", allowed=MODALITY_NAMES),
        turn_start=r.get("chat.turn_start", str, None), turn_end=r.get("chat.turn_end", str, None),
        stop_tokens=r.str_list("stop_tokens", []), source=source)
    groups = {kind: [k in spec.layer_modules for k in keys] for kind, keys in MLP_MODULE_GROUPS.items()}
    if not any(all(present) for present in groups.values()) or any(any(p) and not all(p) for p in groups.values()):
        raise ModelConfigError(f"{source}: 'decoder.layer' must name a whole MLP: "
                               + " or ".join(str(list(keys)) for keys in MLP_MODULE_GROUPS.values()))
    if spec.act_fn not in ACTIVATIONS:
        raise ModelConfigError(f"{source}: 'decoder.act_fn' is {spec.act_fn!r}; allowed: {sorted(ACTIVATIONS)}")
    if not spec.model_types:
        raise ModelConfigError(f"{source}: 'match.model_types' must name at least one HF model_type")
    return spec


def load_family_spec(path: str | Path) -> FamilySpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ModelConfigError(f"{path}: not valid YAML ({err})") from err
    return parse_family_spec(data, str(path))


def builtin_config_dir() -> Path:
    """Where the built-in family files are: `model_configs/` beside the package in a source checkout (editable
    installs included), else the copy a wheel installs as `hooked_av/model_configs/`."""
    source_tree = Path(__file__).resolve().parents[2]
    if (source_tree / "pyproject.toml").is_file() and (source_tree / "model_configs").is_dir():
        return source_tree / "model_configs"
    return Path(str(resources.files("hooked_av") / "model_configs"))


@functools.cache
def builtin_family_specs() -> tuple[FamilySpec, ...]:
    return tuple(load_family_spec(f) for f in sorted(builtin_config_dir().glob("*.yaml")))


def family_for_config(config: dict[str, Any], specs: tuple[FamilySpec, ...] | None = None) -> FamilySpec:
    """The family whose `match` section fits an HF config.json (as a dict)."""
    specs = builtin_family_specs() if specs is None else specs
    # A family naming the config's architecture wins over one matching only its model_type (InternOmni and
    # InternVL 2 share model_type "internvl_chat").
    archs = set(config.get("architectures") or ())
    for spec in sorted(specs, key=lambda s: not archs & set(s.architectures)):
        if spec.matches(config):
            return spec
    known = sorted(t for s in specs for t in s.model_types)
    where = "model_configs/" if specs == builtin_family_specs() else ", ".join(s.source for s in specs)
    raise UnsupportedCheckpointError(
        f"no family file in {where} matches model_type={config.get('model_type')!r}, "
        f"architectures={config.get('architectures')}; supported model types: {known}. "
        "To add a family, write model_configs/<family>.yaml and an adapter (see docs/architecture.md).")


def family_for_hf_model(hf_model: Any, specs: tuple[FamilySpec, ...] | None = None) -> FamilySpec:
    specs = builtin_family_specs() if specs is None else specs
    cls = type(hf_model)
    names = {cls.__name__, f"{cls.__module__}.{cls.__qualname__}"}
    for spec in specs:
        if spec.model_class in names or names & set(spec.wrappers):
            return spec
    supported = sorted({s.model_class for s in specs} | {w for s in specs for w in s.wrappers})
    raise UnsupportedCheckpointError(f"{cls.__name__} is not a supported HF model class; supported: {supported}")


def resolve_class(name: str) -> type:
    """A class named in a family file: a bare name is a `transformers` class; a dotted path
    (`package.module.Class`) is imported from that module (a family whose model is not in transformers)."""
    module_name, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(module_name or "transformers")
        return getattr(module, attr)
    except (ImportError, AttributeError) as err:
        where = f"module {module_name}" if module_name else "transformers"
        raise ModelConfigError(f"class {name!r} named in a family file is not in {where} ({err})") from err


def is_transformers_class(name: str) -> bool:
    return "." not in name


def family_spec_from(family: str | Path | FamilySpec) -> FamilySpec:
    """A user's family: a FamilySpec, or the path of a family YAML file (validated as the built-in ones)."""
    if isinstance(family, FamilySpec):
        return family
    path = Path(family)
    if not path.is_file():
        raise ModelConfigError(f"family file {path} does not exist: pass the path of a family YAML "
                               "(see model_configs/*.yaml for examples)")
    return load_family_spec(path)
