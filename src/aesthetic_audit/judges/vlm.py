"""The VLM judge: a vision-language model asked, per image and dimension, for a level 0 / 1 / 2.

J(I, d) = 0·P0 + 1·P1 + 2·P2, where P is the softmax of the logits of the answer tokens "0", "1", "2"
at the answer position (design §6); the record also keeps the three probabilities, the argmax and the
answer tokens read. The model runs locally on transformers (a Qwen2-VL / Qwen2.5-VL / Qwen3-VL folder,
such as the study's published judge) or behind any OpenAI-compatible endpoint (``url``), which returns
top log-probabilities or, failing that, sampled answers (then ``discrete`` is recorded).

Templates (option ``template``):

``study`` (default)
    The study's published judge prompt, so a judge fine-tuned on it reads what it was trained on: one
    user turn, the instruction first and the image after it, no system turn. The instruction names the
    dimension by its key and gives the guideline as a Python dict literal of the rubric's options, each
    ``"<Option>: <level>"`` mapped to ``": <Description>"`` in the guideline file's row order (the
    study formats it that way; with a VisionReward guideline CSV as ``rubric_file`` this is the exact
    prompt, with the catalogue's three-level rubric the options are named after the levels). The image
    is squashed to ``image_size`` x ``image_size`` (512) with bicubic resampling, as the study does.
``catalogue``
    The image first, then the dimension's display name and its three rubric levels. Every question
    about one image then opens with the same tokens, image included, so a local model runs that
    prefix once per image and only the dimension's question per dimension.
a file path
    Your own template: text with exactly one ``{image}`` marker and any of the placeholders ``{key}``,
    ``{name}``, ``{rubric_0}``, ``{rubric_1}``, ``{rubric_2}``, ``{guideline}`` (the study's dict
    form) and ``{options}`` (one ``Option (level): Description`` per line).

``mode: checklist`` asks VisionReward-style yes/no questions instead, one per rubric option ("does
this describe the image?"); each question's P(yes) = softmax over the "Yes" / "No" tokens is recorded,
and J(I, d) is the expected level under the options' normalised P(yes).
"""

from __future__ import annotations

from pathlib import Path
from string import Formatter
from typing import Any, Sequence

from PIL import Image

from ..errors import ConfigError, InputError
from ..hashing import spec_hash
from ..images.decode import to_rgb
from ..registry import register
from ..textio import read_text
from ..vlm.base import AnswerProbs, Prompt, VLMBackend, make_backend
from .base import Judge, JudgeResult

LEVEL_ANSWERS = ("0", "1", "2")
CHECK_ANSWERS = ("Yes", "No")
LEVEL_NAMES = {2: "Conventional", 1: "Neutral", 0: "Anti-aesthetic"}
PLACEHOLDERS = {"image", "key", "name", "rubric_0", "rubric_1", "rubric_2", "guideline", "options"}
# Options of the judge itself; every other option configures the backend (see vlm.base.make_backend).
JUDGE_OPTIONS = ("template", "image_size", "dims", "mode")
# Backend options that change how fast, not what: left out of record keys.
RUNTIME_OPTIONS = ("device", "batch_size", "concurrency", "timeout_s", "retries", "api_key_env")


def study_guideline(options: Sequence[dict[str, Any]]) -> str:
    """The guideline as the study's judge prompt writes it: a Python dict literal (its ``repr``) from
    ``"<Option>: <level>"`` to ``": <Description>"``. An empty description reads ``nan``, as the
    study's table-reading code renders a missing cell; a repeated key keeps its last row."""
    guide = {f"{o['option']}: {o['level']}": ": " + (o["description"] or "nan") for o in options}
    return repr(guide)


def catalogue_options(rubric: dict[int, str]) -> list[dict[str, Any]]:
    """A three-level rubric as options, conventional first (as VisionReward's files list them)."""
    return [{"option": LEVEL_NAMES[lvl], "level": lvl, "description": rubric[lvl]} for lvl in (2, 1, 0)]


