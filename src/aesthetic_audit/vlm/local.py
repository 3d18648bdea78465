"""A Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint run locally on transformers, without torchvision.

Files
    ``model`` is a folder in the hub layout: ``config.json``, the weights (``model.safetensors``, or
    ``model.safetensors.index.json`` and its shards), and, unless ``processor`` names another folder,
    the processor files: ``tokenizer.json`` (or ``vocab.json`` + ``merges.txt``), ``tokenizer_config.json``,
    ``preprocessor_config.json`` and a chat template (``chat_template.jinja``, ``chat_template.json``
    or ``chat_template`` in ``tokenizer_config.json``, taken in that order, the processor's own files
    first). The study's judge is such a split: weights from its fine-tune, processor files from
    ``Qwen/Qwen3-VL-4B-Instruct``. A name that is no folder but looks like a hub id (``owner/name``)
    is fetched with ``huggingface_hub.snapshot_download`` when the model is first loaded or identified,
    never when the backend is built (from the local cache alone when HF_HUB_OFFLINE is set or the hub
    is unreachable). ``identity()`` holds the SHA-256 of every file read, by role (``model/...``,
    ``processor/...``), the dtype and the pixel budget; not the device or the folder's location.

Inputs, as the official processor builds them
    Each prompt becomes chat messages (an optional system turn as a string; one user turn of
    ``{"type": "image"}`` / ``{"type": "text"}`` parts in order) rendered with the tokenizer's own
    chat template (``add_generation_prompt=True``). Each image placeholder token is then written out
    as the number of ``<|image_pad|>`` tokens the processor inserts for that image (grid
    ``t * h * w // merge_size**2``, images in order) and the text is tokenised without added special
    tokens. Images go through :mod:`.qwen`'s preprocessing with the folder's
    ``preprocessor_config.json`` (``min_pixels`` / ``max_pixels`` options override its budget).
    Positions are the model's 3-D M-RoPE positions of the whole sequence (:func:`.qwen.mrope_positions`).

Reuse (why a judge's eleven questions about one image cost little more than one)
    1. Each distinct image of a call (the same ``Image`` object in several prompts) is preprocessed
       and run through the vision tower once; the tower runs on several images per call (``batch_size``
       images), each attending only within itself.
    2. Prompts that show the same images (same objects, same order) form a group; the longest common
       prefix of the group's token sequences (capped one token short of the shortest) runs once, with
       the prefixes of several groups batched into one forward (right-padded, padding masked), and its
       key/value cache is copied to each row of the group, which then runs only its own suffix.
       With an image-first template the image sits inside the shared prefix, so the decoder reads
       the image tokens once per image; with a text-first template (the study's judge prompt: the
       question, then the image) the rows part before the image: only the opening text is shared,
       and each row's suffix carries the image tokens, filled from the features computed once.
    3. Rows are batched ``batch_size`` to a forward, sorted by length; right padding is masked and
       every row keeps its own positions, so neither padding nor batching changes a row's result
       (beyond floating-point summation order). Qwen3-VL's deepstack features are added at their image
       tokens in whichever piece (prefix or suffix) holds them, exactly as in a full forward.
    The model's own ``forward`` / ``generate`` run every row whole, the vision tower included, so this
    module drives the model's parts (vision tower, decoder with a key/value cache, output head) itself.
    Attention is PyTorch's SDPA: the masked gaps that padded prefixes leave need a full attention mask.

Answers
    ``answer_probs`` reads the logits at each prompt's last token (the first reply token) and returns
    the softmax over the allowed answers' token ids (each answer must be one token of this tokenizer),
    with those logits and token strings. ``generate`` decodes greedily (``temperature=0``) or samples
    from ``softmax(logits / temperature)`` (per prompt a generator seeded from ``seed`` and the prompt's
    index in the call), stopping at the model's end-of-turn tokens; the sampling settings of the
    folder's ``generation_config.json`` (top-k, top-p) are not applied, as an endpoint given only a
    temperature would not. ``json_schema`` is ignored: a local model is not constrained, the caller
    parses the reply. Generation reuses the vision features but not prefixes (the labeller's prompts
    rarely share any).

Errors
    A bad item (an image that fails preprocessing, e.g. an aspect ratio above 200 or truncated data; a
    prompt the template cannot render) gives that item an error result, the rest go on. A wrong
    setting (unsupported model type, a missing chat template, an answer that is not one token) raises
    :class:`~aesthetic_audit.errors.ConfigError`; missing or unreadable files a ``WeightsError``.

Needs transformers >= 4.57 (the first with Qwen3-VL; tested with 4.57.6 and 5.24). The calls that
changed between 4.57 and 5 (the decoder's ``past_key_values`` / ``cache`` argument, the vision towers'
return values) are read from the installed version.
"""

