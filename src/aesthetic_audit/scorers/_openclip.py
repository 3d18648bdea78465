"""open_clip ViT checkpoints in the transformers ``CLIPModel`` layout, and open_clip's CLIP tokenizer.

Reward models such as HPSv2 ship an open_clip state dict (``torch.save({"state_dict": ...})``), not a
transformers folder. ``openclip_to_transformers`` maps such a state dict onto ``CLIPModel`` with a
``CLIPConfig`` derived from the tensors' shapes, so one well-tested forward serves every CLIP-like
scorer; ``convert_checkpoint`` writes the result once as config.json + model.safetensors (what
``aesthetic-audit convert`` produces), after which no pickle has to be opened again.

open_clip layout (checked against open_clip's ``model.py``/``transformer.py``, as vendored by HPSv2):

- vision: ``visual.conv1.weight`` [width, 3, patch, patch] (no bias), ``visual.class_embedding`` [width],
  ``visual.positional_embedding`` [grid² + 1, width], ``visual.ln_pre.*``,
  ``visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight [3·width, width], attn.in_proj_bias,
  attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``visual.ln_post.*`` (applied to the class token),
  ``visual.proj`` [width, embed_dim] (used as ``x @ proj``);
- text: ``token_embedding.weight`` [vocab, width], ``positional_embedding`` [context, width],
  ``transformer.resblocks.N.*`` (same block, causal mask), ``ln_final.*``, ``text_projection``
  [width, embed_dim]; pooled at the argmax of the token ids (the end token has the highest id);
- ``logit_scale``; a DistributedDataParallel ``module.`` prefix is accepted.

Blocks are pre-norm: x + attn(ln_1(x)), then x + mlp(ln_2(x)); open_clip's non-OpenAI ViTs use exact
GELU (``nn.GELU``) and ``nn.LayerNorm`` with eps 1e-5. OpenAI's CLIP (its ``clip`` package, and open_clip
models built from OpenAI weights) has the same layout but QuickGELU, x * sigmoid(1.702 x): the tensors
cannot tell the two apart, so callers say which (``activation``; exact GELU by default).
nn.MultiheadAttention packs q, k, v row-wise into ``in_proj_weight``; transformers keeps them as three
Linear layers, so the packed tensor is split in three. ``x @ proj`` becomes a bias-free Linear whose
weight is ``proj.T``.

What the shapes cannot tell: the number of attention heads. open_clip's model configs give the vision
tower a ``head_width`` (80 for ViT-H, 88 for ViT-g, 104 for ViT-bigG, 112 for ViT-e, 64 otherwise)
and every text tower 64-wide heads. ``VISION_HEAD_WIDTHS`` holds that table; callers that know their
architecture (a scorer's variant row) pass the head widths explicitly.

The tokenizer reproduces open_clip's ``SimpleTokenizer`` + ``tokenize``: text fixed with ftfy (when
installed), HTML-unescaped twice, whitespace collapsed and stripped, lower-cased; split by open_clip's
regular expression (its two special-token spellings ``<start_of_text>``/``<end_of_text>``, English
contractions, letter runs, single digits, other non-space runs); byte-level BPE with ``</w>`` word
ends; ``[start] + ids + [end]``; above the context length cut to it with the last token forced to
the end token; padded with zeros. Vocabulary and merges are read from a Hugging Face CLIP tokenizer
folder (vocab.json + merges.txt; the same 49,408 ids as open_clip's bpe_simple_vocab_16e6.txt.gz).
"""

from __future__ import annotations

import html
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import require
from ..ui import log
from ._weights import WeightsError, load_state_dict, read_json, write_safetensors

# open_clip model configs: vision width -> head width where it is not the default 64.
VISION_HEAD_WIDTHS = {1280: 80, 1408: 88, 1664: 104, 1792: 112}
TEXT_HEAD_WIDTH = 64
LAYER_NORM_EPS = 1e-5
ACTIVATIONS = ("gelu", "quick_gelu")  # transformers' names: exact GELU, OpenAI CLIP's x * sigmoid(1.702 x)

