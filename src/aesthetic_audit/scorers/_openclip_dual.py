"""Dual-encoder scorers on open_clip-layout CLIP checkpoints: HPS v1 (``hps``) and HPSv2/2.1 (``hpsv2``).

What they share: where the files are (the official pickle, or a folder ``convert --openclip`` wrote; the
tokenizer's vocab.json + merges.txt beside the weights, in a ``tokenizer`` folder or from the variant's
tokenizer repo), loading through the open_clip -> transformers mapping (``_openclip``) with the variant's
head widths and MLP activation, and the score: the cosine of the projected class-token image feature
and end-token prompt feature, in float32. What differs (tokenizer spelling, preprocessing, where the
checkpoint comes from when ``weights`` is not given) stays in each scorer's module.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._clip_common import TOKENIZER_FILES, CheckpointFolder
from ._torch import DualEncoderScorer, torch, unit
from ._weights import WeightsError


class OpenClipDualEncoder(CheckpointFolder, DualEncoderScorer):
    """Base of the open_clip-layout scorers. Variant rows give ``checkpoint``, ``tokenizer_repo``,
    ``tokenizer_revision``, ``vision_head_width``, ``text_head_width`` and ``activation`` (default gelu).

    Options (besides TorchScorer's): ``weights`` and ``tokenizer`` as ``CheckpointFolder`` reads them;
    ``processor`` = an injected preprocessing object.
    """

    tokenizer_class: ClassVar[type]  # OpenClipTokenizer or a subclass: ``from_files(vocab, merges, n)``

    def identity(self) -> dict[str, Any]:
        from ._openclip import text_fixer

        ident = super().identity()
        ident["text_fix"] = text_fixer()[1]
        return ident

    # -- loading --------------------------------------------------------------------------------
    def make_preprocess(self) -> Any:
        """The scorer's image preprocessing for the loaded model (``processor`` replaces it)."""
        raise NotImplementedError

    def _read_model(self):
        from ._openclip import build_clip_model, openclip_to_transformers, read_openclip_checkpoint
        from ._weights import load_state_dict

        source, files, converted = self._checkpoint()
        paths = [self.resolver.file(source, f) for f in files]
        activation = self.spec.get("activation", "gelu")
        if converted:
            from transformers import CLIPConfig

            config = CLIPConfig.from_json_file(str(paths[0]))
            found = {config.vision_config.hidden_act, config.text_config.hidden_act}
            if found != {activation}:  # converted with the wrong activation: every score would be off
                raise WeightsError(
                    f"{paths[0]} says hidden_act {' / '.join(sorted(found))}, but {self.name} uses {activation}: "
                    f"convert the checkpoint again with `aesthetic-audit convert CHECKPOINT -o FOLDER --openclip "
                    f"--activation {activation}`")
            state = load_state_dict(paths[1])
        else:
            config, state = openclip_to_transformers(
                read_openclip_checkpoint(paths[0], allow_pickle=self.allow_pickle),
                vision_head_width=self.spec.get("vision_head_width"),
                text_head_width=self.spec.get("text_head_width"), activation=activation)
        return build_clip_model(config, state)

    def _load(self) -> None:
        if self.model is None:
            self.model = self._read_model()
        if self.tokenizer is None:
            source = self._tokenizer_source()
            vocab, merges = (self.resolver.file(source, f) for f in TOKENIZER_FILES)
            self.tokenizer = self.tokenizer_class.from_files(
                vocab, merges, context_length=self.model.config.text_config.max_position_embeddings)
        self.preprocess = self.processor or self.make_preprocess()

    # -- encoders -------------------------------------------------------------------------------
    def encode_pixels(self, pixel_values):
        out = self.model.vision_model(pixel_values=pixel_values)  # ln_post on the class token
        return unit(self.model.visual_projection(out.pooler_output))

    def encode_texts(self, prompts: list[str]):
        t = torch()
        ids, counts, truncated = self.tokenizer(prompts)
        # The mask is causal and the state is read at the end token, so the padding after the longest prompt
        # changes nothing: leave it out (open_clip always runs all 77 positions).
        ids = ids[:, :min(max(counts), ids.shape[1])].to(self.device)
        hidden = self.model.text_model(input_ids=ids).last_hidden_state  # after ln_final
        # open_clip and OpenAI's clip pool at the highest token id: the end token.
        pooled = hidden[t.arange(hidden.shape[0], device=hidden.device), ids.argmax(dim=-1)]
        return unit(self.model.text_projection(pooled)), counts, truncated

    def combine(self, image_emb, text_emb):
        return (image_emb * text_emb).sum(dim=-1)
