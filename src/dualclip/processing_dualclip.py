"""`DualClipProcessor`: one call that tokenizes text and preprocesses images for a dualclip model."""

from transformers.processing_utils import ProcessorMixin


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

    Args:
        image_processor ([`DualClipImageProcessor`]): prepares `pixel_values`.
        tokenizer ([`DualClipTokenizer`] or another transformers tokenizer): prepares `input_ids`.
    """

    def __init__(self, image_processor=None, tokenizer=None):
        for name, value in (("image_processor", image_processor), ("tokenizer", tokenizer)):
            if value is None:
                raise ValueError(
                    f"`{name}` is required: DualClipProcessor needs both an image processor and a tokenizer."
                )
        super().__init__(image_processor, tokenizer)

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
