"""One validated configuration, read from YAML and overridden by command-line flags.

Unknown keys are errors that name the key. ``aesthetic-audit init`` writes a commented example.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import AuditError, ConfigError
from .hashing import spec_hash

_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # the ALIAS of a NAME:ALIAS scorer instance


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
    timeout_s: float = Field(60.0, gt=0, description="per-request deadline: connecting, sending and the whole "
                             "reply")
    max_retries: int = Field(5, ge=0, description="retries on 429, 5xx, timeouts and connection errors")
    backoff_s: float = Field(1.0, ge=0, description="first backoff; doubles each retry, with jitter")
    max_reasks: int = Field(2, ge=0, description="re-asks when a reply is malformed or over the word limit")
    concurrency: int = Field(4, ge=1, description="requests in flight at once")
    max_reply_bytes: int = Field(8 * 2**20, ge=1, description="a bigger reply fails the item")
    max_connection_failures: int = Field(3, ge=1, description="stop the stage when this many items in a row "
                                         "cannot connect (endpoint down or base_url wrong)")


class PromptsConfig(_KRange):
    source: str = Field("builtin", description="'builtin' or a path (stored absolute): COCO captions "
                        "JSON, CSV, TSV, JSONL or text")
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

    @field_validator("source")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return absolute_path(value)


class EditorConfig(_KRange):
    photos: str = Field("builtin", description="'builtin' (bundled photographs) or a folder of photos "
                        "+ captions (stored absolute)")
    strengths: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        [0.35, 0.7, 1.0], min_length=1, description="edit strengths in [0, 1]")
    pairs_per_photo: int = Field(3, ge=1, description="prompt pairs (dimension draws) per photo")
    dimensions: list[str] | None = Field(None, description="dimensions to edit (default: all the editor supports)")
    k_min: int = Field(1, ge=1, description="fewest dimensions per edit")
    k_max: int = Field(2, ge=1, description="most dimensions per edit")
    max_side: int = Field(384, ge=32, description="photos are downscaled to this longest side first")

    @field_validator("photos")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return absolute_path(value)


def absolute_path(value: str) -> str:
    """A source path as stored in the config: absolute (``~`` expanded), so a run resumed from another
    folder reads the same file. 'builtin' names the bundled data, not a path, and stays as it is."""
    if value in ("builtin", ""):
        return value
    return os.path.abspath(os.path.expanduser(value))


# The mitigation of the negative sweep axis: what "conventionally beautiful" looks like, said as a
# negative prompt, so a generator can be pushed away from it while it renders p_a.
CONVENTIONAL_BEAUTY = ("beautiful, aesthetically pleasing, masterpiece, best quality, professional photography, "
                       "perfect lighting, sharp focus, vivid harmonious colors, clean balanced composition, "
                       "highly detailed, polished, award-winning")


class SweepConfig(_Section):
    lora_scale: list[Annotated[float, Field(ge=0)]] | None = Field(
        None, description="the alignment-strength dial: one generator per LoRA scale, e.g. [0, 0.25, 0.5, 0.75, 1] "
        "(generators without a LoRA run once)")
    negative: list[str | bool | None] | None = Field(
        None, description="one generator per value: null (no mitigation), true (negative_prompt) or a text, "
        "applied as the p_a side's negative prompt, e.g. [null, true]")


class Img2ImgConfig(_Section):
    enabled: bool = Field(False, description="I_a = img2img(I_o, p_a, strength) instead of text-to-image from p_a")
    strength: float = Field(0.5, ge=0, le=1, description="how far I_a may move from I_o (the study: 0.5)")
    of: Literal["generated", "pairs"] = Field(
        "generated", description="'generated': the generator's own I_o from p_o; 'pairs': the I_o of the run's "
        "edited or imported image pairs")


class GenerateConfig(_Section):
    generators: list[str] = Field(default_factory=list, description="presets or backend names "
                                  "(`aesthetic-audit ls generators`), e.g. [flux-dev, sd35m]")
    presets: list[dict[str, Any]] = Field(
        default_factory=list, description="your own named generators, in the built-in presets' format: "
        "[{name, description, backend, options, params, sides, with_negative}]")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-generator options over the preset's, e.g. {flux-dev: {model: "
        "/models/FLUX.1-dev, device: cuda, batch_size: 4, params: {width: 512, height: 512}}}")
    paired_seeds: bool = Field(True, description="I_o and I_a of a pair share their seed (a paired comparison); "
                               "false: each side gets its own")
    batch_size: int | None = Field(None, ge=1, description="requests per pipeline call for every generator "
                                   "(options.NAME.batch_size wins); halved on out-of-memory")
    origins: list[Literal["captions", "editor", "import"]] = Field(
        ["captions", "import"], min_length=1, description="which prompt pairs to render, by origin")
    negative_prompt: str = Field(CONVENTIONAL_BEAUTY, description="the 'conventional beauty' negative prompt "
                                 "that sweep.negative: [true] applies")
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    img2img: Img2ImgConfig = Field(default_factory=Img2ImgConfig)

    @model_validator(mode="after")
    def _known_generators(self):
        from .errors import AuditError
        from .images.generators.presets import generator_specs, known_names, presets, user_presets
        from .registry import available

        try:
            own = user_presets(self.presets)
        except AuditError as exc:
            raise ValueError(str(exc)) from None
        known = {**presets(), **own, **available("generators")}
        unknown = [n for n in self.options if n not in known]
        if unknown:
            raise ValueError(f"images.generate.options: unknown generator {', '.join(map(repr, unknown))}; "
                             f"{known_names(own)}")
        for name, opts in self.options.items():
            if not isinstance(opts, dict):
                raise ValueError(f"images.generate.options.{name} must be a mapping of option names to values, "
                                 f"e.g. {{device: cuda}}; got {opts!r}")
        try:
            specs = generator_specs(self)
        except AuditError as exc:
            raise ValueError(str(exc)) from None
        for spec in specs:
            _build(spec)
        return self


class ImagesConfig(_Section):
    backend: Literal["editor", "import", "generate"] = Field(
        "editor", description="what `run` makes image pairs with: editor (photos), import (import_path) or "
        "generate (images.generate; needs the run's prompt pairs)")
    editor: EditorConfig = Field(default_factory=EditorConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    import_path: str | None = Field(None, description="pairs to import: folder, CSV/JSONL manifest or dataset")
    import_model: str | None = Field(None, description="import: the generator name of pairs whose rows have "
                                     "no model column")
    allow_outside: bool = Field(False, description="import: read image paths that lead outside the "
                                "manifest's folder (absolute paths, ../)")
    png_level: int | None = Field(
        None, ge=0, le=9, description="zlib level (0-9) of the PNGs a run stores; images are keyed by their "
        "bytes, so a run keeps one level. null: automatic, recorded in the manifest: a new run gets 1 (fast, "
        "~10% larger files), a run made before the setting keeps 6")

    @field_validator("import_path")
    @classmethod
    def _absolute_import_path(cls, value: str | None) -> str | None:
        return None if value is None else absolute_path(value)


class ScoreConfig(_Section):
    scorers: list[str] = Field(["composite", "brisque", "nsfw", "intent-aware"],
                               description="registered scorer names; NAME:ALIAS "
                               "runs another instance with its own options (vlm-pair:gpt, clip:bigG)")
    chunk_size: int = Field(64, ge=1, description="(image, prompt) items handed to a scorer per call; "
                            "records are stored after each call")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-scorer options, e.g. {hpsv2: {device: cuda, dtype: bf16, "
        "batch_size: 32, weights: /models/hps}}")

    @model_validator(mode="after")
    def _known_scorers(self):
        for name in [*self.scorers, *self.options]:
            if ":" in name and not _ALIAS.fullmatch(name.split(":", 1)[1]):
                raise ValueError(f"scorer {name!r}: an alias after ':' is letters, digits, '_', '-' or '.', "
                                 "starting with a letter or digit (vlm-pair:gpt)")
        _check_backends("scorers", [n.split(":", 1)[0] for n in self.scorers], "score.scorers")
        _check_backends("scorers", [n.split(":", 1)[0] for n in self.options], "score.options")
        for name, opts in self.options.items():
            if not isinstance(opts, dict):
                raise ValueError(f"score.options.{name} must be a mapping of option names to values, "
                                 f"e.g. {{device: cuda}}; got {opts!r}")
            _check_options(name, opts)
        return self


class JudgeConfig(_Section):
    judges: list[str] = Field(["classical"], description="registered judge names; NAME:ALIAS runs another "
                              "instance with its own options (vlm:gpt)")
    batch_size: int = Field(8, ge=1, description="images handed to a judge per call; records are stored after "
                            "each call")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-judge options, e.g. {vlm: {model: /models/judge, device: cuda, "
        "dtype: bf16}} or {vlm: {url: http://localhost:8000/v1, model: served-name}}")

    @model_validator(mode="after")
    def _known_judges(self):
        _check_instances("judges", self.judges, self.options, "judge")
        return self


class LabelsConfig(_Section):
    labellers: list[str] = Field(default_factory=list, description="pairwise labellers (vlm, or vlm:ALIAS for "
                                 "another instance); none by default: a labeller needs a model or an endpoint")
    batch_size: int = Field(8, ge=1, description="pairs handed to a labeller per call")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-labeller options, e.g. {vlm: {url: http://localhost:8000/v1, "
        "model: served-name, both_orders: true}}")

    @model_validator(mode="after")
    def _known_labellers(self):
        _check_instances("labellers", self.labellers, self.options, "labels")
        return self


def _check_instances(kind: str, names: list[str], options: dict[str, Any], where: str) -> None:
    """NAME or NAME:ALIAS, NAME registered; options keyed the same way and mappings; the backends in use
    built with their options (names and values). Files they name are read when the stage builds them
    (a model folder may exist only on the machine that runs it)."""
    _check_backends(kind, [n.split(":", 1)[0] for n in names], f"{where}.{kind}")
    _check_backends(kind, [n.split(":", 1)[0] for n in options], f"{where}.options")
    for name, opts in options.items():
        if not isinstance(opts, dict):
            raise ValueError(f"{where}.options.{name} must be a mapping of option names to values, "
                             f"e.g. {{device: cuda}}; got {opts!r}")
    build = _builder(kind)
    for name in dict.fromkeys(names):
        try:
            build(name, options.get(name))  # cheap: nothing is loaded or contacted
        except ConfigError as exc:
            raise ValueError(f"{where}.options.{name}: {exc}") from None
        except AuditError:
            pass  # a file that exists only where the stage runs (a template): checked when the stage builds it


def _builder(kind: str):
    if kind == "judges":
        from .judges.stage import make_judge

        return make_judge
    from .labels.stage import make_labeller

    return make_labeller


def _check_backends(kind: str, names: list[str], where: str) -> None:
    """Names must be registered: a typo is refused before anything runs or is stored."""
    from .registry import available

    known = available(kind)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {kind[:-1]} {', '.join(map(repr, unknown))}; available: {', '.join(known)}")


def _check_options(name: str, options: dict[str, Any]) -> None:
    """Options must be ones the scorer's constructor takes. Constructors are cheap (nothing loads), so
    building the scorer is the exact check, including each scorer's own validation of values."""
    from .errors import AuditError
    from .registry import available

    known = available("scorers")
    dotted = [f"{name}.{k}" for k in options if f"{name}.{k}" in known]
    if dotted:
        raise ValueError(f"options for scorer {name!r} name {dotted[0]!r}, a scorer whose name holds a dot; "
                         f"quote it: --set 'score.options.\"{dotted[0]}\".device=cuda'")
    try:
        known[name.split(":", 1)[0]](**options)
    except TypeError as exc:
        raise ValueError(f"scorer {name}: bad options {sorted(options)}: {exc}") from None
    except AuditError as exc:
        raise ValueError(f"scorer {name}: {exc}") from None


