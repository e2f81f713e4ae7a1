"""`DualClipPreTrainedModel`: initialisation, attention support and saving shared by the model classes and the
towers of every family."""

import inspect

import torch
from transformers.modeling_utils import PreTrainedModel


class DualClipPreTrainedModel(PreTrainedModel):
    """Weight initialisation, loading and saving shared by every dualclip model class.

    Every tower is a subclass too, as transformers' CLIP towers are: what depends on the tower family (modules
    `device_map` must not split, outputs transformers may capture, input embeddings, extra initialisation) is
    declared by the tower itself (see `towers.py`), and transformers gathers it from there.
    """

    base_model_prefix = "dualclip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Auto classes besides `AutoModel` a folder saved by this class loads through with `trust_remote_code=True`.
    _extra_auto_classes = ()

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """`PreTrainedModel.save_pretrained`, writing dualclip's own key layout (`text_model.`/`vision_model.`
        prefixes) by default, even for weights loaded from a flat transformers 5 `CLIPTextModel` folder. A
        registered class also lists the other Auto classes it serves in `auto_map`."""
        if self._auto_class is not None and self._extra_auto_classes:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map.update({name: f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
                             for name in self._extra_auto_classes})
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)

    # The signature callers inspect (diffusers passes `variant`, `max_shard_size`, ... only to methods that name them).
    save_pretrained.__signature__ = inspect.signature(PreTrainedModel.save_pretrained).replace(
        parameters=[
            p.replace(default=False) if p.name == "save_original_format" else p
            for p in inspect.signature(PreTrainedModel.save_pretrained).parameters.values()
        ]
    )

    def _initialize_weights(self, module, is_custom_code: bool = False):
        # transformers treats every model defined outside its own package as custom code, and for custom code it skips
        # modules without parameters of their own (attention, MLP, the dual model), whose `_init_weights` branches are
        # what give q/k/v/out, fc1/fc2 and the projections CLIP's scales. Our `_init_weights` only writes through
        # `transformers.initialization`, which never overwrites loaded weights, so the shortcut is not needed.
        super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module):
        """transformers' default init, then the module's own (OpenAI's scheme, as transformers CLIP), scaled by
        `initializer_factor` (1 for a tower config without one, as transformers' SigLIP tower configs)."""
        super()._init_weights(module)
        if hasattr(module, "init_dualclip_weights"):
            module.init_dualclip_weights(getattr(self.config, "initializer_factor", 1.0))