_BLOCK_PARTS = {
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
_VISION_PARTS = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TEXT_PARTS = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_TOWERS = (("visual.transformer.resblocks.", "vision_model.encoder.layers."),
           ("transformer.resblocks.", "text_model.encoder.layers."))


def _strip_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _layers(sd: dict[str, Any], prefix: str) -> int:
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in sd if k.startswith(prefix)}
    if found != set(range(len(found))):
        raise WeightsError(f"open_clip checkpoint: blocks under {prefix!r} are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def _heads(width: int, head_width: int, tower: str) -> int:
    if width % head_width:
        raise WeightsError(f"open_clip checkpoint: {tower} width {width} is not a multiple of the head width "
                           f"{head_width}; pass the tower's head width explicitly")
    return width // head_width


def openclip_to_transformers(state_dict: dict[str, Any], *, vision_head_width: int | None = None,
                             text_head_width: int | None = None, activation: str = "gelu"):
    """An open_clip ViT CLIP state dict -> (``CLIPConfig``, state dict of ``CLIPModel``).

    Widths, depths, MLP sizes, patch size, image size (patch × grid, from the positional embedding),
    vocabulary, context length and projection size come from the tensors; head counts from the head
    widths (defaults: ``VISION_HEAD_WIDTHS`` by vision width, 64 for text); the MLP activation of both
    towers from ``activation`` ("gelu", or "quick_gelu" for OpenAI CLIP weights). Keys the transformers
    layout cannot hold (layer scale, attentional pooling, patch-norm, ...) raise an error naming them.
    """
    torch = require("torch", "models", "converting open_clip checkpoints")
    require("transformers", "models", "converting open_clip checkpoints")
    from transformers import CLIPConfig

    if activation not in ACTIVATIONS:
        raise WeightsError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    sd = _strip_prefix(state_dict)
    required = [*_VISION_PARTS, *_TEXT_PARTS, "visual.proj"]
    missing = [k for k in required if k not in sd]
    if "text_projection" not in sd and "text_projection.weight" not in sd:
        missing.append("text_projection")
    if missing:
        raise WeightsError(f"not an open_clip ViT CLIP state dict: missing {', '.join(missing[:6])}"
                           f"{' ...' if len(missing) > 6 else ''} (found e.g. {', '.join(list(sd)[:4])})")

    v_width, channels, patch, patch_w = sd["visual.conv1.weight"].shape
    if patch != patch_w or channels != 3:
        raise WeightsError(f"open_clip checkpoint: visual.conv1.weight has shape "
                           f"{tuple(sd['visual.conv1.weight'].shape)}; expected [width, 3, p, p]")
    positions = sd["visual.positional_embedding"].shape[0]
    grid = math.isqrt(positions - 1)
    if grid * grid + 1 != positions:
        raise WeightsError(f"open_clip checkpoint: {positions} vision positions is not grid² + 1 (a square image)")
    v_layers = _layers(sd, _TOWERS[0][0])
    vocab, t_width = sd["token_embedding.weight"].shape
    context = sd["positional_embedding"].shape[0]
    t_layers = _layers(sd, _TOWERS[1][0])
    embed_dim = sd["visual.proj"].shape[1]
    v_head = vision_head_width or VISION_HEAD_WIDTHS.get(v_width, 64)
    t_head = text_head_width or TEXT_HEAD_WIDTH

    text_config = dict(
        vocab_size=vocab, hidden_size=t_width, num_hidden_layers=t_layers,
        num_attention_heads=_heads(t_width, t_head, "text"),
        intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        max_position_embeddings=context, hidden_act=activation, layer_norm_eps=LAYER_NORM_EPS,
        # open_clip: the two special tokens are the last ids; padding is 0.
        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0, projection_dim=embed_dim)
    vision_config = dict(
        hidden_size=v_width, num_hidden_layers=v_layers, num_attention_heads=_heads(v_width, v_head, "vision"),
        intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        patch_size=patch, image_size=patch * grid, num_channels=3, hidden_act=activation,
        layer_norm_eps=LAYER_NORM_EPS, projection_dim=embed_dim)
    logit_scale = sd.get("logit_scale")
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=embed_dim,
                        logit_scale_init_value=float(logit_scale) if logit_scale is not None else 2.6592)
    config.architectures = ["CLIPModel"]

    out: dict[str, Any] = {}
    used: set[str] = set()

    def take(key: str):
        used.add(key)
        return sd[key]

    for src, dst in {**_VISION_PARTS, **_TEXT_PARTS}.items():
        out[dst] = take(src)
    for (src_prefix, dst_prefix), n in zip(_TOWERS, (v_layers, t_layers)):
        for i in range(n):
            s, d = f"{src_prefix}{i}.", f"{dst_prefix}{i}."
            for part, name in _BLOCK_PARTS.items():
                out[d + name] = take(s + part)
            for kind in ("weight", "bias"):
                q, k, v = take(f"{s}attn.in_proj_{kind}").chunk(3, dim=0)
                for name, t in (("q", q), ("k", k), ("v", v)):
                    out[f"{d}self_attn.{name}_proj.{kind}"] = t.clone()
    out["visual_projection.weight"] = take("visual.proj").t().contiguous()
    if "text_projection" in sd:
        out["text_projection.weight"] = take("text_projection").t().contiguous()
    else:
        out["text_projection.weight"] = take("text_projection.weight")
    out["logit_scale"] = take("logit_scale") if logit_scale is not None else \
        torch.tensor(config.logit_scale_init_value)

    # The causal mask was a persistent buffer in early open_clip; it is rebuilt by the model.
    left = sorted(k for k in sd if k not in used and not k.endswith("attn_mask"))
    if left:
        raise WeightsError("this open_clip checkpoint has parts the transformers CLIP layout cannot hold: "
                           f"{', '.join(left[:8])}{' ...' if len(left) > 8 else ''}")
    return config, out