def _build(spec) -> None:
    """A generator's option names must be ones its backend takes. Their values are checked when `generate`
    builds the generator: some depend on the machine (a hub id without a pinned revision is fine offline),
    and a run made offline must still open for `report` elsewhere."""
    from .errors import AuditError

    try:
        spec.build()
    except TypeError as exc:
        raise ValueError(f"generator {spec.name}: bad options {sorted(spec.options)}: {exc}") from None
    except AuditError:
        pass


class AnalysisConfig(_Section):
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples for confidence intervals")
    ci: float = Field(0.95, gt=0, lt=1)
    cluster: Literal["auto", "source_image", "prompt", "none"] = Field(
        "auto", description="what every bootstrap resamples together: source_image (pairs made from one I_o), "
        "prompt (pairs of one prompt pair, or one p_o), none (single pairs); auto = source_image when pairs "
        "share an I_o, else prompt when they share a prompt pair, else none")
    alignment_scorer: str | None = Field(
        None, description="scorer whose mean r(I_a, p_a) is the generation table's prompt-validity score; "
        "default: the first of clip, blip-itm in the run (none when neither is)")
    pairs_of_generators: dict[str, str] = Field(
        default_factory=dict, description="aligned generator -> its base generator (the names in the pairs' "
        "model field), compared prompt by prompt: Wilcoxon signed-rank and McNemar, Holm-corrected")

    @field_validator("pairs_of_generators")
    @classmethod
    def _distinct_generators(cls, value: dict[str, str]) -> dict[str, str]:
        for aligned, base in value.items():
            if aligned == base:
                raise ValueError(f"generator {aligned!r} cannot be its own base")
        return value