from __future__ import annotations

import gc
import inspect
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigError, require
from ..scorers._torch import batched, dtype_name, resolve_device, torch, unique
from ..scorers._weights import (WeightsError, file_sha256, first_line, hub_constants, hub_offline_env, hub_problem,
                                read_json)
from ..ui import quiet_libraries
from .base import AnswerProbs, Prompt, Reply
from .qwen import QwenVLPreprocess, mrope_positions

VERSION = "1"  # bump when a change here changes answers
MIN_TRANSFORMERS = "4.57"  # Qwen3-VL's first release; tested on 4.57.6 and 5.24
FAMILIES = {"qwen2_vl": "Qwen2VLForConditionalGeneration",
            "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
            "qwen3_vl": "Qwen3VLForConditionalGeneration"}
WEIGHTS_INDEX = "model.safetensors.index.json"
# Files AutoTokenizer reads where present; tokenizer.json or vocab.json + merges.txt must be there.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt"]
DTYPES = ("auto", "fp32", "bf16", "fp16")


@dataclass
class _Row:
    """One prompt ready for the decoder: its token ids, positions and distinct-image indices in order."""
    index: int
    ids: list[int]
    positions: np.ndarray  # [3, len(ids)]
    images: tuple[int, ...]


@dataclass
class _Piece:
    """A slice [start:stop] of a row's sequence, with the vision features of the image tokens inside it."""
    ids: list[int]
    positions: np.ndarray
    features: Any = None  # [image tokens in the slice, hidden] or None
    deepstack: tuple[Any, ...] = ()