def read_openclip_checkpoint(path: Path, *, allow_pickle: bool = False) -> dict[str, Any]:
    """The state dict of an open_clip checkpoint: a bare state dict or one under a "state_dict" key."""
    state = load_state_dict(Path(path), allow_pickle=allow_pickle)
    inner = state.get("state_dict")
    return inner if isinstance(inner, dict) else state


def build_clip_model(config, state_dict: dict[str, Any]):
    """A ``CLIPModel`` holding exactly these tensors (no random initialisation of a 1B-parameter model first).

    Every parameter must come from ``state_dict``: a missing or unexpected key is an error, so no
    randomly initialised weight can reach a score.
    """
    torch = require("torch", "models", "CLIP-based scorers")
    require("transformers", "models", "CLIP-based scorers")
    from transformers import CLIPModel

    # Older transformers saved the position_ids buffers; the model builds them itself.
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("embeddings.position_ids")}
    with torch.device("meta"):
        expected = set(CLIPModel(config).state_dict())
    given = set(state_dict)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise WeightsError(f"CLIP weights do not fit their config: missing {missing[:5] or 'none'}, "
                           f"unexpected {unexpected[:5] or 'none'}")
    from transformers.utils import logging as hf_logging

    # The tensors are already in memory: transformers' "Loading weights" bar would only be noise (and it
    # ignored -q), so it is off for this call and restored after.
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return CLIPModel.from_pretrained(None, config=config, state_dict=state_dict)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def convert_checkpoint(src: str | Path, dst_dir: str | Path, allow_pickle: bool = False, *,
                       vision_head_width: int | None = None, text_head_width: int | None = None,
                       activation: str = "gelu") -> Path:
    """Write an open_clip checkpoint as a transformers CLIP folder: config.json + model.safetensors.

    The folder loads with ``CLIPModel.from_pretrained`` and as the ``weights`` option of the open_clip
    based scorers (HPSv2; HPS v1 with ``activation="quick_gelu"``), which then need no ``allow_pickle``.
    A pickle source needs ``allow_pickle=True`` and is read with ``torch.load(weights_only=True)``.
    """
    require("safetensors.torch", "models", "writing safetensors")  # a missing extra is said before any reading
    src, dst = Path(src).expanduser(), Path(dst_dir).expanduser()
    if not src.is_file():
        raise WeightsError(f"no checkpoint file at {src}")
    config, state = openclip_to_transformers(read_openclip_checkpoint(src, allow_pickle=allow_pickle),
                                             vision_head_width=vision_head_width, text_head_width=text_head_width,
                                             activation=activation)
    dst.mkdir(parents=True, exist_ok=True)
    write_safetensors(state, dst / "model.safetensors", src)
    config.to_json_file(str(dst / "config.json"))
    return dst


