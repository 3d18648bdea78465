"""An intent parser over a sentence-embedding model: each clause of the prompt against each dimension's words.

The model is a MiniLM-class encoder loaded with transformers ``AutoTokenizer``/``AutoModel`` from a local
folder or a hub id (read from the local cache when the hub is unreachable). A text's embedding is what
sentence-transformers computes for its MiniLM models: the mean of the last hidden states over the
attention mask, L2-normalised, so the dot product of two embeddings is their cosine similarity.

The prompt is split into clauses at punctuation and at "and", "with", "but", "while" ("without" and "not"
stay inside their clause). Each clause is compared with every phrasing and the ``anti`` text of every
dimension; a dimension's similarity is its best phrasing's. The clause names the dimension with the highest
similarity when that similarity exceeds ``threshold``. Whether the clause negates it ("not blurry", "without
noise") comes from the lexicon parser's negation detector (a free negator in the clause), and its strength
from the lexicon's intensifiers ("very", "slightly"). Torch and transformers are imported on first use.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..dimensions import Catalogue, load_catalogue
from ..errors import ConfigError, require
from ..hashing import spec_hash
from ..ui import quiet_libraries
from .base import MAX_STRENGTH, Intent
from .lexicon import LexiconParser, intensity

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_CLAUSE = re.compile(r"[,;.:!?()]|\b(?:and|with|but|while|whereas|plus)\b", re.IGNORECASE)


def split_clauses(prompt: str) -> list[str]:
    """The prompt's clauses: split at punctuation and at "and", "with", "but", "while", "whereas", "plus"."""
    return [c.strip() for c in _CLAUSE.split(prompt) if c and re.search(r"[A-Za-z]", c)]