class RayBackendConfig(_Section):
    workers: int | None = Field(None, ge=1, description="actors in this backend's pool (default ray.workers)")
    num_cpus: float | None = Field(None, ge=0, description="CPUs each actor reserves (default ray.num_cpus)")
    num_gpus: float | None = Field(None, ge=0, description="GPUs each actor reserves (default ray.num_gpus); "
                                   "a fraction packs several actors on one GPU")


class RayConfig(_Section):
    address: str | None = Field(None, description="the cluster to join (ray://HOST:10001 or auto); default: the "
                                "RAY_ADDRESS environment variable, else a Ray started for the command on this machine")
    local_cpus: int | None = Field(None, ge=1, description="CPUs of the Ray started on this machine (default: all)")
    workers: int = Field(2, ge=1, description="actors per backend, each holding one loaded model")
    num_cpus: float = Field(1, ge=0, description="CPUs each actor reserves")
    num_gpus: float = Field(0, ge=0, description="GPUs each actor reserves")
    in_flight: int = Field(2, ge=1, description="batches queued on each actor, so it never waits for the driver")
    images: Literal["auto", "shared", "send"] = Field(
        "auto", description="how workers reach the run's images: 'shared' reads and writes the run's images/ "
        "folder (a path every node mounts at the same place), 'send' ships the bytes through Ray, 'auto' "
        "checks that every worker sees the run's folder and falls back to 'send'")
    max_retries: int = Field(2, ge=0, description="times Ray sends a batch again after its worker was lost; "
                             "past that its items are left for a rerun")
    backends: dict[str, RayBackendConfig] = Field(
        default_factory=dict, description="per-backend pool size and resources, keyed STAGE:NAME (score:hpsv2, "
        "judge:vlm, labels:vlm, generate:sdxl-base), e.g. {score:hpsv2: {workers: 4, num_gpus: 0.5}}")

    @field_validator("backends")
    @classmethod
    def _backend_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            stage, _, name = key.partition(":")
            if stage not in ("score", "judge", "labels", "generate") or not name:
                raise ValueError(f"{key!r} is not STAGE:NAME with STAGE one of score, judge, labels, generate "
                                 "(e.g. score:hpsv2)")
        return value