# -- tokenizer --------------------------------------------------------------------------------------

_SPLIT = (r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
_SPECIAL_NAMES = {"start": ("<|startoftext|>", "<start_of_text>"), "end": ("<|endoftext|>", "<end_of_text>")}


@lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable symbol map: printable Latin-1 bytes stand for themselves, the other
    bytes are shifted to code points from 256 up, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def text_fixer() -> tuple[Any, str | None]:
    """(ftfy.fix_text or None, "ftfy <version>" or None): open_clip runs every prompt through ftfy."""
    try:
        import ftfy
    except ImportError:
        return None, None
    from importlib import metadata

    try:
        version = metadata.version("ftfy")
    except metadata.PackageNotFoundError:
        version = getattr(ftfy, "__version__", "?")
    return ftfy.fix_text, f"ftfy {version}"


class OpenClipTokenizer:
    """open_clip's CLIP tokenizer: ``tokenizer(texts)`` -> (ids [N, context], token counts, truncated).

    Counts are untruncated and include the start and end tokens.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], context_length: int = 77):
        self.regex = require("regex", "models", "the CLIP tokenizer")
        self.encoder = dict(vocab)
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        ids = {}
        for role, names in _SPECIAL_NAMES.items():
            found = [vocab[n] for n in names if n in vocab]
            if not found:
                raise WeightsError(f"CLIP vocabulary has no {role} token ({' or '.join(names)})")
            ids[role] = found[0]
        self.start_id, self.end_id = ids["start"], ids["end"]
        self.context_length = context_length
        self.pattern = self.regex.compile(_SPLIT, self.regex.IGNORECASE)
        self.fix_text, self.text_fix = text_fixer()
        if self.fix_text is None:
            log.warning("ftfy is not installed: prompts are tokenised without open_clip's ftfy.fix_text step, "
                        "so prompts with curly quotes, mojibake or full-width characters can get different "
                        "tokens than the official implementation (pip install ftfy)")
        self._words: dict[str, tuple[int, ...]] = {"<start_of_text>": (self.start_id,),
                                                   "<end_of_text>": (self.end_id,)}

    @classmethod
    def from_files(cls, vocab_path: Path, merges_path: Path, context_length: int = 77) -> "OpenClipTokenizer":
        vocab = read_json(vocab_path)
        merges = []
        for line in Path(merges_path).read_text(encoding="utf-8").split("\n"):
            if line.startswith("#version") or not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise WeightsError(f"{merges_path}: not a BPE merges line: {line!r}")
            merges.append((parts[0], parts[1]))
        return cls(vocab, merges, context_length)

    def clean(self, text: str) -> str:
        if self.fix_text is not None:
            text = self.fix_text(text)
        text = html.unescape(html.unescape(text)).strip()
        return self.regex.sub(r"\s+", " ", text).strip().lower()

    def _bpe(self, symbols: list[str]) -> list[str]:
        while len(symbols) > 1:
            pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, math.inf))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _word(self, word: str) -> tuple[int, ...]:
        if word not in self._words:
            table = byte_symbols()
            chars = [table[b] for b in word.encode("utf-8")]
            chars[-1] += "</w>"
            try:
                self._words[word] = tuple(self.encoder[s] for s in self._bpe(chars))
            except KeyError as exc:
                raise WeightsError(f"CLIP vocabulary lacks the BPE symbol {exc.args[0]!r}") from None
        return self._words[word]

    def encode(self, text: str) -> list[int]:
        """Token ids of a text, without start/end tokens."""
        return [i for word in self.pattern.findall(self.clean(text)) for i in self._word(word)]

    def __call__(self, texts: list[str]):
        torch = require("torch", "models", "the CLIP tokenizer")
        ids = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        counts, truncated = [], []
        for row, text in enumerate(texts):
            tokens = [self.start_id, *self.encode(text), self.end_id]
            counts.append(len(tokens))
            truncated.append(len(tokens) > self.context_length)
            if truncated[-1]:
                tokens = tokens[:self.context_length]
                tokens[-1] = self.end_id
            ids[row, :len(tokens)] = torch.tensor(tokens)
        return ids, counts, truncated
