"""`DualClipProcessor`: one call that tokenizes text and preprocesses images for a dualclip model."""

from transformers.processing_utils import ProcessorMixin

from .text_cleaning import TEXT_CLEANING_MODES, clean_caption


class DualClipProcessor(ProcessorMixin):
    r"""
    Pairs a [`DualClipImageProcessor`] with a [`DualClipTokenizer`].

    `processor(images=..., text=..., return_tensors="pt", padding=True)` returns a `BatchFeature` with
    `input_ids` and `attention_mask` (from the tokenizer, when `text` is given) and `pixel_values` (from the
    image processor, when `images` is given). Keyword arguments are routed the transformers way: tokenizer
    options (`padding`, `truncation`, `max_length`, ...) go to the tokenizer, image options (`size`,
    `crop_size`, `do_normalize`, ...) to the image processor, and `return_tensors` to both.

    As in every transformers 5 processor, the sub-processor classes are not named here: `from_pretrained`
    loads them through `AutoImageProcessor` and `AutoTokenizer`, which find `DualClipImageProcessor` and
    `DualClipTokenizer` from the `image_processor_type` and `tokenizer_class` saved in the folder (both are
    registered by `import dualclip`). Any transformers tokenizer is accepted, so a stock `CLIPTokenizer`
    works too.

    A model converted from a family whose original tokenizer wraps a Hugging Face tokenizer (OpenCLIP's
    `HFTokenizer`: SigLIP, CLIPA, ...) stores that wrapper's text defaults here, so that the processor feeds the
    model what the original fed it: captions cleaned first (`text_cleaning`), padded to the tokenizer's
    `model_max_length` and truncated (`pad_to_max_length`: `padding=True` or `"longest"` also pad to that length,
    since these models read a position that exists only at full length; `padding=False` is kept), the separator
    token replaced by id 0 (`strip_sep_token`). A tokenizer called directly does none of this.

    Args:
        image_processor ([`DualClipImageProcessor`]): prepares `pixel_values`.
        tokenizer ([`DualClipTokenizer`] or another transformers tokenizer): prepares `input_ids`.
        text_cleaning (`str`, *optional*): OpenCLIP's caption cleaning, `"whitespace"`, `"lower"` or
            `"canonicalize"` (see `dualclip.text_cleaning`); `None` leaves captions to the tokenizer.
        pad_to_max_length (`bool`, defaults to `False`): pad every caption to the context length by default.
        strip_sep_token (`bool`, defaults to `False`): replace the tokenizer's `sep_token_id` by 0 (CLIPA).
    """

    def __init__(
        self, image_processor=None, tokenizer=None, text_cleaning=None, pad_to_max_length=False, strip_sep_token=False
    ):
        for name, value in (("image_processor", image_processor), ("tokenizer", tokenizer)):
            if value is None:
                raise ValueError(
                    f"`{name}` is required: DualClipProcessor needs both an image processor and a tokenizer."
                )
        if text_cleaning is not None and text_cleaning not in TEXT_CLEANING_MODES:
            raise ValueError(
                f"`text_cleaning` must be None or one of {', '.join(TEXT_CLEANING_MODES)}; got {text_cleaning!r}"
            )
        if strip_sep_token and tokenizer.sep_token_id is None:
            raise ValueError("`strip_sep_token=True` needs a tokenizer with a `sep_token`; this one has none")
        self.text_cleaning = text_cleaning
        self.pad_to_max_length = bool(pad_to_max_length)
        self.strip_sep_token = bool(strip_sep_token)
        super().__init__(image_processor, tokenizer)

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Tokenizes `text` and preprocesses `images` (see the class), applying the stored text defaults."""
        if text is not None and self.text_cleaning is not None:
            text = clean_caption(text, self.text_cleaning) if isinstance(text, str) else [
                clean_caption(caption, self.text_cleaning) for caption in text
            ]
        if text is not None and self.pad_to_max_length and kwargs.get("padding", True) in (True, "longest"):
            # The model reads a position that exists only at full length (SigLIP, CLIPA pool the last one): padding
            # to the batch's longest caption, what generic callers ask for, would move it.
            kwargs["padding"] = "max_length"
            kwargs.setdefault("truncation", True)
            kwargs.setdefault("max_length", self.tokenizer.model_max_length)
        outputs = super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)
        if self.strip_sep_token and "input_ids" in outputs:
            sep = self.tokenizer.sep_token_id
            ids = outputs["input_ids"]
            outputs["input_ids"] = (
                ids.masked_fill(ids == sep, 0) if hasattr(ids, "masked_fill")
                else [[0 if i == sep else i for i in row] for row in ids]
            )
        return outputs

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Require `text`, `images` or both; dualclip has no video or audio inputs."""
        if text is None and images is None:
            raise ValueError(
                "DualClipProcessor needs `text`, `images` or both; both are None. "
                'Call it as processor(text=["a photo of a cat"], images=image, return_tensors="pt").'
            )
        for name, value in (("videos", videos), ("audio", audio)):
            if value is not None:
                raise ValueError(f"DualClipProcessor takes no `{name}`; it prepares only text and images.")
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)


__all__ = ["DualClipProcessor"]
