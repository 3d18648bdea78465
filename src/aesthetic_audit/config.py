"""One validated configuration, read from YAML and overridden by command-line flags.

Unknown keys are errors that name the key. ``aesthetic-audit init`` writes a commented example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError
from .hashing import spec_hash


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _KRange(_Section):
    @model_validator(mode="after")
    def _k_range(self):
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) is greater than k_max ({self.k_max})")
        return self


class LLMConfig(_Section):
    base_url: str = Field("http://localhost:8000/v1", description="OpenAI-compatible API base URL")
    model: str = Field("Qwen/Qwen3-VL-235B-A22B-Instruct", description="model name sent to the endpoint")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    temperature: float = Field(0.1, ge=0, le=2)
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout")
    max_retries: int = Field(5, ge=0, description="retries on 429, 5xx, timeouts and connection errors")
    backoff_s: float = Field(1.0, ge=0, description="first backoff; doubles each retry, with jitter")
    max_reasks: int = Field(2, ge=0, description="re-asks when a reply is malformed or over the word limit")
    concurrency: int = Field(4, ge=1, description="requests in flight at once")


class PromptsConfig(_KRange):
    source: str = Field("builtin", description="'builtin' or a path: COCO captions JSON, CSV, TSV, JSONL or text")
    format: Literal["auto", "coco", "csv", "tsv", "jsonl", "txt"] = "auto"
    column: str | None = Field(None, description="caption column for CSV/TSV/JSONL (default: caption or Prompt)")
    filter: dict[str, str] = Field(default_factory=dict, description="keep rows whose column equals the value")
    n: int | None = Field(300, ge=1, description="sample this many captions (seeded; the study used 300); "
                          "null for all")
    dimensions: list[str] | None = Field(None, description="dimension keys to draw from (default: the study's 11)")
    k_min: int = Field(2, ge=1, description="fewest dimensions per prompt")
    k_max: int = Field(4, ge=1, description="most dimensions per prompt")
    rewriter: str = Field("template", description="'template' (offline) or 'llm'")
    max_words: int = Field(70, ge=5, description="the anti-aesthetic prompt must stay under this many words")
    llm: LLMConfig = Field(default_factory=LLMConfig)


class EditorConfig(_KRange):
    photos: str = Field("builtin", description="'builtin' (bundled photographs) or a folder of photos + captions")
    strengths: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        [0.35, 0.7, 1.0], min_length=1, description="edit strengths in [0, 1]")
    pairs_per_photo: int = Field(3, ge=1, description="prompt pairs (dimension draws) per photo")
    dimensions: list[str] | None = Field(None, description="dimensions to edit (default: all the editor supports)")
    k_min: int = Field(1, ge=1, description="fewest dimensions per edit")
    k_max: int = Field(2, ge=1, description="most dimensions per edit")
    max_side: int = Field(384, ge=32, description="photos are downscaled to this longest side first")


class ImagesConfig(_Section):
    backend: Literal["editor", "import"] = "editor"
    editor: EditorConfig = Field(default_factory=EditorConfig)
    import_path: str | None = Field(None, description="pairs to import: folder, CSV/JSONL manifest or dataset")


class ScoreConfig(_Section):
    scorers: list[str] = Field(["composite", "brisque", "nsfw"], description="registered scorer names")
    chunk_size: int = Field(64, ge=1, description="(image, prompt) items handed to a scorer per call; "
                            "records are stored after each call")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-scorer options, e.g. {hpsv2: {device: cuda, dtype: bf16, "
        "batch_size: 32, weights: /models/hps}}")


class JudgeConfig(_Section):
    judges: list[str] = Field(["classical"], description="registered judge names")


class AnalysisConfig(_Section):
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples for confidence intervals")
    ci: float = Field(0.95, gt=0, lt=1)


class AuditConfig(_Section):
    seed: int = Field(0, description="seed for every random choice; recorded with each record")
    dimensions_file: str | None = Field(None, description="YAML file adding or overriding dimensions")
    rubric_file: str | None = Field(None, description="VisionReward guideline CSV to use as the judging rubric")
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)

    def hash(self) -> str:
        return spec_hash(self.model_dump(mode="json"))


def _format_errors(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{loc}'")
        else:
            lines.append(f"{loc}: {err['msg']}")
    return f"{where}: invalid configuration:\n  " + "\n  ".join(lines)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                base: dict[str, Any] | None = None) -> AuditConfig:
    """Build the config: ``base`` (e.g. a run's stored config), then the YAML file, then overrides.

    Overrides use dotted keys: ``{"prompts.n": 50}``.
    """
    data: dict[str, Any] = dict(base or {})
    where = "configuration"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = _deep_merge(data, loaded)
    for dotted, value in (overrides or {}).items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: '{part}' is not a section")
        node[parts[-1]] = value
    try:
        return AuditConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, where)) from None


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set prompts.n=50`` -> ``{"prompts.n": 50}``; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. prompts.n=50")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: cannot parse value: {exc}") from None
    return out


def example_yaml() -> str:
    """A commented example config: every key with its default and description."""
    lines = ["# aesthetic-audit configuration. Every key is optional; shown with its default.",
             "# Unknown keys are errors. Command-line flags and --set KEY=VALUE override this file.", ""]
    _emit(AuditConfig, AuditConfig().model_dump(mode="json"), lines, 0)
    return "\n".join(lines) + "\n"


def _emit(model: type[BaseModel], values: dict[str, Any], lines: list[str], indent: int) -> None:
    pad = "  " * indent
    for name, field in model.model_fields.items():
        value = values[name]
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines.append(f"{pad}{name}:")
            _emit(ann, value, lines, indent + 1)
            continue
        if field.description:
            lines.append(f"{pad}# {field.description}")
        dumped = yaml.safe_dump({name: value}, default_flow_style=True, width=1000).strip()
        lines.append(f"{pad}{dumped[1:-1] if dumped.startswith('{') else dumped}")
