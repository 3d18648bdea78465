"""The pairwise VLM labeller: which of two images better matches p_a (the study's ground truth).

A vision-language model sees p_a and the two images of a pair, in an order drawn from the run's seed
and recorded, and answers in a JSON schema ``{"selection": -1 | 0 | 1}`` (0 the first image, 1 the
second, -1 a tie), as the study's labeller does: a system turn asking for a JSON reply, then one user
turn with the instruction and the prompt, then the two images. The answer maps back to the pair's
label: 1 when the anti-aesthetic image I_a is chosen, 0 when the original I_o is, -1 for a tie.

Beyond the study, ``both_orders: true`` asks in both orders; when the two answers differ the label is
a tie and the pair counts as a position-bias disagreement (the analysis reports their rate).

A reply that is not the schema is re-asked up to ``max_reasks`` times; transport errors are retried by
the client with backoff; what still fails becomes a failed record, never a dropped pair.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from PIL import Image

from ..errors import ConfigError
from ..hashing import spec_hash
from ..images.decode import to_rgb
from ..registry import register
from ..vlm.base import Prompt, VLMBackend, make_backend

SYSTEM = "You judge which image better matches a text prompt. Reply only with a JSON object that follows the schema."
INSTRUCTION = ("Below are a text prompt and two images. Which image matches the prompt better? Reply with a JSON "
               "object of the form {{\"selection\": <int>}}: 0 for the first image, 1 for the second image, -1 if "
               "they match it equally well. Add no other keys and no other text.\n\nPrompt:\n{prompt}")
SCHEMA = {"type": "object", "properties": {"selection": {"type": "integer", "enum": [-1, 0, 1]}},
          "required": ["selection"], "additionalProperties": False}
_JSON_OBJECT = re.compile(r"\{[^{}]*\}")


@dataclass(frozen=True)
class PairItem:
    """One pair to label: I_o, I_a and p_a, with the order-drawing seed."""
    image_o: Image.Image
    image_a: Image.Image
    p_a: str
    order_key: str  # what the presentation order is drawn from (the seed and the pair's content)


@dataclass(frozen=True)
class LabelResult:
    value: int | None  # -1 tie, 0 original, 1 anti-aesthetic
    answers: list[dict[str, Any]] = field(default_factory=list)
    disagree: bool | None = None
    error: str | None = None


def parse_selection(text: str) -> int:
    """The selection in a reply: a JSON object (bare or inside a code fence, possibly after other
    text) with an integer ``selection`` of -1, 0 or 1. Raises ValueError saying what was wrong."""
    candidates = [text.strip()] + _JSON_OBJECT.findall(text)
    for candidate in candidates:
        try:
            obj = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(obj, dict) and "selection" in obj:
            value = obj["selection"]
            if isinstance(value, bool) or value not in (-1, 0, 1):
                raise ValueError(f"selection {value!r} is not -1, 0 or 1")
            return int(value)
    raise ValueError(f"no JSON object with a selection in the reply {text[:80]!r}")


def first_shown(order_key: str) -> str:
    """Which image the labeller sees first, "o" or "a": a fair coin drawn from the order key."""
    return "a" if random.Random(order_key).random() < 0.5 else "o"


def pair_prompts(items: Sequence[PairItem], *, both_orders: bool, image: Callable[[Image.Image], Image.Image],
                 instruction: str = INSTRUCTION, system: str | None = SYSTEM
                 ) -> tuple[list[Prompt], list[tuple[int, str]]]:
    """The questions about each pair: ``instruction`` (with the pair's p_a as ``{prompt}``), then the two
    images (each passed through ``image``) in the order drawn from its order key, or once in each order
    with ``both_orders``. Returns the prompts and, per prompt, (item number, image shown first: "o"/"a").
    The pairwise reward model (``scorers/vlm_pairwise.py``) asks its questions through this too."""
    asks: list[tuple[int, str]] = []
    prompts: list[Prompt] = []
    for i, item in enumerate(items):
        shown = {"o": image(item.image_o), "a": image(item.image_a)}
        orders = ("o", "a") if both_orders else (first_shown(item.order_key),)
        for first in orders:
            second = "a" if first == "o" else "o"
            prompts.append(Prompt((instruction.format(prompt=item.p_a), shown[first], shown[second]), system=system))
            asks.append((i, first))
    return prompts, asks


@register("labellers")
class VLMLabeller:
    name = "vlm"
    description = "a vision-language model shown both images and p_a (local Qwen-VL folder or an OpenAI-compatible endpoint)"
    version = "1"

    def __init__(self, *, both_orders: bool = False, temperature: float = 0.3, image_size: int | None = None,
                 max_reasks: int = 2, max_tokens: int = 32, **backend: Any):
        if not isinstance(both_orders, bool):
            raise ConfigError(f"both_orders must be true or false, not {both_orders!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise ConfigError(f"temperature must be a number from 0 to 2, not {temperature!r}")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError(f"max_tokens must be a positive integer, not {max_tokens!r}")
        if not isinstance(max_reasks, int) or max_reasks < 0:
            raise ConfigError(f"max_reasks must be a non-negative integer, not {max_reasks!r}")
        if image_size is not None and (not isinstance(image_size, int) or image_size < 28):
            raise ConfigError(f"image_size must be an integer of at least 28 (or null to keep sizes), not {image_size!r}")
        self.options = {"both_orders": both_orders, "temperature": temperature, "image_size": image_size,
                        "max_reasks": max_reasks, "max_tokens": max_tokens, **backend}
        self.both_orders, self.temperature, self.image_size = both_orders, temperature, image_size
        self.max_reasks, self.max_tokens = max_reasks, max_tokens
        self.backend: VLMBackend = make_backend(backend)

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "both_orders": self.both_orders,
                "temperature": self.temperature, "image_size": self.image_size,
                "prompt": spec_hash([SYSTEM, INSTRUCTION, SCHEMA]), "backend": self.backend.identity()}

    def describe(self) -> str:
        where = f" at {self.options['url']}" if self.options.get("url") else ""
        return f"vlm ({self.options.get('model', '?')}{where})"

    def load(self) -> None:
        self.backend.load()

    def unload(self) -> None:
        self.backend.unload()

    def _image(self, img: Image.Image) -> Image.Image:
        img = to_rgb(img)
        if self.image_size:
            img = img.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return img

    def label(self, items: Sequence[PairItem]) -> list[LabelResult]:
        """Label a batch; one item's failure is its own result's ``error``."""
        prompts, asks = pair_prompts(items, both_orders=self.both_orders, image=self._image)
        selections: dict[int, int | str] = {}  # ask number -> selection or the last error
        pending = list(range(len(prompts)))
        for _ in range(self.max_reasks + 1):
            if not pending:
                break
            replies = self.backend.generate([prompts[k] for k in pending], max_tokens=self.max_tokens,
                                            temperature=self.temperature, json_schema=SCHEMA)
            retry = []
            for k, reply in zip(pending, replies):
                if not reply.ok:
                    selections[k] = reply.error or "no reply"
                    continue  # transport errors were already retried by the backend
                try:
                    selections[k] = parse_selection(reply.text)
                except ValueError as exc:
                    selections[k] = str(exc)
                    retry.append(k)
            pending = retry
        out: list[list[dict[str, Any]] | str] = [[] for _ in items]
        for k, (i, first) in enumerate(asks):
            sel = selections.get(k, "no reply")
            if isinstance(out[i], str):
                continue
            if isinstance(sel, str):
                out[i] = sel
                continue
            value = -1 if sel == -1 else (1 if (first if sel == 0 else ("a" if first == "o" else "o")) == "a" else 0)
            out[i].append({"first": first, "selection": sel, "value": value})
        results = []
        for answers in out:
            if isinstance(answers, str):
                results.append(LabelResult(None, error=answers))
                continue
            values = {a["value"] for a in answers}
            disagree = (len(values) > 1) if self.both_orders else None
            results.append(LabelResult(-1 if disagree else answers[0]["value"], answers, disagree))
        return results