class EmbeddingParser:
    """Intent parser over a sentence-embedding model (see the module docstring)."""

    name = "embedding"
    version = "1"

    def __init__(self, model: str = DEFAULT_MODEL, threshold: float = 0.5, revision: str | None = None,
                 device: str = "cpu", batch_size: int = 64, max_length: int = 128,
                 dimensions_file: str | Path | None = None, catalogue: Catalogue | None = None):
        """Loads nothing. ``model``: a local folder or a hub id; ``threshold``: the cosine similarity a clause
        must exceed to name a dimension."""
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not -1 <= threshold <= 1:
            raise ConfigError(f"embedding parser: threshold {threshold!r} must be a number in [-1, 1]")
        for option, value in (("batch_size", batch_size), ("max_length", max_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"embedding parser: {option} {value!r} must be an integer >= 1")
        if not isinstance(model, str) or not model:
            raise ConfigError("embedding parser: model must name a folder or a hub id")
        self.model_name, self.threshold, self.revision = model, float(threshold), revision
        self.device, self.batch_size, self.max_length = device, batch_size, max_length
        self.catalogue = catalogue if catalogue is not None else load_catalogue(dimensions_file)
        self.lexicon = LexiconParser(catalogue=self.catalogue)  # the negation detector
        self._texts = [(d.key, t) for d in self.catalogue for t in (*d.phrasings, d.anti)]
        self._model: Any = None
        self._tokenizer: Any = None
        self._bank: np.ndarray | None = None
        self._weights_hash: str | None = None

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "model": self.model_name, "revision": self.revision,
                "weights": self._local_weights_hash(), "threshold": self.threshold,
                "max_length": self.max_length, "dimensions": spec_hash(self._texts)[:16],
                "negation": self.lexicon.identity()["lexicon"]}

    def _local_weights_hash(self) -> str | None:
        """SHA-256 (16 hex) of a local folder's weight files, so a replaced model changes the identity."""
        if self._weights_hash is None:
            folder = Path(self.model_name)
            files = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin")) \
                if folder.is_dir() else []
            if files:
                digest = hashlib.sha256()
                for path in files:
                    with path.open("rb") as f:
                        for block in iter(lambda: f.read(1 << 20), b""):
                            digest.update(block)
                self._weights_hash = digest.hexdigest()[:16]
        return self._weights_hash

    def load(self) -> None:
        if self._model is not None:
            return
        torch = require("torch", "models", "the embedding intent parser")
        transformers = require("transformers", "models", "the embedding intent parser")
        # A hub id on a machine that cannot reach the hub: the cache alone, at once, instead of
        # huggingface_hub's retries (about a minute) before the same error.
        local = Path(self.model_name).is_dir() or _hub_unreachable()
        try:
            with quiet_libraries():
                self._tokenizer = transformers.AutoTokenizer.from_pretrained(
                    self.model_name, revision=self.revision, local_files_only=local)
                self._model = transformers.AutoModel.from_pretrained(self.model_name, revision=self.revision,
                                                                     local_files_only=local)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"embedding parser: cannot load the model {self.model_name!r} (a folder with "
                              f"config.json, weights and tokenizer files, or a hub id in the local cache): "
                              f"{first}") from None
        try:
            self._model.to(self.device).eval()
        except (RuntimeError, AssertionError, ValueError) as exc:  # no such device, or no CUDA in this torch
            self._model = None
            raise ConfigError(f"embedding parser: device {self.device!r}: {exc}") from None
        self._torch = torch

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Float32 rows, one per text: the attention-masked mean of the last hidden states, L2-normalised."""
        self.load()
        torch = self._torch
        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start:start + self.batch_size])
            enc = self._tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                  return_tensors="pt").to(self.device)
            with torch.no_grad():
                hidden = self._model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                     **({"token_type_ids": enc["token_type_ids"]} if "token_type_ids" in enc
                                        else {})).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)

    def similarities(self, clauses: Sequence[str]) -> np.ndarray:
        """Clause x dimension cosine similarities (each dimension's best text), dimensions in catalogue order."""
        if self._bank is None:
            self._bank = self.encode([t for _, t in self._texts])
        sims = self.encode(clauses) @ self._bank.T
        keys = [k for k, _ in self._texts]
        order = self.catalogue.keys()
        return np.stack([sims[:, [i for i, k in enumerate(keys) if k == d]].max(axis=1) for d in order], axis=1)

    def parse(self, prompts: Sequence[str]) -> list[Intent]:
        clauses: list[list[str]] = []
        for p in prompts:
            clauses.append(split_clauses(p) if isinstance(p, str) else [])
        flat = [c for cs in clauses for c in cs]
        sims = self.similarities(flat) if flat else np.zeros((0, len(self.catalogue)))
        keys = self.catalogue.keys()
        out, row = [], 0
        for i, (prompt, cs) in enumerate(zip(prompts, clauses)):
            if not isinstance(prompt, str):
                out.append(Intent(error=f"prompt {i} is a {type(prompt).__name__}, not text"))
                continue
            requested: dict[str, float] = {}
            negated: set[str] = set()
            evidence: dict[str, list[str]] = {}
            for clause in cs:
                best = int(np.argmax(sims[row]))
                score = float(sims[row, best])
                row += 1
                if not score > self.threshold:
                    continue
                key = keys[best]
                evidence.setdefault(key, []).append(f"{clause} ({score:.2f})")
                if self.lexicon.free_negators(clause):
                    negated.add(key)
                else:
                    requested[key] = max(requested.get(key, 0.0), min(intensity(clause), MAX_STRENGTH))
            out.append(Intent(requested=requested, negated=frozenset(negated - set(requested)),
                              evidence={k: "; ".join(v) for k, v in evidence.items()}))
        return out


def _hub_unreachable() -> bool:
    """HF_HUB_OFFLINE is set, or one short request finds no hub (the scorers' resolver does the same)."""
    from huggingface_hub import constants

    from ..scorers._weights import hub_offline_env, hub_problem

    return hub_offline_env() or bool(constants.HF_HUB_OFFLINE) or hub_problem(constants.ENDPOINT) is not None
