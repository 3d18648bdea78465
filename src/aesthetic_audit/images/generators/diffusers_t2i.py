"""The diffusers backend: FLUX.1, SD3/3.5, SDXL and anything AutoPipelineForText2Image loads, with
image-to-image from the same components.

Weights: ``model`` is a local diffusers folder or a hub id at a pinned ``revision`` (a commit; offline, the
cached snapshot of a branch is used and its commit recorded). A local folder enters the identity as the
SHA-256 of every file the pipeline reads (remembered by path, size and mtime, so a 30 GB folder is hashed
once); a hub model as repo + commit. Moving a folder keeps its records' keys.

On top of the base model: ``transformer`` swaps in a fine-tuned transformer/UNet (a diffusers folder, or a
checkpoint file with the diffusers key layout: how DanceFlux and PrefGRPO-Flux sit on FLUX.1-dev); ``lora``
loads an adapter at ``lora_scale``, in diffusers' layout or as PEFT saved it (adapter_config.json beside
it, its lora_alpha / r honoured: the SD3.5M Flow-GRPO adapters). The adapter is never fused, and at scale 0
it is not loaded at all, so scale 0 is the base model bit for bit. Generators that differ only in LoRA (a scale
sweep) share one loaded pipeline and switch adapters before each call; ``unload()`` lets go of it (the stage
unloads each generator before the next that does not share it).

Determinism: every request gets its own CPU torch.Generator seeded with ``request.seed``, so its initial
noise does not depend on its batch-mates, the batch size or the device.
"""

from __future__ import annotations

import gc
import inspect
import math
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import AuditError, ConfigError, require
from ...hashing import canonical_json, spec_hash
from ...registry import register
from ...scorers._torch import dtype_name, resolve_device, resolve_dtype
from ...scorers._weights import (COMMIT, PICKLE_SUFFIXES, MissingFile, MissingWeightsError, Resolver, WeightsError,
                                 WeightsSource, file_sha256, first_line, hub_constants, hub_offline_env, hub_problem,
                                 load_state_dict)
from ...ui import quiet_libraries
from .base import GenerationRequest, GenerationResult, Generator, OutOfMemory, RUNTIME_OPTIONS, blank_reason

PIPELINES = {"auto": "AutoPipelineForText2Image", "flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline",
             "sdxl": "StableDiffusionXLPipeline"}
WEIGHT_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name save_lora_weights writes and load_lora_weights looks for
# A PEFT adapter (PeftModel.save_pretrained: adapter_model.safetensors + adapter_config.json) names its layers
# under this prefix, and its scale lora_alpha / r lives in the config.
PEFT_PREFIX = "base_model.model."
PEFT_CONFIG = "adapter_config.json"
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
# Call arguments the backend sets itself; a request's params must not carry them.
RESERVED = frozenset({"prompt", "negative_prompt", "generator", "output_type", "image", "strength", "return_dict",
                      "latents", "prompt_embeds", "negative_prompt_embeds", "num_images_per_prompt"})
# Options that change neither the pipeline nor its images (where weights come from is their content).
NOT_IDENTITY = RUNTIME_OPTIONS | {"offline", "model", "revision", "transformer", "transformer_revision",
                                  "transformer_subfolder", "lora", "lora_revision", "weight_name", "lora_scale",
                                  "dtype", "pipeline", "scheduler"}


def torch():
    return require("torch", "models", "the diffusers generator")


def diffusers():
    return require("diffusers", "models", "the diffusers generator")


def dtype_kwarg() -> str:
    """The from_pretrained argument that sets the dtype: newer diffusers renamed torch_dtype to dtype (and warn
    on the old name)."""
    import importlib

    renamed = hasattr(importlib.import_module("diffusers.utils.deprecation_utils"), "_resolve_dtype")
    return "dtype" if renamed else "torch_dtype"


@dataclass(frozen=True)
class Location:
    """A weights reference resolved without reading weights: a local path, or a hub repo at a revision."""

    option: str  # the option that named it, for messages
    local: Path | None = None
    repo: str | None = None
    revision: str | None = None
    subfolder: str | None = None

    def source(self, role: str | None = None) -> WeightsSource:
        return WeightsSource(repo=self.repo, revision=self.revision, subfolder=self.subfolder, role=role,
                             local=str(self.local) if self.local else None)