class _Template:
    """Renders one dimension's question as prompt parts (text and the image in order)."""

    def __init__(self, spec: str):
        self.spec = spec
        if spec == "study":
            self.text = ("Please rate this image for its {key} quality. Use this guideline {guideline}. "
                         "Response a single number.{image}")
        elif spec == "catalogue":
            self.text = ("{image}Rate the {name} of this image on a scale from 0 to 2 using this rubric.\n"
                         "2: {rubric_2}\n1: {rubric_1}\n0: {rubric_0}\nAnswer with a single digit: 0, 1 or 2.")
        elif not Path(spec).is_file():
            raise InputError(f"template {spec!r}: neither 'study', 'catalogue' nor a template file that exists")
        else:
            self.text = read_text(Path(spec), "judge template")
        try:
            fields = [f for _, f, _, _ in Formatter().parse(self.text) if f is not None]
        except ValueError as exc:
            raise ConfigError(f"judge template {spec}: {exc}") from None
        unknown = sorted(set(fields) - PLACEHOLDERS)
        if unknown:
            raise ConfigError(f"judge template {spec}: unknown placeholder {unknown[0]!r}; "
                              f"known: {', '.join(sorted(PLACEHOLDERS))}")
        if fields.count("image") != 1:
            raise ConfigError(f"judge template {spec}: needs exactly one {{image}} marker, found {fields.count('image')}")

    def render(self, key: str, info: dict[str, Any]) -> tuple[str, str]:
        """(text before the image, text after it)."""
        rubric = info["rubric"]
        options = info["options"]
        values = {"key": key, "name": info["name"], "guideline": study_guideline(options),
                  "rubric_0": rubric[0], "rubric_1": rubric[1], "rubric_2": rubric[2],
                  "options": "\n".join(f"{o['option']} ({o['level']}): {o['description']}" for o in options),
                  "image": "\x00"}
        before, after = self.text.format_map(values).split("\x00")
        return before, after


