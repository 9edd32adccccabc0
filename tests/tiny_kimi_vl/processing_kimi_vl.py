"""Processor of the tiny Kimi-VL test model (kimi-cua's own; loaded by vLLM through ``auto_map``).

Like upstream's: each ``<|media_pad|>`` in the text is expanded to the image's token count
(``grid_h * grid_w / 4``) before tokenizing, and the image processor's outputs are passed through.
"""
from __future__ import annotations

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin


class KimiVLProcessor(ProcessorMixin):
    image_token = "<|media_pad|>"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.image_token = "<|media_pad|>"

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        return_tensors = kwargs.pop("return_tensors", None)
        image_inputs: dict = {}
        grids: list = []
        if images is not None:
            image_inputs = dict(self.image_processor(images, return_tensors=return_tensors))
            grids = [tuple(int(v) for v in hw) for hw in image_inputs["image_grid_hws"]]
        text_inputs: dict = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            kh, kw = self.image_processor.merge_kernel_size
            index = 0
            for i, t in enumerate(texts):
                while self.image_token in t and index < len(grids):
                    h, w = grids[index]
                    t = t.replace(self.image_token, "<|placeholder|>" * (h * w // (kh * kw)), 1)
                    index += 1
                texts[i] = t.replace("<|placeholder|>", self.image_token)
            tok_kwargs = {k: v for k, v in kwargs.items()
                          if k in ("padding", "truncation", "max_length", "add_special_tokens")}
            text_inputs = dict(self.tokenizer(texts, return_tensors=return_tensors, **tok_kwargs))
        return BatchFeature(data={**text_inputs, **image_inputs}, tensor_type=return_tensors)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "image_grid_hws"]