def locate(option: str, value: str, revision: str | None, offline: bool, subfolder: str | None = None,
           revision_option: str | None = None) -> Location:
    """``value`` as a local path when one exists (or it looks like a path), else as a hub id; a hub id needs a
    pinned commit unless the hub is off (then the cache's snapshot of ``revision`` or main is used)."""
    path = Path(str(value)).expanduser()
    if path.exists() or not HUB_ID.fullmatch(str(value)):
        return Location(option, local=path)
    if not (revision and COMMIT.fullmatch(revision)) and not offline:
        raise ConfigError(f"{option} {value!r} is a hub id: pin {revision_option or option + '_revision'} to a commit "
                          "(40 hex digits) so its images can be reproduced, or set HF_HUB_OFFLINE=1 to use the "
                          "snapshot in the Hugging Face cache")
    return Location(option, repo=str(value), revision=revision, subfolder=subfolder)


def offline_reason(offline: bool | None) -> str | None:
    """Why hub files come from the cache alone (None: the hub is asked)."""
    if offline:
        return "hub access is off: the generator's offline option"
    if offline is None and (hub_offline_env() or hub_constants().HF_HUB_OFFLINE):
        return "hub access is off: HF_HUB_OFFLINE is set"
    if offline is None:
        problem = hub_problem(hub_constants().ENDPOINT)
        if problem:
            return f"the hub is unreachable ({problem}); set HF_HUB_OFFLINE=1 to skip this check"
    return None


def weight_variant(name: str) -> str | None:
    """The variant tag of a weights file name ("fp16" in model.fp16.safetensors or
    diffusion_pytorch_model.fp16-00001-of-00002.safetensors), None for the default weights."""
    parts = name.split(".")
    return parts[-2].split("-")[0] if len(parts) > 2 else None


def component_files(folder: Path, variant: str | None, allow_pickle: bool) -> tuple[list[Path], str | None]:
    """The files of one component folder that loading reads (configs, tokenizer files, the weights of the
    chosen variant and format), and what is missing (None: nothing)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(s.startswith(".") for s in
                                                                           p.relative_to(folder).parts))
    weights = [p for p in files if p.name.endswith(WEIGHT_SUFFIXES)]
    others = [p for p in files if p not in weights]
    if not (folder / "config.json").is_file():
        return others + weights, (None if files else "no files")
    usable = [p for p in weights if p.suffix == ".safetensors"] or ([p for p in weights if allow_pickle])
    chosen = [p for p in usable if weight_variant(p.name) == variant] or \
             [p for p in usable if weight_variant(p.name) is None]
    if chosen:
        return others + chosen, None
    if weights and not usable:
        return others, "only pickle weights (safetensors are the default; opt in with allow_pickle=true)"
    return others, "no weights file (*.safetensors)"


def pipeline_files(folder: Path, variant: str | None,
                   allow_pickle: bool) -> tuple[list[Path], list[tuple[str, str]]]:
    """Every file of a diffusers folder the pipeline reads, and what is missing: (folder-relative name, why)."""
    index = folder / "model_index.json"
    if not index.is_file():
        return [], [("model_index.json", "not found")]
    from ...scorers._weights import read_json

    files, missing = [index], []
    for name, spec in read_json(index).items():
        if name.startswith("_") or not isinstance(spec, list) or None in spec:
            continue  # metadata, or an optional component this model leaves out
        found, problem = component_files(folder / name, variant, allow_pickle) if (folder / name).is_dir() \
            else ([], "missing")
        files += found
        if problem:
            missing.append((f"{name}/", problem))
    return files, missing


class MissingPipelineFiles(MissingWeightsError):
    """Files a pipeline (or a transformer/LoRA on it) needs that are not there, named in one message."""

    def __init__(self, missing: list[MissingFile], message: str):
        self.missing = missing
        WeightsError.__init__(self, message)


def hf_download(loc: Location) -> str:
    """The command that fetches a whole hub repo (at its revision) into the Hugging Face cache."""
    return f"`hf download {loc.repo}" + (f" --revision {loc.revision}" if loc.revision else "") + "`"


def files_identity(files: list[Path], root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in files}


def checkpoint_keys(path: Path, allow_pickle: bool) -> list[str]:
    """The tensor names of a weights file; a safetensors file's from its header alone."""
    if path.suffix != ".safetensors":
        return list(load_state_dict(path, allow_pickle=allow_pickle))
    st = require("safetensors", "models", "the diffusers generator")
    try:
        with st.safe_open(str(path), framework="numpy") as f:
            return list(f.keys())
    except Exception as exc:  # SafetensorError, OSError: a damaged or truncated file
        raise WeightsError(f"cannot read {path} as safetensors (damaged or incomplete? download it again): "
                           f"{type(exc).__name__}: {first_line(exc)}") from None


