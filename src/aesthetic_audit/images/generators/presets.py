"""The study's generators as data, and how a generator name in the config becomes what runs.

A preset (a row of ``data/presets.yaml``, or of the user's ``images.generate.presets``) names a backend, its options, the call parameters both sides
share and the per-side parameters where the study rendered p_o and p_a differently. A name in
``images.generate.generators`` is a preset or a registered backend; ``images.generate.options.NAME``
goes over the preset's options (``params`` and ``sides`` in it go over the call parameters). Sweep axes
(``images.generate.sweep``) turn one name into several generators, one per value, each its own
identity and display name: ``sd35m-flowgrpo-pickscore@lora_scale=0.5``.

Nothing here imports torch: ``aesthetic-audit ls generators`` and config validation read it.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...errors import AuditError, ConfigError
from ...hashing import spec_hash

if TYPE_CHECKING:
    from ...config import GenerateConfig
    from .base import Generator

SIDES = ("o", "a")


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")  # no dots: names are parts of --set keys
    description: str
    backend: str
    options: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    sides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    with_negative: dict[str, Any] = Field(default_factory=dict)

    def side(self, side: str) -> dict[str, Any]:
        """The call parameters of one side (``negative_prompt`` included when the side sets one)."""
        return {**self.params, **self.sides.get(side, {})}

    @property
    def asymmetric(self) -> bool:
        return self.side("o") != self.side("a")


@functools.cache
def presets() -> dict[str, Preset]:
    text = resources.files(__package__).joinpath("data/presets.yaml").read_text(encoding="utf-8")
    out: dict[str, Preset] = {}
    for row in yaml.safe_load(text):
        try:
            preset = Preset.model_validate(row)
        except ValidationError as exc:  # a packaging bug, not a user error: say which row
            raise AuditError(f"presets.yaml: row {row.get('name', '?')!r}: {exc}") from None
        if set(preset.sides) - set(SIDES):
            raise AuditError(f"presets.yaml: {preset.name}: sides are o and a, not {sorted(preset.sides)}")
        out[preset.name] = preset
    return out


def describe_params(params: dict[str, Any]) -> str:
    """Call parameters in a line: ``steps 40, guidance 4, 1024x1024, negative ''``."""
    short = {"num_inference_steps": "steps", "guidance_scale": "guidance", "true_cfg_scale": "true CFG",
             "negative_prompt": "negative"}
    rest = dict(params)
    # A fixed order: records store their parameters with sorted keys, presets in the order written.
    order = sorted(rest, key=lambda k: (list(short).index(k) if k in short else len(short), k))
    parts = [f"{short.get(k, k)} {rest[k]!r}" if isinstance(rest[k], str) else f"{short.get(k, k)} {rest[k]}"
             for k in order if k not in ("width", "height")]
    if "width" in rest and "height" in rest:
        parts.append(f"{rest['width']}x{rest['height']}")
    return ", ".join(parts) or "backend defaults"


@dataclass(frozen=True)
class GeneratorSpec:
    """One generator as it runs: its display name (the image pairs' ``model``), where it came from, the
    backend options, and per side the call parameters and negative prompt."""

    name: str
    base: str                        # the name in the config: a preset or a backend
    preset: str | None
    backend: str
    options: dict[str, Any]
    params: dict[str, dict[str, Any]]           # side -> call parameters (without the negative prompt)
    negative: dict[str, str | None]             # side -> negative prompt
    sweep: dict[str, Any] = field(default_factory=dict)

    def build(self) -> "Generator":
        """The backend object (cheap: nothing loads)."""
        from ...registry import get

        return get("generators", self.backend)(**self.options)

    def manifest(self, generator: "Generator") -> dict[str, Any]:
        out = {"preset": self.preset, "backend": self.backend, "options": self.options,
               "params": self.params, "negative": self.negative, "sweep": self.sweep,
               "identity": generator.identity()}
        if hasattr(generator, "weights_manifest"):
            out["files"] = generator.weights_manifest()
        return out


def known_names(extra: dict[str, Preset] | None = None) -> str:
    from ...registry import available

    return (f"presets: {', '.join({**presets(), **(extra or {})})}; backends: "
            f"{', '.join(available('generators')) or 'none'} (`aesthetic-audit ls generators`)")


def user_presets(rows: list[dict[str, Any]]) -> dict[str, Preset]:
    """``images.generate.presets``: the user's own named generators, in the built-in presets' format."""
    from ...registry import available

    out: dict[str, Preset] = {}
    for i, row in enumerate(rows):
        try:
            preset = Preset.model_validate(row)
        except ValidationError as exc:
            where = row.get("name", f"#{i + 1}") if isinstance(row, dict) else f"#{i + 1}"
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"images.generate.presets {where}: {problems}") from None
        taken = "a built-in preset" if preset.name in presets() else "a backend" \
            if preset.name in available("generators") else "another preset" if preset.name in out else None
        if taken:
            raise ConfigError(f"images.generate.presets: {preset.name!r} is the name of {taken}; choose another")
        if set(preset.sides) - set(SIDES):
            raise ConfigError(f"images.generate.presets {preset.name}: sides are o and a, not {sorted(preset.sides)}")
        out[preset.name] = preset
    return out


def generator_specs(gc: "GenerateConfig") -> list[GeneratorSpec]:
    """The generators ``images.generate`` asks for, sweeps expanded, in config order. ConfigError for an
    unknown name or a sweep or img2img the backend cannot do; options are checked by building each
    backend (constructors load nothing)."""
    from ...registry import available

    backends = available("generators")
    own = user_presets(gc.presets)
    table = {**presets(), **own}
    out: list[GeneratorSpec] = []
    for name in gc.generators:
        preset = table.get(name)
        backend = preset.backend if preset else name
        if backend not in backends:
            if preset is None:
                raise ConfigError(f"unknown generator {name!r}; {known_names(own)}")
            raise ConfigError(f"preset {name!r} runs on backend {backend!r}, which is not registered (is its "
                              f"module importable?); {known_names(own)}")
        cls = backends[backend]
        user = dict(gc.options.get(name, {}))
        params_over, sides_over = user.pop("params", {}) or {}, user.pop("sides", {}) or {}
        if not isinstance(params_over, dict) or not isinstance(sides_over, dict) or set(sides_over) - set(SIDES):
            raise ConfigError(f"images.generate.options.{name}: 'params' must map call parameters to values and "
                              "'sides' must map o and/or a to such mappings")
        options = dict(preset.options if preset else {})
        if gc.batch_size is not None:
            options["batch_size"] = gc.batch_size
        options.update(user)
        params, negative = {}, {}
        for side in SIDES:
            p = {**(preset.side(side) if preset else {}), **params_over, **(sides_over.get(side) or {})}
            negative[side] = p.pop("negative_prompt", None)
            params[side] = p
        spec = GeneratorSpec(name, name, preset.name if preset else None, backend, options, params, negative)
        if gc.img2img.enabled:
            if not cls.supports_img2img:
                raise ConfigError(f"generator {name!r} (backend {backend}) cannot do image-to-image; "
                                  "set images.generate.img2img.enabled=false or choose another generator")
            if "img2img" in inspect.signature(cls).parameters:  # a backend that sets up img2img when asked
                options["img2img"] = True
        out += _sweep(spec, gc, preset, cls)
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"images.generate.generators names a generator twice: {', '.join(names)}")
    return out


def _sweep(spec: GeneratorSpec, gc: "GenerateConfig", preset: Preset | None, cls: Any) -> list[GeneratorSpec]:
    axes: list[list[tuple[str, Any]]] = []
    if gc.sweep.lora_scale:
        if spec.options.get("lora"):
            axes.append([("lora_scale", v) for v in gc.sweep.lora_scale])
        else:
            from ...ui import log

            log.info("generate: %s has no LoRA; the lora_scale sweep leaves it as it is", spec.name)
    if gc.sweep.negative:
        if not cls.supports_negative_prompt:
            raise ConfigError(f"generator {spec.name!r} (backend {spec.backend}) takes no negative prompt; "
                              "remove images.generate.sweep.negative or choose another generator")
        axes.append([("negative", v) for v in gc.sweep.negative])
    if not axes:
        return [spec]
    out = []
    for combo in itertools.product(*axes):
        options, params, negative, labels = dict(spec.options), {s: dict(p) for s, p in spec.params.items()}, \
            dict(spec.negative), []
        for axis, value in combo:
            if axis == "lora_scale":
                options["lora_scale"] = value
                labels.append(f"lora_scale={value:g}")
            else:
                text = gc.negative_prompt if value is True else (value or None)
                labels.append(f"negative={_negative_label(value)}")
                if text is not None:
                    # The mitigation goes on the p_a side only: I_o stays the model's ordinary render.
                    negative["a"] = text
                    params["a"].update(preset.with_negative if preset else {})
        out.append(GeneratorSpec(f"{spec.name}@{','.join(labels)}", spec.base, spec.preset, spec.backend, options,
                                 params, negative, dict(combo)))
    return out


def _negative_label(value: Any) -> str:
    if value is None or value is False:
        return "none"
    if value is True:
        return "default"
    return spec_hash(value)[:8]