@register("judges")
class VLMJudge(Judge):
    name = "vlm"
    description = ("a vision-language model asked for 0/1/2 per dimension (local Qwen-VL folder or an "
                   "OpenAI-compatible endpoint); J = expected level")
    version = "1"

    def __init__(self, *, template: str = "study", image_size: int | None = 512, dims: Sequence[str] | None = None,
                 mode: str = "levels", **backend: Any):
        if mode not in ("levels", "checklist"):
            raise ConfigError(f"mode must be 'levels' or 'checklist', not {mode!r}")
        if image_size is not None and (not isinstance(image_size, int) or image_size < 28):
            raise ConfigError(f"image_size must be an integer of at least 28 (or null to keep sizes), not {image_size!r}")
        if dims is not None and (isinstance(dims, str) or not all(isinstance(d, str) for d in dims)):
            raise ConfigError(f"dims must be a list of dimension keys, not {dims!r}")
        super().__init__(template=template, image_size=image_size, dims=list(dims) if dims else None, mode=mode,
                         **backend)
        self.template = _Template(template if template in ("study", "catalogue") else str(Path(template).resolve()))
        self.image_size, self.mode = image_size, mode
        self.backend: VLMBackend = make_backend(backend)
        self.rubrics: dict[str, dict[str, Any]] = {}
        self.covers: tuple[str, ...] = ()

    def prepare(self, catalogue, rubric_options: dict[str, list[dict[str, Any]]] | None = None) -> None:
        """Bind the rubrics the questions are asked with: the catalogue's levels, and the guideline
        file's option rows where a ``rubric_file`` gave them. Judges the study's 11 dimensions unless
        ``dims`` says otherwise."""
        dims = self.options["dims"] or catalogue.study_keys
        for key in dims:
            dim = catalogue[key]  # an unknown key is a ConfigError naming it
            options = (rubric_options or {}).get(key) or catalogue_options(dim.rubric)
            self.rubrics[key] = {"name": dim.name, "rubric": dict(dim.rubric), "options": options}
        self.covers = tuple(dims)

    def identity(self) -> dict[str, Any]:
        if not self.rubrics:
            raise ConfigError("the VLM judge has no dimensions bound (call prepare(catalogue) first)")
        questions = {key: self._questions(key) for key in self.covers}
        return {"name": self.name, "version": self.version, "mode": self.mode, "image_size": self.image_size,
                "template": self.template.text, "questions": spec_hash(questions),
                "backend": self.backend.identity()}

    def describe(self) -> str:
        """The model as the user named it (a folder, a hub id, or a served name at an endpoint)."""
        where = f" at {self.options['url']}" if self.options.get("url") else ""
        return f"vlm ({self.options.get('model', '?')}{where}; template {self.options['template']}, {self.mode})"

    def _questions(self, key: str) -> list[tuple[str, str]]:
        """One dimension's questions as (before image, after image) text: one in levels mode, one per
        option in checklist mode."""
        info = self.rubrics[key]
        if self.mode == "levels":
            return [self.template.render(key, info)]
        return [("", f"Look at the {info['name'].lower()} of this image. Does this describe it: "
                     f"\"{o['option']}: {o['description']}\"? Answer Yes or No.") for o in info["options"]]

    def _image(self, img: Image.Image) -> Image.Image:
        img = to_rgb(img)
        if self.image_size:
            img = img.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return img

    def load(self) -> None:
        self.backend.load()

    def unload(self) -> None:
        self.backend.unload()

    def judge(self, images: Sequence[Image.Image], dims: Sequence[str]) -> list[JudgeResult]:
        if not self.rubrics:
            raise ConfigError("the VLM judge has no dimensions bound (call prepare(catalogue) first)")
        prompts, index = [], []  # index: (image number, dim, question number)
        ready: dict[int, Image.Image] = {}
        errors: dict[int, str] = {}
        for i, img in enumerate(images):
            try:
                ready[i] = self._image(img)
            except (OSError, ValueError, InputError) as exc:
                errors[i] = f"cannot prepare the image: {exc}"
        for i, img in ready.items():
            for key in self.covers:
                for q, (before, after) in enumerate(self._questions(key)):
                    parts = tuple(p for p in (before, img, after) if not isinstance(p, str) or p)
                    prompts.append(Prompt(parts))
                    index.append((i, key, q))
        answers = LEVEL_ANSWERS if self.mode == "levels" else CHECK_ANSWERS
        results = self.backend.answer_probs(prompts, answers) if prompts else []
        per_image: dict[int, dict[str, list[AnswerProbs]]] = {}
        for (i, key, _), res in zip(index, results):
            per_image.setdefault(i, {}).setdefault(key, []).append(res)
        out = []
        for i in range(len(images)):
            if i in errors:
                out.append(JudgeResult({}, error=errors[i]))
                continue
            out.append(self._result(per_image.get(i, {}), dims))
        return out

    def _result(self, answered: dict[str, list[AnswerProbs]], dims: Sequence[str]) -> JudgeResult:
        failed = [(key, r.error) for key, rs in answered.items() for r in rs if not r.ok]
        if failed:
            key, error = failed[0]
            more = f" (and {len(failed) - 1} more questions)" if len(failed) > 1 else ""
            return JudgeResult({}, error=f"{key}: {error}{more}")
        scores: dict[str, float | None] = {d: None for d in dims}
        extra: dict[str, Any] = {"probs": {}, "argmax": {}, "judge_desc": self.describe()}
        discrete, tokens = False, set()
        for key, rs in answered.items():
            discrete |= any(r.discrete for r in rs)
            tokens.update(t for r in rs for t in r.tokens)
            if self.mode == "levels":
                p = list(rs[0].probs)
                scores[key] = sum(level * pk for level, pk in zip((0, 1, 2), p))
                extra["probs"][key] = p
                extra["argmax"][key] = max(range(3), key=lambda k: p[k])
            else:
                options = self.rubrics[key]["options"]
                yes = [r.probs[0] for r in rs]
                total = sum(yes)
                weights = [y / total for y in yes] if total > 0 else [1 / len(yes)] * len(yes)
                levels = [o["level"] for o in options]
                p = [sum(w for w, lvl in zip(weights, levels) if lvl == k) for k in (0, 1, 2)]
                scores[key] = sum(k * pk for k, pk in zip((0, 1, 2), p))
                extra["probs"][key] = p
                extra["argmax"][key] = max(range(3), key=lambda k: p[k])
                extra.setdefault("checklist", {})[key] = [
                    {"option": o["option"], "level": o["level"], "p_yes": y} for o, y in zip(options, yes)]
        extra["answer_tokens"] = sorted(tokens)
        extra["discrete"] = discrete
        if discrete:
            extra["samples"] = min(r.samples or 0 for rs in answered.values() for r in rs)
        return JudgeResult(scores, extra=extra)