def peft_to_diffusers(state: dict[str, Any], config_path: Path, component: str) -> dict[str, Any]:
    """A PEFT adapter's layers in diffusers' LoRA layout (``<component>.<module>.lora_A.weight``), its scale
    folded into lora_B. PEFT adds (lora_alpha / r) * B @ A per module (alpha / sqrt(r) with rslora, r and
    alpha from the config's patterns); diffusers, given a state dict without alphas, adds B @ A. So scale 1
    here is what ``PeftModel.from_pretrained`` gives (how the Flow-GRPO adapters were trained and used)."""
    peft = require("peft", "models", "loading PEFT adapters")
    from peft.utils.other import get_pattern_key

    try:
        cfg = peft.LoraConfig.from_pretrained(str(config_path.parent))
    except Exception as exc:  # not JSON, or keys of another adapter type
        raise WeightsError(f"cannot read {config_path} as a LoRA config: {type(exc).__name__}: "
                           f"{first_line(exc)}") from None
    if cfg.peft_type != peft.PeftType.LORA or cfg.use_dora:
        raise WeightsError(f"{config_path}: only plain LoRA adapters load (this is "
                           f"{'DoRA' if cfg.use_dora else cfg.peft_type})")
    out = {}
    for key, value in state.items():
        if not key.startswith(PEFT_PREFIX) or ".lora_" not in key:
            raise WeightsError(f"{config_path.parent}: {key} is not a LoRA layer; only LoRA layers can be loaded "
                               "(no modules_to_save)")
        name = key[len(PEFT_PREFIX):]
        if ".lora_B." in name:
            module = name.split(".lora_B.")[0]
            r = cfg.rank_pattern.get(get_pattern_key(cfg.rank_pattern.keys(), module), cfg.r)
            alpha = cfg.alpha_pattern.get(get_pattern_key(cfg.alpha_pattern.keys(), module), cfg.lora_alpha)
            value = value * (alpha / math.sqrt(r) if cfg.use_rslora else alpha / r)
        out[f"{component}.{name}"] = value
    return out


@dataclass(eq=False)
class Loaded:
    """A loaded pipeline, shared by the generators that differ only in LoRA (weakly held: freed with them)."""

    pipe: Any
    img2img: Any = None
    adapters: set[str] = field(default_factory=set)
    # (adapter, scale) in force, ("", 0.0) for none; None: unknown (loading an adapter also activates it)
    active: tuple[str, float] | None = ("", 0.0)


_SHARED: "weakref.WeakValueDictionary[str, Loaded]" = weakref.WeakValueDictionary()