class AuditConfig(_Section):
    seed: int = Field(0, ge=0, lt=2**63, description="seed for every random choice; recorded with each record")
    dimensions_file: str | None = Field(None, description="YAML file adding or overriding dimensions")
    rubric_file: str | None = Field(None, description="VisionReward guideline CSV to use as the judging rubric")

    @field_validator("dimensions_file", "rubric_file")
    @classmethod
    def _absolute_files(cls, value: str | None) -> str | None:
        return None if value is None else absolute_path(value)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    # Where the work runs, not what it computes: set per command (flag or config file), never stored with
    # the run (exclude: left out of the manifest, the config hash and the report), so one `--engine ray`
    # does not send every later command on the run to Ray.
    engine: Literal["local", "ray"] = Field("local", exclude=True, description="where generate, judge, labels "
                                            "and score run their models: this process, or actor pools on Ray "
                                            "(the ray extra); per command, not stored with the run")
    ray: RayConfig = Field(default_factory=RayConfig, exclude=True)

    @model_validator(mode="after")
    def _known_ray_backends(self):
        """Each ``ray.backends`` entry must name a backend a stage can run: a typo would otherwise size no
        pool, silently."""
        from .registry import available

        kinds = {"score": "scorers", "judge": "judges", "labels": "labellers", "generate": "generators"}
        for key in self.ray.backends:
            stage, _, name = key.partition(":")
            known = list(available(kinds[stage]))
            if stage == "generate":
                from .images.generators.presets import generator_specs, presets, user_presets

                known += [*presets(), *user_presets(self.images.generate.presets)]
                try:  # a sweep's generators are named after their settings
                    known += [spec.name for spec in generator_specs(self.images.generate)]
                except AuditError:
                    pass  # said by the images section's own check
                if name not in known:
                    raise ValueError(f"ray.backends: {key!r}: unknown generator {name!r}; known: "
                                     f"{', '.join(dict.fromkeys(known))}")
            elif name.split(":", 1)[0] not in known:
                raise ValueError(f"ray.backends: {key!r}: unknown {kinds[stage][:-1]} {name.split(':', 1)[0]!r}; "
                                 f"available: {', '.join(known)}")
        return self

    def hash(self) -> str:
        return spec_hash(self.model_dump(mode="json"))