class LocalVLM:
    """The local transformers backend (see the module doc). Building it loads and reads nothing."""

    def __init__(self, model: str, *, processor: str | None = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 16, min_pixels: int | None = None, max_pixels: int | None = None):
        if not isinstance(model, str) or not model.strip():
            raise ConfigError("model: a model folder (or hub id) is required")
        if processor is not None and (not isinstance(processor, str) or not processor.strip()):
            raise ConfigError("processor: a folder (or hub id) holding the tokenizer, chat template and "
                              "preprocessor_config.json, or leave it out")
        if dtype is None:
            dtype = "auto"
        elif dtype not in DTYPES:
            dtype = dtype_name(dtype)  # the aliases (float32, bfloat16, ...); anything else is an error
        if not isinstance(device, str) or device.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
            raise ConfigError(f"device must be auto, cpu, cuda[:N] or mps, got {device!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        for key, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
            raise ConfigError(f"min_pixels ({min_pixels}) is larger than max_pixels ({max_pixels})")
        self.model_option, self.processor_option = model, processor
        self.device_option, self.dtype_option, self.batch_size = device, dtype, batch_size
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self._folders: dict[str, Path] = {}
        self._identity: dict[str, Any] | None = None
        self.model: Any = None

    # -- files ------------------------------------------------------------------------------------
    def _folder(self, role: str) -> Path:
        """The local folder of ``model`` or ``processor`` (the model's own when no processor is given)."""
        spec = self.processor_option if role == "processor" and self.processor_option else self.model_option
        if spec not in self._folders:
            path = Path(spec).expanduser()
            if path.is_dir():
                self._folders[spec] = path
            elif spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
                self._folders[spec] = snapshot(spec)
            else:
                raise ConfigError(f"{role} {spec!r}: no such folder (give a model folder or a hub id owner/name)")
        return self._folders[spec]

    def files(self) -> dict[str, Path]:
        """Every file the backend reads, ``{role/name: path}``; all missing ones named in one error."""
        model_dir, proc_dir = self._folder("model"), self._folder("processor")
        found: dict[str, Path] = {}
        missing: list[str] = []

        def need(role: str, folder: Path, name: str) -> None:
            if (folder / name).is_file():
                found[f"{role}/{name}"] = folder / name
            else:
                missing.append(f"{name} in {folder}")

        need("model", model_dir, "config.json")
        if (model_dir / WEIGHTS_INDEX).is_file():
            need("model", model_dir, WEIGHTS_INDEX)
            index = read_json(model_dir / WEIGHTS_INDEX)
            for shard in sorted(set((index.get("weight_map") or {}).values())):
                need("model", model_dir, shard)
        else:
            need("model", model_dir, "model.safetensors")
        if (model_dir / "generation_config.json").is_file():  # from_pretrained reads it (end-of-turn ids)
            need("model", model_dir, "generation_config.json")
        for name in TOKENIZER_FILES + TEMPLATE_FILES:
            if (proc_dir / name).is_file():
                found[f"processor/{name}"] = proc_dir / name
        has_bpe_files = {"processor/vocab.json", "processor/merges.txt"} <= set(found)
        if "processor/tokenizer.json" not in found and not has_bpe_files:
            missing.append(f"tokenizer.json in {proc_dir}")
        for name in ("tokenizer_config.json", "preprocessor_config.json"):
            need("processor", proc_dir, name)
        if missing:
            hint = ("" if self.processor_option else
                    "; a fine-tune that ships weights only needs processor= the base model's folder or hub id")
            raise WeightsError(f"missing model files: {', '.join(missing)}{hint}")
        return found

    def _model_type(self, config: dict[str, Any]) -> str:
        model_type = config.get("model_type")
        if model_type not in FAMILIES:
            raise ConfigError(f"model type {model_type!r} (config.json of {self.model_option}) is not supported by "
                              f"the local VLM backend; supported: {', '.join(FAMILIES)}")
        return model_type

    def _preprocess(self, files: dict[str, Path]) -> QwenVLPreprocess:
        return QwenVLPreprocess.from_config(read_json(files["processor/preprocessor_config.json"]),
                                            min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def _dtype(self) -> str:
        if self.dtype_option != "auto":
            return self.dtype_option
        if resolve_device(self.device_option).startswith("cuda"):
            return "bf16" if torch().cuda.is_bf16_supported() else "fp16"
        return "fp32"  # CPUs have no fast half precision, and it would blur the answers

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            files = self.files()
            preprocess = self._preprocess(files)
            self._identity = {
                "backend": "transformers", "version": VERSION,
                "model_type": self._model_type(read_json(files["model/config.json"])),
                "files": {key: file_sha256(path) for key, path in sorted(files.items())},
                "dtype": self._dtype(), "min_pixels": preprocess.min_pixels, "max_pixels": preprocess.max_pixels}
        return dict(self._identity)

    # -- loading ----------------------------------------------------------------------------------
    def load(self) -> None:
        if self.model is not None:
            return
        transformers = require("transformers", "models", "the local VLM backend")
        from packaging.version import Version

        if Version(transformers.__version__) < Version(MIN_TRANSFORMERS):
            raise ConfigError(f"the local VLM backend needs transformers >= {MIN_TRANSFORMERS} (found "
                              f"{transformers.__version__}): pip install -U 'transformers>={MIN_TRANSFORMERS}'")
        t = torch()
        files = self.files()
        config = read_json(files["model/config.json"])
        model_type = self._model_type(config)
        self.preprocess = self._preprocess(files)
        self.template = chat_template(files)
        self.device, self.dtype = resolve_device(self.device_option), getattr(t, {
            "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[self._dtype()])
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(self._folder("processor")),
                                                                        local_files_only=True)
            cls = getattr(transformers, FAMILIES[model_type])
            with quiet_libraries():
                model = cls.from_pretrained(str(self._folder("model")), dtype=self.dtype,
                                            attn_implementation="sdpa", local_files_only=True)
        except Exception as exc:  # damaged or mismatched files: this backend fails with their names, not the run
            raise WeightsError(f"cannot load {model_type} from {self._folder('model')}: {type(exc).__name__}: "
                               f"{first_line(exc)}") from None
        try:
            model.to(self.device).eval()
        except (RuntimeError, AssertionError) as exc:  # no such device (torch says so in one of these)
            raise ConfigError(f"cannot put the model on device {self.device!r}: {first_line(exc)}") from None
        self._setup(model)

    def _setup(self, model: Any) -> None:
        """Token ids and the decoder's calling convention, checked against the tokenizer."""
        tok, config = self.tokenizer, model.config
        self.image_id = int(config.image_token_id)
        self.image_token = tok.convert_ids_to_tokens(self.image_id)
        if tok.convert_tokens_to_ids(self.image_token) != self.image_id or not self.image_token.startswith("<|"):
            raise ConfigError(f"the tokenizer has no image token at config.json's image_token_id {self.image_id} "
                              f"(found {self.image_token!r}): the tokenizer does not belong to this model")
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_id = 0 if pad is None or pad == self.image_id else int(pad)
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos_ids |= {i for i in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"))
                         if isinstance(i, int) and i != tok.unk_token_id}
        self.vocab = int(model.lm_head.out_features)
        lm = model.model.language_model
        params = inspect.signature(lm.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.deepstack = "deepstack_visual_embeds" in params
        self.model = model

    def unload(self) -> None:
        if self.model is not None:
            self.model = None
            gc.collect()
            if torch().cuda.is_available():
                torch().cuda.empty_cache()

    # -- public API -------------------------------------------------------------------------------
    def answer_probs(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[AnswerProbs]:
        answers = tuple(answers)
        if not answers or len(set(answers)) != len(answers) or not all(isinstance(a, str) for a in answers):
            raise ConfigError(f"answers must be distinct strings, got {answers!r}")
        self.load()
        t = torch()
        ids = [self.answer_token(a) for a in answers]
        tokens = tuple(self.tokenizer.convert_ids_to_tokens(ids))
        rows, errors, features = self._prepare(prompts)
        states = self._last_states(rows, features, errors)
        done = sorted(states)
        logits: dict[int, Any] = {}
        with t.inference_mode():
            for chunk in batched(done, self.batch_size):  # the full head, as the model computes its logits
                picked = self.model.lm_head(t.stack([states[k] for k in chunk]))[:, ids].double().cpu()
                logits.update(zip(chunk, picked))
        results: list[AnswerProbs] = []
        for k in range(len(prompts)):
            if k in errors:
                results.append(AnswerProbs(None, answers, tokens, error=errors[k]))
            else:
                probs = t.softmax(logits[k], dim=0)
                results.append(AnswerProbs(tuple(float(p) for p in probs), answers, tokens,
                                           logits=tuple(float(x) for x in logits[k])))
        return results

    def generate(self, prompts: Sequence[Prompt], *, max_tokens: int = 64, temperature: float = 0.0,
                 json_schema: dict[str, Any] | None = None, seed: int | None = None) -> list[Reply]:
        """Reply texts (``json_schema`` is ignored here: see the module doc)."""
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature!r}")
        self.load()
        rows, errors, features = self._prepare(prompts)
        texts: dict[int, str] = {}
        for chunk in batched(sorted(rows, key=lambda r: -len(r.ids)), self.batch_size):
            try:
                texts.update(self._generate(chunk, features, max_tokens, temperature, seed))
            except Exception as exc:  # a model failure (e.g. out of memory) fails these prompts, not the call
                errors.update({r.index: f"generation failed: {type(exc).__name__}: {first_line(exc)}" for r in chunk})
        return [Reply(None, error=errors[k]) if k in errors else Reply(texts[k]) for k in range(len(prompts))]

    def answer_token(self, answer: str) -> int:
        ids = self.tokenizer.encode(answer, add_special_tokens=False)
        if len(ids) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            raise ConfigError(f"answer {answer!r} is {len(ids)} tokens for this tokenizer ({pieces}); each allowed "
                              "answer must be a single token")
        if ids[0] >= self.vocab:
            raise ConfigError(f"answer {answer!r} has token id {ids[0]}, outside the model's {self.vocab} logits")
        return int(ids[0])

    # -- inputs -----------------------------------------------------------------------------------
    def chat_text(self, prompt: Prompt) -> str:
        """The prompt rendered by the chat template, one image placeholder per image (not yet expanded)."""
        content = [{"type": "image"} if isinstance(p, Image.Image) else {"type": "text", "text": p}
                   for p in prompt.parts]
        messages = ([{"role": "system", "content": prompt.system}] if prompt.system is not None else [])
        messages.append({"role": "user", "content": content})
        return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=True)

    def expand(self, text: str, counts: Sequence[int]) -> str:
        """Each image placeholder written out as its image's number of image tokens, in order."""
        pieces = text.split(self.image_token)
        if len(pieces) != len(counts) + 1:
            raise ValueError(f"the chat text holds {len(pieces) - 1} image tokens for {len(counts)} images (does "
                             f"the prompt text contain {self.image_token}, or does the template drop images?)")
        out = [pieces[0]]
        for n, piece in zip(counts, pieces[1:]):
            out += [self.image_token * n, piece]
        return "".join(out)

    def _prepare(self, prompts: Sequence[Prompt]) -> tuple[list[_Row], dict[int, str], dict[int, Any]]:
        """Token rows of the prompts that can run, errors of those that cannot, and the vision features
        (merged, deepstack) of every distinct image the rows show, keyed by distinct-image index."""
        errors: dict[int, str] = {}
        shown = [[p for p in prompt.parts if isinstance(p, Image.Image)] if isinstance(prompt, Prompt) else []
                 for prompt in prompts]
        images, where = unique([im for ims in shown for im in ims])
        prepared: dict[int, tuple[np.ndarray, tuple[int, int, int]]] = {}
        bad: dict[int, str] = {}
        for i, image in enumerate(images):
            try:
                prepared[i] = self.preprocess.pil(image)
            except Exception as exc:  # any decoding or size failure is this image's, not the call's
                bad[i] = f"image preprocessing failed: {type(exc).__name__}: {first_line(exc)}"
        texts: dict[int, str] = {}
        image_index: dict[int, tuple[int, ...]] = {}
        offset = 0
        for k, prompt in enumerate(prompts):
            mine = tuple(where[offset:offset + len(shown[k])])
            offset += len(shown[k])
            image_index[k] = mine
            try:
                if not isinstance(prompt, Prompt):
                    raise ValueError(f"not a Prompt: {type(prompt).__name__}")
                if any(not isinstance(p, (str, Image.Image)) for p in prompt.parts):
                    raise ValueError("prompt parts must be text or PIL images")
                failed = next((bad[i] for i in mine if i in bad), None)
                if failed:
                    errors[k] = failed
                    continue
                texts[k] = self.expand(self.chat_text(prompt),
                                       [self.preprocess.image_tokens(prepared[i][1]) for i in mine])
            except Exception as exc:  # a template or prompt problem fails this prompt only
                errors[k] = f"prompt {k}: {type(exc).__name__}: {first_line(exc)}"
        order = sorted(texts)
        encoded = self.tokenizer([texts[k] for k in order], add_special_tokens=False)["input_ids"] if order else []
        rows = []
        for k, ids in zip(order, encoded):
            grids = [prepared[i][1] for i in image_index[k]]
            try:
                positions = mrope_positions(ids, self.image_id, grids, self.preprocess.merge_size)
            except ValueError as exc:  # the text tokenised into image tokens its images do not account for
                errors[k] = f"prompt {k}: {exc}"
                continue
            rows.append(_Row(k, list(ids), positions, image_index[k]))
        features = self._encode(sorted({i for r in rows for i in r.images}), prepared)
        failed_images = {i: msg for i, msg in features.items() if isinstance(msg, str)}
        for r in rows:
            msg = next((failed_images[i] for i in r.images if i in failed_images), None)
            if msg:
                errors[r.index] = msg
        return [r for r in rows if r.index not in errors], errors, features

    def _encode(self, needed: list[int], prepared: dict[int, tuple[np.ndarray, tuple[int, int, int]]]
                ) -> dict[int, Any]:
        """Vision features per distinct image, ``batch_size`` images per vision-tower call; an image whose
        batch fails is retried alone, and its error message stands in for its features."""
        out: dict[int, Any] = {}
        for chunk in batched(needed, self.batch_size):
            try:
                out.update(zip(chunk, self._vision([prepared[i] for i in chunk])))
            except Exception:  # find the image that broke the batch
                for i in chunk:
                    try:
                        out[i] = self._vision([prepared[i]])[0]
                    except Exception as exc:  # this image only
                        out[i] = f"vision tower failed: {type(exc).__name__}: {first_line(exc)}"
        return out

    def _vision(self, items: list[tuple[np.ndarray, tuple[int, int, int]]]) -> list[tuple[Any, tuple[Any, ...]]]:
        t = torch()
        with t.inference_mode():
            x = t.from_numpy(np.concatenate([p for p, _ in items])).to(device=self.device, dtype=self.dtype)
            grid = t.tensor([g for _, g in items], dtype=t.long, device=self.device)
            merged, deep = vision_outputs(self.model.model.visual(x, grid_thw=grid))
            sizes = [self.preprocess.image_tokens(g) for _, g in items]
            merged = merged.split(sizes)
            deep = [f.split(sizes) for f in deep]
        return [(merged[j], tuple(d[j] for d in deep)) for j in range(len(items))]

    # -- the decoder ------------------------------------------------------------------------------
    def _piece(self, row: _Row, features: dict[int, Any], start: int, stop: int) -> _Piece:
        """Tokens [start:stop] of a row with the features of the image tokens among them."""
        ids = row.ids[start:stop]
        if self.image_id not in ids:
            return _Piece(ids, row.positions[:, start:stop])
        t = torch()
        merged = t.cat([features[i][0] for i in row.images])
        deep = [t.cat(layer) for layer in zip(*(features[i][1] for i in row.images))]
        before = row.ids[:start].count(self.image_id)
        inside = before + ids.count(self.image_id)
        return _Piece(ids, row.positions[:, start:stop], merged[before:inside],
                      tuple(d[before:inside] for d in deep))

    def _forward(self, pieces: list[_Piece], cache: Any = None, past_mask: Any = None, keep: bool = False):
        """One decoder forward of right-padded pieces after an optional cache (and its mask).

        Returns the final hidden state at each piece's last token [B, hidden], the cache (when
        ``keep``) and the attention mask over cache + pieces.
        """
        t = torch()
        lm = self.model.model.language_model
        n = len(pieces)
        length = max(len(p.ids) for p in pieces)
        ids = t.full((n, length), self.pad_id, dtype=t.long)
        mask = t.zeros((n, length), dtype=t.long)
        positions = t.zeros((3, n, length), dtype=t.long)
        for k, p in enumerate(pieces):
            ids[k, :len(p.ids)] = t.tensor(p.ids, dtype=t.long)
            mask[k, :len(p.ids)] = 1
            positions[:, k, :len(p.ids)] = t.from_numpy(p.positions)
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        embeds = lm.embed_tokens(ids)
        extra: dict[str, Any] = {}
        image_mask = ids == self.image_id  # the pad id is never the image id
        with_images = [p for p in pieces if p.features is not None]
        if with_images:
            embeds[image_mask] = t.cat([p.features for p in with_images]).to(embeds.dtype)
            if self.deepstack and with_images[0].deepstack:
                extra = {"visual_pos_masks": image_mask,
                         "deepstack_visual_embeds": [t.cat(layer) for layer in
                                                     zip(*(p.deepstack for p in with_images))]}
        full_mask = mask if past_mask is None else t.cat([past_mask, mask], dim=1)
        if keep and cache is None:
            cache = require("transformers", "models", "the local VLM backend").DynamicCache()
        out = lm(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions, use_cache=keep,
                 **{self.cache_arg: cache}, **extra)
        last = mask.sum(dim=1) - 1
        hidden = out.last_hidden_state[t.arange(n, device=self.device), last]
        return hidden, (getattr(out, self.cache_arg, None) if keep else None), full_mask

    def _last_states(self, rows: list[_Row], features: dict[int, Any], errors: dict[int, str]) -> dict[int, Any]:
        """The final hidden state at every row's last token, reusing shared prefixes (see the module doc).
        A failure of a group's forwards fails that group's prompts (recorded in ``errors``)."""
        groups: dict[tuple[int, ...], list[_Row]] = {}
        for row in rows:
            groups.setdefault(row.images, []).append(row)
        plans = [(shared_prefix([r.ids for r in members]) if len(members) > 1 else 0, members)
                 for members in groups.values()]
        states: dict[int, Any] = {}
        t = torch()
        with t.inference_mode():
            try:
                states.update(self._run_plans(plans, features))
            except Exception:  # retry group by group, so one failing group does not take the others down
                for plan in plans:
                    try:
                        states.update(self._run_plans([plan], features))
                    except Exception as exc:  # this group's prompts fail
                        errors.update({r.index: f"model forward failed: {type(exc).__name__}: {first_line(exc)}"
                                       for r in plan[1]})
        return states

    def _run_plans(self, plans: list[tuple[int, list[_Row]]], features: dict[int, Any]) -> dict[int, Any]:
        t = torch()
        states: dict[int, Any] = {}
        alone = [r for prefix, members in plans if prefix == 0 for r in members]
        for chunk in batched(sorted(alone, key=lambda r: -len(r.ids)), self.batch_size):
            hidden, _, _ = self._forward([self._piece(r, features, 0, len(r.ids)) for r in chunk])
            states.update({r.index: h for r, h in zip(chunk, hidden)})
        shared = sorted((p for p in plans if p[0] > 0), key=lambda p: -p[0])
        for chunk in batched(shared, self.batch_size):
            _, cache, prefix_mask = self._forward(
                [self._piece(members[0], features, 0, prefix) for prefix, members in chunk], keep=True)
            keys_values = cache_tensors(cache)
            todo = sorted(((g, r) for g, (_, members) in enumerate(chunk) for r in members),
                          key=lambda gr: -(len(gr[1].ids) - chunk[gr[0]][0]))
            for sub in batched(todo, self.batch_size):
                pick = t.tensor([g for g, _ in sub], device=self.device)
                hidden, _, _ = self._forward([self._piece(r, features, chunk[g][0], len(r.ids)) for g, r in sub],
                                             cache=select_cache(keys_values, pick),
                                             past_mask=prefix_mask.index_select(0, pick))
                states.update({r.index: h for (_, r), h in zip(sub, hidden)})
        return states

    def _generate(self, rows: list[_Row], features: dict[int, Any], max_tokens: int, temperature: float,
                  seed: int | None) -> dict[int, str]:
        t = torch()
        generators = [t.Generator() for _ in rows]
        for g, r in zip(generators, rows):
            if seed is None:
                g.seed()
            else:  # per prompt, so a prompt's sample does not depend on which others share its batch
                g.manual_seed(random.Random(f"{seed}/{r.index}").getrandbits(63))
        out: list[list[int]] = [[] for _ in rows]
        done = [False] * len(rows)
        next_position = [int(r.positions.max()) + 1 for r in rows]
        with t.inference_mode():
            hidden, cache, mask = self._forward([self._piece(r, features, 0, len(r.ids)) for r in rows], keep=True)
            for step in range(max_tokens):
                logits = self.model.lm_head(hidden).float().cpu()
                for k in range(len(rows)):
                    if done[k]:
                        continue
                    if temperature == 0:
                        token = int(logits[k].argmax())
                    else:
                        probs = t.softmax(logits[k] / temperature, dim=0)
                        token = int(t.multinomial(probs, 1, generator=generators[k]))
                    if token in self.eos_ids:
                        done[k] = True
                    else:
                        out[k].append(token)
                if all(done) or step == max_tokens - 1:
                    break
                pieces = [_Piece([out[k][-1] if not done[k] else self.pad_id],
                                 np.full((3, 1), next_position[k] + step, dtype=np.int64)) for k in range(len(rows))]
                hidden, cache, mask = self._forward(pieces, cache=cache, past_mask=mask, keep=True)
        return {r.index: self.tokenizer.decode(ids, skip_special_tokens=True) for r, ids in zip(rows, out)}


def shared_prefix(rows: Sequence[Sequence[int]]) -> int:
    """The length of the longest common prefix of the rows, at most one token short of the shortest row
    (every row keeps at least one token of its own to read its answer from)."""
    shortest = min(len(r) for r in rows)
    first = np.asarray(rows[0][:shortest])
    common = shortest
    for row in rows[1:]:
        differ = np.flatnonzero(np.asarray(row[:common]) != first[:common])
        if differ.size:
            common = int(differ[0])
    return min(common, shortest - 1)


def vision_outputs(out: Any) -> tuple[Any, list[Any]]:
    """(merged features, deepstack features) from a vision tower's output: an output object (transformers
    5), a (merged, deepstack list) tuple (Qwen3-VL on transformers 4.57) or the merged tensor (Qwen2-VL
    and Qwen2.5-VL on transformers 4)."""
    if hasattr(out, "pooler_output"):
        return out.pooler_output, list(getattr(out, "deepstack_features", None) or [])
    if isinstance(out, tuple):
        return out[0], list(out[1] or [])
    return out, []


def cache_tensors(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) per layer of a transformers cache."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def select_cache(keys_values: list[tuple[Any, Any]], rows: Any) -> Any:
    """A fresh cache holding the given batch rows of every layer's keys and values (a row may repeat)."""
    cache = require("transformers", "models", "the local VLM backend").DynamicCache()
    for layer, (keys, values) in enumerate(keys_values):
        cache.update(keys.index_select(0, rows), values.index_select(0, rows), layer)
    return cache


def chat_template(files: dict[str, Path]) -> str:
    """The processor's chat template: chat_template.jinja, chat_template.json, then tokenizer_config.json."""
    if "processor/chat_template.jinja" in files:
        return files["processor/chat_template.jinja"].read_text(encoding="utf-8")
    if "processor/chat_template.json" in files:
        template = read_json(files["processor/chat_template.json"]).get("chat_template")
        if isinstance(template, str):
            return template
    template = read_json(files["processor/tokenizer_config.json"]).get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((x.get("template") for x in template if x.get("name") == "default"), None)
    if not isinstance(template, str) or not template.strip():
        folder = files["processor/tokenizer_config.json"].parent
        raise ConfigError(f"no chat template in {folder} (chat_template.jinja, chat_template.json or chat_template "
                          "in tokenizer_config.json): pass processor= a folder that has one, such as the base model's")
    return template


def snapshot(repo: str) -> Path:
    """A hub repository's model and processor files, from the local Hugging Face cache or downloaded."""
    hub = require("huggingface_hub", "models", "loading a model from the Hugging Face hub")
    offline = None
    if hub_offline_env() or hub_constants().HF_HUB_OFFLINE:
        offline = "HF_HUB_OFFLINE is set"
    elif (problem := hub_problem(hub_constants().ENDPOINT)) is not None:
        offline = f"the hub is unreachable: {problem}"
    try:
        return Path(hub.snapshot_download(repo, allow_patterns=HUB_PATTERNS, local_files_only=offline is not None))
    except Exception as exc:  # the hub library raises many types: one line naming the repo either way
        reason = f"{offline}; not in the local cache" if offline else f"{type(exc).__name__}: {first_line(exc)}"
        raise WeightsError(f"cannot get {repo} from the Hugging Face hub ({reason}). Fetch it where the hub is "
                           f"reachable with `hf download {repo}`, or pass a local folder") from None