@register("generators")
class DiffusersGenerator(Generator):
    name = "diffusers"
    description = ("diffusers pipelines (FLUX.1, SD3/3.5, SDXL, any AutoPipelineForText2Image model) from a local "
                   "folder or a pinned hub revision; transformer swap, LoRA with a scale, img2img")
    version = "1"
    extra = "models"
    supports_img2img = True
    supports_negative_prompt = True
    blank_tolerance = 0.0  # only a safety filter's constant frame is blank: dark or flat renders can be asked for

    def __init__(self, *, model: str | None = None, revision: str | None = None, pipeline: str = "auto",
                 dtype: str | None = None, device: str | None = None, batch_size: int = 1, cpu_offload: bool = False,
                 vae_tiling: bool = False, vae_slicing: bool = False, attention_backend: str | None = None,
                 transformer: str | None = None, transformer_revision: str | None = None,
                 transformer_subfolder: str | None = None, lora: str | None = None, lora_revision: str | None = None,
                 weight_name: str | None = None, lora_scale: float = 1.0, scheduler: str | None = None,
                 img2img: bool = False, variant: str | None = None, allow_pickle: bool = False,
                 offline: bool | None = None):
        given = {k: v for k, v in locals().items() if k not in {"self", "__class__"} and v is not None}
        super().__init__(**given)
        if not model:
            raise ConfigError("the diffusers generator needs model: a local diffusers folder or a hub id")
        try:
            self.lora_scale = float(lora_scale)
        except (TypeError, ValueError):
            raise ConfigError(f"lora_scale must be a number, got {lora_scale!r}") from None
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size!r}")
        self.pipeline_option = pipeline
        self.dtype_option = dtype_name(dtype)
        self.device_option = device
        self.scheduler_name = scheduler
        self.variant, self.allow_pickle, self.offline = variant, bool(allow_pickle), offline
        self.weight_name = weight_name
        off = bool(offline) or (offline is None and hub_offline_env())
        self.model = locate("model", model, revision, off, revision_option="revision")
        self.transformer = locate("transformer", transformer, transformer_revision, off,
                                  transformer_subfolder) if transformer else None
        self.lora = locate("lora", lora, lora_revision, off) if lora else None
        self._identity: dict[str, Any] | None = None
        self._folder: Path | None = None
        self.loaded: Loaded | None = None

    # -- where the weights are --------------------------------------------------------------------
    def model_folder(self) -> Path:
        """The diffusers folder to load (a hub snapshot is fetched, or found in the cache), checked to hold
        every file loading reads: all missing files in one error."""
        if self._folder is None:
            if self.model.local:
                folder = self.model.local
                if folder.is_file():
                    raise ConfigError(f"model {folder} is a single file; model must be a diffusers folder (with "
                                      "model_index.json) or a hub id. A fine-tuned transformer/UNet checkpoint "
                                      "goes in the transformer option, on top of its base model")
                if not folder.is_dir():
                    raise MissingPipelineFiles([MissingFile(self.model.source(), "", "no such folder")],
                                               f"model {folder}: no such folder (a hub id is written owner/name)")
            else:
                folder = self._snapshot(self.model, None)
            _, missing = pipeline_files(folder, self.variant, self.allow_pickle)
            if missing:
                where = f"{self.model.repo}@{self.model.revision or 'main'} (the cached snapshot {folder})" \
                    if self.model.repo else str(folder)
                todo = (f"fetch it where the hub is reachable with {hf_download(self.model)}" if self.model.repo else
                        "complete the folder (a diffusers model: model_index.json and one subfolder per component) "
                        "or fix the path")
                raise MissingPipelineFiles([MissingFile(self.model.source(), name, problem)
                                            for name, problem in missing],
                                           f"missing weight files in {where}: "
                                           f"{'; '.join(f'{n} ({p})' for n, p in missing)}; {todo}")
            self._folder = folder
        return self._folder

    def _snapshot(self, loc: Location, patterns: list[str] | None) -> Path:
        """A hub repo's files at ``loc.revision``: downloaded (only what a pipeline loads), or from the cache."""
        hub = require("huggingface_hub", "models", "loading weights from the Hugging Face hub")
        reason = offline_reason(self.offline)
        try:
            if reason is None and patterns is None:
                folder = diffusers().DiffusionPipeline.download(
                    loc.repo, revision=loc.revision, variant=self.variant,
                    use_safetensors=None if self.allow_pickle else True)
            else:
                folder = hub.snapshot_download(loc.repo, revision=loc.revision, allow_patterns=patterns,
                                               local_files_only=reason is not None)
        except Exception as exc:  # the hub library raises many types; the repo is what is missing either way
            why = reason or f"the download failed: {type(exc).__name__}: {first_line(exc)}"
            raise MissingPipelineFiles(
                [MissingFile(loc.source(), "", why)],
                f"missing weight files: {loc.repo}@{loc.revision or 'main'} ({loc.option}) is not in the Hugging Face "
                f"cache ({why}). Fetch it where the hub is reachable with {hf_download(loc)} (into the Hugging Face "
                "cache, which is read offline too; copy it along or point HF_HOME at it), or download it into a "
                f"folder and pass the folder as {loc.option}") from None
        folder = Path(folder)
        return folder / loc.subfolder if loc.subfolder else folder

    def _hub_identity(self, loc: Location, folder: Path) -> dict[str, Any]:
        """repo + the commit actually used (a cached snapshot folder is named by its commit)."""
        snapshot = folder.parent if loc.subfolder else folder
        commit = snapshot.name if COMMIT.fullmatch(snapshot.name) else loc.revision
        return {"repo": loc.repo, "revision": commit, **({"subfolder": loc.subfolder} if loc.subfolder else {})}

    def transformer_path(self) -> Path:
        loc = self.transformer
        assert loc is not None
        path = loc.local or self._snapshot(loc, [f"{loc.subfolder}/*" if loc.subfolder else "*.json",
                                                 *([] if loc.subfolder else ["*.safetensors"])])
        if not path.exists():
            raise MissingPipelineFiles([MissingFile(loc.source(), path.name, "not found")],
                                       f"transformer {path}: no such file or folder")
        if path.is_dir() and not (path / "config.json").is_file():
            raise WeightsError(f"transformer folder {path} has no config.json: give a diffusers model folder, or the "
                               "checkpoint file itself")
        return path

    def lora_file(self) -> Path:
        """The LoRA weights file: ``weight_name`` in the folder or repo, or a folder's only weights file."""
        loc = self.lora
        assert loc is not None
        if loc.repo:
            return Resolver(offline=self.offline).file(loc.source("lora"), self.weight_name or LORA_FILE)
        path = loc.local
        if path.is_dir():
            if self.weight_name or (path / LORA_FILE).is_file():
                path = path / (self.weight_name or LORA_FILE)
            else:
                found = sorted(p for p in path.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
                if len(found) != 1:
                    raise ConfigError(f"lora folder {path} holds {len(found)} weights files: name one with weight_name")
                path = found[0]
        if not path.is_file():
            raise MissingPipelineFiles([MissingFile(loc.source(), path.name, "not found")],
                                       f"lora {path}: no such file")
        if path.suffix != ".safetensors" and not self.allow_pickle:
            raise WeightsError(f"{path.name} is a pickle checkpoint, which can run code when loaded: convert it to "
                               "safetensors, or opt in with allow_pickle=true")
        return path

    def lora_config_file(self) -> Path | None:
        """A PEFT adapter's adapter_config.json (beside its weights: it holds lora_alpha and r, so the
        adapter's strength), or None for a LoRA in diffusers' layout."""
        path, loc = self.lora_file(), self.lora
        if not any(k.startswith(PEFT_PREFIX) for k in checkpoint_keys(path, self.allow_pickle)):
            return None
        if loc.repo:
            name = Path(self.weight_name or LORA_FILE).with_name(PEFT_CONFIG).as_posix()
            return Resolver(offline=self.offline).file(loc.source("lora"), name)
        config = path.with_name(PEFT_CONFIG)
        if not config.is_file():
            raise MissingPipelineFiles([MissingFile(loc.source(), PEFT_CONFIG, "not found")],
                                       f"lora {path} is a PEFT adapter (keys {PEFT_PREFIX}*): its {PEFT_CONFIG} "
                                       "(lora_alpha and r, which set its strength) must lie beside it")
        return config

    # -- identity ---------------------------------------------------------------------------------
    def dtype_label(self) -> str:
        """The dtype option, or the default for the device: bf16 on CUDA, fp32 elsewhere."""
        if self.dtype_option:
            return self.dtype_option
        return "bf16" if resolve_device(self.device_option).startswith("cuda") else "fp32"

    def pipeline_class(self) -> str:
        """The pipeline class: the option's, or for auto the class model_index.json names."""
        option = PIPELINES.get(self.pipeline_option, self.pipeline_option)
        if option != PIPELINES["auto"]:
            return option
        from ...scorers._weights import read_json

        return str(read_json(self.model_folder() / "model_index.json").get("_class_name"))

    def identity(self) -> dict[str, Any]:
        """Backend, version, base weights (repo + commit, or file hashes), pipeline class, dtype, scheduler,
        swapped transformer and LoRA (content + scale), and every other option that is not a run-time one."""
        if self._identity is None:
            folder = self.model_folder()
            ident: dict[str, Any] = {
                "name": self.name, "version": self.version,
                "model": self._hub_identity(self.model, folder) if self.model.repo
                else {"files": files_identity(pipeline_files(folder, self.variant, self.allow_pickle)[0], folder)},
                "pipeline": self.pipeline_class(), "dtype": self.dtype_label(), "scheduler": self.scheduler_name,
                "transformer": None, "lora": None}
            if self.transformer:
                path = self.transformer_path()
                if self.transformer.repo:
                    ident["transformer"] = self._hub_identity(self.transformer, path)
                elif path.is_file():
                    ident["transformer"] = {"sha256": file_sha256(path)}
                else:
                    ident["transformer"] = {"files": files_identity(
                        component_files(path, self.variant, self.allow_pickle)[0], path)}
            if self.lora:
                ident["lora"] = {"sha256": file_sha256(self.lora_file()), "scale": self.lora_scale}
                config = self.lora_config_file()
                if config is not None:
                    ident["lora"]["config_sha256"] = file_sha256(config)
            ident["options"] = {k: v for k, v in sorted(self.options.items()) if k not in NOT_IDENTITY}
            self._identity = ident
        return self._identity

    # -- loading ----------------------------------------------------------------------------------
    def _load(self) -> None:
        self.device = resolve_device(self.device_option)
        self.dtype = resolve_dtype(self.dtype_label())
        ident = self.identity()  # every weights file located (and missing ones reported) before any is read
        if self.cpu_offload and self.device == "cpu":
            raise ConfigError("cpu_offload moves models between the CPU and an accelerator: it needs device "
                              "cuda or mps")
        key = self._pipeline_key()
        loaded = _SHARED.get(key)
        if loaded is None:
            loaded = Loaded(self._build())
            _SHARED[key] = loaded
        self.loaded = loaded
        if self.lora and self.lora_scale != 0:
            self._add_lora()
        if self.options.get("img2img") and loaded.img2img is None:
            try:
                loaded.img2img = diffusers().AutoPipelineForImage2Image.from_pipe(loaded.pipe)
            except Exception as exc:  # no image-to-image pipeline of this family
                raise ConfigError(f"img2img: no image-to-image pipeline for {type(loaded.pipe).__name__}: "
                                  f"{first_line(exc)}") from None
            loaded.img2img.set_progress_bar_config(disable=True)

    def _pipeline_key(self) -> str:
        """What a loaded pipeline is made of: generators with the same key (they differ only in LoRA) share it."""
        ident = self.identity()
        return canonical_json({"folder": str(self.model_folder().resolve()),
                               "device": resolve_device(self.device_option),
                               **{k: v for k, v in ident.items() if k not in {"lora", "options"}},
                               **{k: self.options.get(k) for k in ("variant", "allow_pickle", "attention_backend",
                                                                   "cpu_offload", "vae_tiling", "vae_slicing")}})

    def shares_weights(self, other: Generator) -> bool:
        if not isinstance(other, DiffusersGenerator):
            return False
        try:
            return self._pipeline_key() == other._pipeline_key()
        except AuditError:  # other cannot load; it says so when it runs
            return False

    def _unload(self) -> None:
        # The last generator on a pipeline to let go frees it: _SHARED holds pipelines weakly.
        self.loaded = None
        gc.collect()  # a pipeline's modules hold reference cycles
        t = torch()
        if t.cuda.is_available():
            t.cuda.empty_cache()

    @property
    def cpu_offload(self) -> bool:
        return bool(self.options.get("cpu_offload"))

    def _build(self):
        d = diffusers()
        folder = self.model_folder()
        name = PIPELINES.get(self.pipeline_option, self.pipeline_option)
        cls = getattr(d, name, None)
        if cls is None or not hasattr(cls, "from_pretrained"):
            raise ConfigError(f"pipeline {self.pipeline_option!r} is not a diffusers pipeline class; use auto, "
                              f"{', '.join(k for k in PIPELINES if k != 'auto')} or a class name such as FluxPipeline")
        kwargs: dict[str, Any] = {dtype_kwarg(): self.dtype, "use_safetensors": None if self.allow_pickle else True}
        if self.variant:
            kwargs["variant"] = self.variant
        if self.transformer:
            component, model = self._swapped_transformer(folder)
            kwargs[component] = model
        try:
            with quiet_libraries():
                pipe = cls.from_pretrained(str(folder), **kwargs)
        except AuditError:
            raise
        except Exception as exc:  # a damaged file, a config this diffusers cannot read: name the folder
            raise WeightsError(f"cannot build {name} from {folder}: {type(exc).__name__}: {first_line(exc)}") from exc
        if self.scheduler_name:
            sched = getattr(d, self.scheduler_name, None)
            if sched is None or not hasattr(sched, "from_config"):
                raise ConfigError(f"scheduler {self.scheduler_name!r} is not a diffusers scheduler class "
                                  "(e.g. EDMDPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler)")
            pipe.scheduler = sched.from_config(pipe.scheduler.config)
        if self.options.get("attention_backend"):
            self._set_attention_backend(pipe, self.options["attention_backend"])
        if self.options.get("vae_tiling"):
            pipe.vae.enable_tiling()
        if self.options.get("vae_slicing"):
            pipe.vae.enable_slicing()
        try:
            if self.cpu_offload:
                pipe.enable_model_cpu_offload(device=self.device)
            else:
                pipe.to(self.device)
        except Exception as exc:  # no such device, or the model does not fit on it
            hint = "; cpu_offload=true keeps only the running model on the device" \
                if self._out_of_memory(exc) and not self.cpu_offload else ""
            raise ConfigError(f"cannot put {type(pipe).__name__} on {self.device}: {type(exc).__name__}: "
                              f"{first_line(exc)}{hint}") from None
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _swapped_transformer(self, folder: Path):
        """(component name, model): the fine-tuned transformer/UNet, built with the base model's config when
        it comes as one checkpoint file."""
        from ...scorers._weights import read_json

        index = read_json(folder / "model_index.json")
        component = next((c for c in ("transformer", "unet") if c in index), None)
        if component is None:
            raise ConfigError(f"transformer: {folder} has neither a transformer nor a unet component to replace")
        cls = getattr(diffusers(), index[component][1])
        path = self.transformer_path()
        try:
            if path.is_dir():
                with quiet_libraries():
                    model = cls.from_pretrained(str(path), **{dtype_kwarg(): self.dtype},
                                                use_safetensors=None if self.allow_pickle else True)
                return component, model
            state = load_state_dict(path, allow_pickle=self.allow_pickle)
            with require("accelerate", "models", "the diffusers generator").init_empty_weights():
                model = cls.from_config(cls.load_config(str(folder), subfolder=component))
        except AuditError:
            raise
        except Exception as exc:  # a damaged or foreign checkpoint: name it
            raise WeightsError(f"cannot build the {component} from {path}: {type(exc).__name__}: "
                               f"{first_line(exc)}") from exc
        want = set(model.state_dict())
        missing, unexpected = sorted(want - set(state)), sorted(set(state) - want)
        if missing or unexpected:
            raise WeightsError(
                f"{path.name} does not fit {folder.name}'s {component} ({cls.__name__}): {len(missing)} keys missing "
                f"(e.g. {', '.join(missing[:3]) or '-'}), {len(unexpected)} unexpected (e.g. "
                f"{', '.join(unexpected[:3]) or '-'}). It needs the diffusers key layout of that model; convert a "
                "checkpoint in another layout first")
        # cast while assigning (not model.to): the modules a model keeps in float32 stay so
        keep = tuple(getattr(cls, "_keep_in_fp32_modules", None) or ())
        state = {k: v.to(self.dtype) if v.is_floating_point() and not any(m in k.split(".") for m in keep) else v
                 for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return component, model.eval()

    @staticmethod
    def _set_attention_backend(pipe, backend: str) -> None:
        models = [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "unet", None)) if m is not None]
        supported = [m for m in models if any(hasattr(getattr(mod, "processor", None), "_attention_backend")
                                              for mod in m.modules())]
        if not supported:
            raise ConfigError(f"attention_backend: {type(pipe).__name__}'s denoiser does not support diffusers' "
                              "attention backends (leave attention_backend unset)")
        for model in supported:
            try:
                model.set_attention_backend(backend)
            except Exception as exc:  # an unknown name, or a backend whose package is missing
                raise ConfigError(f"attention_backend {backend!r}: {first_line(exc)}") from None

    def _add_lora(self) -> None:
        loaded, pipe = self.loaded, self.loaded.pipe
        path, config = self.lora_file(), self.lora_config_file()
        self.adapter = "lora_" + spec_hash({k: v for k, v in self.identity()["lora"].items() if k != "scale"})[:16]
        if self.adapter in loaded.adapters:
            return
        try:
            if config is None:
                pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=self.adapter)
            else:
                state = peft_to_diffusers(load_state_dict(path, allow_pickle=self.allow_pickle), config,
                                          "transformer" if getattr(pipe, "transformer", None) is not None else "unet")
                pipe.load_lora_weights(state, adapter_name=self.adapter)
        except AuditError:
            raise
        except Exception as exc:  # a damaged file, or a LoRA for another model
            raise WeightsError(f"cannot load the LoRA {path} into {type(pipe).__name__}: "
                               f"{type(exc).__name__}: {first_line(exc)}") from exc
        # diffusers skips keys it does not recognise without a word: an adapter that reached no layer is an error
        if not any(self.adapter in names for names in pipe.get_list_adapters().values()):
            raise WeightsError(f"the LoRA {path} reached none of {type(pipe).__name__}'s layers: its keys name "
                               "layers of another model, or a layout diffusers does not read")
        loaded.adapters.add(self.adapter)
        loaded.active = None

    def _activate(self) -> None:
        """Put this generator's adapter (or none) in force on the shared pipeline."""
        loaded = self.loaded
        want = (self.adapter, self.lora_scale) if self.lora and self.lora_scale != 0 else ("", 0.0)
        if loaded.active == want:
            return
        if not want[0]:
            loaded.pipe.disable_lora()  # the base layers alone: exactly the model without adapters
        else:
            loaded.pipe.enable_lora()
            loaded.pipe.set_adapters([self.adapter], adapter_weights=[self.lora_scale])
        loaded.active = want

    # -- generating -------------------------------------------------------------------------------
    def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            if req.init_image is not None:
                problem = self._img2img_problem(req)
                if problem:
                    results[i] = GenerationResult(None, error=problem)
                    continue
                if float(req.strength) == 0:  # no denoising at all: the input is the answer (diffusers refuses 0)
                    results[i] = GenerationResult(req.init_image.convert("RGB"))
                    continue
            key = canonical_json({"params": req.params, "negative": req.negative_prompt is not None,
                                  "img2img": req.init_image is not None, "strength": req.strength})
            groups.setdefault(key, []).append(i)
        self._activate()
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                for i, res in zip(chunk, self._call([requests[i] for i in chunk])):
                    results[i] = res
        return results  # type: ignore[return-value]

    def _img2img_problem(self, req: GenerationRequest) -> str | None:
        if not self.options.get("img2img"):
            return "the request has an input image but this generator was not set up with img2img=true"
        if req.strength is None or not 0 <= float(req.strength) <= 1:
            return f"img2img strength must be in [0, 1], got {req.strength!r}"
        steps = req.params.get("num_inference_steps") or \
            inspect.signature(self.loaded.img2img.__call__).parameters["num_inference_steps"].default
        if 0 < float(req.strength) and int(steps * float(req.strength)) < 1:
            return (f"strength {req.strength} of {steps} steps runs no denoising step: use strength 0 to keep the "
                    "input, or more steps")
        return None

    def _call(self, reqs: list[GenerationRequest]) -> list[GenerationResult]:
        """One pipeline call for requests with the same params; one result per request."""
        t = torch()
        img2img = reqs[0].init_image is not None
        pipe = self.loaded.img2img if img2img else self.loaded.pipe
        accepted = inspect.signature(pipe.__call__).parameters
        kwargs = dict(reqs[0].params)
        images = [r.init_image.convert("RGB") for r in reqs] if img2img else []
        if img2img and {"width", "height"} & set(kwargs) and "width" not in accepted:
            # this img2img pipeline takes its size from the input: give it the input at the requested size
            size = (int(kwargs.pop("width", images[0].width)), int(kwargs.pop("height", images[0].height)))
            images = [im.resize(size, resample=3) if im.size != size else im for im in images]
        bad = sorted(k for k in kwargs if k in RESERVED or k not in accepted)
        if bad:
            why = f"{type(pipe).__name__} does not take {', '.join(bad)}" if not set(bad) & RESERVED else \
                f"{', '.join(sorted(set(bad) & RESERVED))} is set by the backend, not by params"
            return [GenerationResult(None, error=f"bad params: {why}")] * len(reqs)
        if reqs[0].negative_prompt is not None and "true_cfg_scale" in accepted:
            # Flux uses a negative prompt only with true CFG; without it the image would ignore the negative
            true_cfg = kwargs.get("true_cfg_scale", accepted["true_cfg_scale"].default)
            if not (isinstance(true_cfg, (int, float)) and true_cfg > 1):
                return [GenerationResult(None, error=f"{type(pipe).__name__} ignores a negative prompt unless "
                                         f"true_cfg_scale > 1 (it is {true_cfg}): set params.true_cfg_scale > 1, "
                                         "e.g. 4, for negative prompts on Flux")] * len(reqs)
        kwargs.update(prompt=[r.prompt for r in reqs], output_type="np",
                      # CPU generators: the same initial noise on every device
                      generator=[t.Generator("cpu").manual_seed(int(r.seed)) for r in reqs])
        if reqs[0].negative_prompt is not None:
            kwargs["negative_prompt"] = [r.negative_prompt for r in reqs]
        if img2img:
            kwargs.update(image=images, strength=float(reqs[0].strength))
        try:
            with t.inference_mode():
                # output_type "np" is the "pil" path minus its last step: the float array shows NaNs, which
                # the uint8 conversion would turn into black pixels
                arrays = pipe(**kwargs).images
        except Exception as exc:  # out of memory: the stage retries with half the batch; else these items fail
            if self._out_of_memory(exc):
                raise OutOfMemory(f"{len(reqs)} images of {kwargs.get('width', '?')}x{kwargs.get('height', '?')} "
                                  f"did not fit: {first_line(exc)}") from None
            return [GenerationResult(None, error=f"generation failed: {type(exc).__name__}: {first_line(exc)}")] \
                * len(reqs)
        return [self._result(pipe, a) for a in arrays]

    @classmethod
    def _result(cls, pipe, array: np.ndarray) -> GenerationResult:
        nonfinite = int((~np.isfinite(array)).sum())
        if nonfinite:
            return GenerationResult(None, error=f"NaN/inf in {nonfinite} of {array.size} output values (the "
                                    "latents overflowed: try dtype=bf16 or fp32)", extra={"nonfinite": nonfinite})
        image = pipe.image_processor.numpy_to_pil(array[None])[0]
        reason = blank_reason(image, tolerance=cls.blank_tolerance)
        return GenerationResult(None, error=reason) if reason else GenerationResult(image)

    @staticmethod
    def _out_of_memory(exc: BaseException) -> bool:
        t = torch()
        if isinstance(exc, t.cuda.OutOfMemoryError):
            t.cuda.empty_cache()  # give the half-size retry the memory this attempt held
            return True
        if isinstance(exc, RuntimeError) and "MPS backend out of memory" in str(exc):
            t.mps.empty_cache()
            return True
        return False