def _format_errors(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{loc}'")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{loc}: {msg}" if loc else msg)
    return f"{where}: invalid configuration: " + "; ".join(lines)  # one line, every problem named


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
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory, not a YAML file") from None
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read ({exc.strerror})") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = _deep_merge(data, loaded)
    for dotted, value in (overrides or {}).items():
        node = data
        parts = split_key(dotted)
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


_KEY_PART = re.compile(r"""\s*(?:"([^"]*)"|'([^']*)'|\[\s*(?:"([^"]*)"|'([^']*)'|([^\]]*?))\s*\]|([^.\["']+))\s*""")


def split_key(dotted: str) -> list[str]:
    """Split an override key into its path.

    Parts are separated by dots; a part holding dots is quoted or bracketed:
    ``score.options."hpsv2.1".device`` or ``score.options[hpsv2.1].device``. Unquoted, a run of parts
    under ``score.options`` that spells a registered scorer name is that name
    (``score.options.hpsv2.1.device`` addresses scorer ``hpsv2.1``), longest name first.
    """
    parts: list[str] = []
    quoted: list[bool] = []
    pos = 0
    while pos < len(dotted):
        m = _KEY_PART.match(dotted, pos)
        if not m or not next((g for g in m.groups() if g is not None), "").strip():
            raise ConfigError(f"override key {dotted!r}: cannot read the part at position {pos + 1}; "
                              "write parts with dots in quotes, e.g. score.options.\"hpsv2.1\".device")
        parts.append(next(g for g in m.groups() if g is not None).strip())
        quoted.append(m.group(6) is None)
        pos = m.end()
        if pos < len(dotted):
            if dotted[pos] == ".":
                pos += 1
                if pos == len(dotted):
                    raise ConfigError(f"override key {dotted!r} ends with a dot")
            elif dotted[pos] != "[":
                raise ConfigError(f"override key {dotted!r}: expected '.' at position {pos + 1}")
    if len(parts) > 3 and parts[:2] == ["score", "options"] and not quoted[2]:
        from .registry import available

        names = available("scorers")
        for end in range(len(parts), 3, -1):
            if not any(quoted[2:end]) and ".".join(parts[2:end]) in names:
                parts[2:end] = [".".join(parts[2:end])]
                break
    return parts


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
    defaults = AuditConfig()
    values = defaults.model_dump(mode="json")
    for name, field in AuditConfig.model_fields.items():
        if field.exclude:  # the engine settings, which a run's stored config leaves out
            value = getattr(defaults, name)
            values[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    _emit(AuditConfig, values, lines, 0)
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
