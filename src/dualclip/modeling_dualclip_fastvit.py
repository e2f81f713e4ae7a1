"""The FastViT / MCi image tower family: timm's `FastVit` as OpenCLIP's MobileCLIP and MobileCLIP2 models build it
(`fastvit_mci0` … `fastvit_mci4`).

What the family computes (timm's names in brackets):
- a stem of three MobileOne blocks (`stem`): a 3x3 stride-2 convolution, a depthwise 3x3 stride-2 one, a 1x1 one,
  each followed by GELU;
- stages of blocks at one resolution (`stages.N`), each but the first opened by a downsampling layer (`downsample`:
  a depthwise-grouped 7x7 stride-2 convolution beside a 3x3 one, an optional squeeze-and-excitation, GELU, then a
  1x1 MobileOne block) and optionally by a conditional position encoding (`pos_emb`, RepCPE: `x + dwconv7x7(x)`);
- RepMixer blocks, `x + s * (mixer(x) - bn(x))` then `x + s' * mlp(x)`, or attention blocks, `x + s * attn(norm(x))`
  then `x + s' * mlp(x)` (`norm` a BatchNorm, or a channels-first LayerNorm in MCi3/MCi4), where `mlp` is a
  depthwise 7x7 convolution with BatchNorm, then 1x1 convolutions with GELU between, and `s`, `s'` are LayerScales;
- a final MobileOne block (`final_conv`, 3x3 grouped, doubling the width, with squeeze-and-excitation and GELU), then
  the global average (`pooler_output`). timm's classifier (`head.fc`, OpenCLIP's `timm_proj: null`) is the model
  classes' `visual_projection`, a Linear with bias.

Reparameterisable parts (MobileOne blocks, the large-kernel downsampling convolution, RepMixer, RepCPE) exist in two
forms, as in timm: the training-time form, parallel branches of convolutions each with its BatchNorm (and identity
BatchNorms), and the inference-time form, where each is fused into one convolution with a bias (`reparam_conv`).
`reparameterized` in the config says which one a model holds; `DualClipFastVit.reparameterize()` fuses a
training-time model in place, exactly as timm's `reparameterize_model` does. The depthwise convolution of every MLP
keeps its BatchNorm in both forms (timm does not fuse it). BatchNorms compute with their running statistics in eval
mode, as anywhere in PyTorch.

Module names are timm's inside each block (`conv_kxk.0.conv`, `conv_scale.bn`, `identity`, `reparam_conv`,
`se.fc1`, `token_mixer.mixer`, `layer_scale.gamma`, `mlp.conv.bn`, …), with dualclip's names for the tower's parts:
`embeddings.layers.N` (timm's `stem.N`), `stages.N.downsample.large_kernel` / `.pointwise` (`downsample.proj.0` /
`.1`), `stages.N.position_encoding` (`pos_emb`), and the attention's separate `q_proj`/`k_proj`/`v_proj`/`out_proj`
(timm's fused `qkv` and `proj`). Attention runs on transformers' attention interface; the channels-first
LayerNorm is transformers' `ConvNextLayerNorm`, which computes timm's `LayerNorm2d`.
"""

from collections.abc import Callable
from typing import Literal

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.configuration_utils import PreTrainedConfig
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import PrefixChange
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip.modeling_clip import eager_attention_forward
from transformers.models.convnext.modeling_convnext import ConvNextLayerNorm
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_dualclip_base import TowerConfig
from .modeling_dualclip_base import DualClipPreTrainedModel
from .modeling_dualclip_layers import check_pixel_values

# timm's fixed choices for every FastViT/MCi model: head width of the attention, kernel sizes of RepMixer, of the
# downsampling and of RepCPE, the final block's width (a multiple of the last stage's), LayerScale's initial value,
# the epsilon of every BatchNorm and LayerNorm.
ATTENTION_HEAD_DIM = 32
REPMIXER_KERNEL_SIZE = 3
DOWNSAMPLE_KERNEL_SIZE, DOWNSAMPLE_SMALL_KERNEL_SIZE = 7, 3
POSITION_ENCODING_KERNEL_SIZE = 7
MLP_DEPTHWISE_KERNEL_SIZE = 7
FINAL_WIDTH_RATIO = 2
LAYER_SCALE_INIT_VALUE = 1e-5
NORM_EPS = 1e-5


@strict
class DualClipFastVitVisionConfig(TowerConfig, PreTrainedConfig):
    r"""
    Configuration of the FastViT / MCi image tower (timm's `FastVit`). The defaults are the image tower of OpenCLIP's
    MobileCLIP-S1 (timm `fastvit_mci1`, 256-pixel images, projected to 512), training-time form.

    Per-stage lists, one entry per stage:

    Args:
        depths (`list[int]`, defaults to `[4, 12, 20, 4]`): blocks in each stage (timm's `layers`).
        hidden_sizes (`list[int]`, defaults to `[64, 128, 256, 512]`): width of each stage (timm's `embed_dims`);
            the stem has the first stage's width.
        mlp_ratios (`list[float]`, defaults to `[3, 3, 3, 3]`): MLP width of each stage's blocks, a multiple of its
            width.
        token_mixers (`list[str]`, defaults to `["repmixer", "repmixer", "repmixer", "attention"]`): `"repmixer"` or
            `"attention"` blocks. The width of an attention stage is a multiple of 32 (heads of 32 channels).
        downsamples (`list[bool]`, defaults to `[False, True, True, True]`): whether the stage opens with a
            downsampling layer (always when its width differs from the previous stage's; never for the first stage).
        se_downsamples (`list[bool]`, defaults to `[False, False, True, True]`): whether that downsampling layer has
            squeeze-and-excitation.
        position_encodings (`list[bool]`, defaults to `[False, False, False, True]`): whether the stage has a
            conditional position encoding (RepCPE) after its downsampling (timm's `pos_embs`).

    And:
        stem_scale_branch (`bool`, defaults to `True`): whether the stem's MobileOne blocks have a 1x1 branch beside
            their kxk one (MCi3/MCi4 have none). Fused away in the inference-time form, where it only says what was
            fused.
        attention_norm (`str`, defaults to `"batch_norm"`): the norm before the attention, `"batch_norm"` or
            `"layer_norm"` (channels-first LayerNorm: MCi3/MCi4).
        reparameterized (`bool`, defaults to `False`): `False`: the training-time form (branches with BatchNorm);
            `True`: the inference-time form (each reparameterisable part one convolution with a bias).
        image_size (`int`, defaults to 256): the size the model was trained at (what the image processor resizes
            to); the tower is convolutional and runs at any size with `interpolate_pos_encoding=True`.
        projection_dim (`int`, defaults to 512): width of the joint space (`visual_projection`, with a bias: timm's
            classifier head).

    The width of the pooled output, `hidden_size`, is the final block's: twice the last stage's.
    """

    model_type = "dualclip_fastvit_vision_model"
    base_config_key = "vision_config"

    depths: list[int] | tuple[int, ...] = (4, 12, 20, 4)
    hidden_sizes: list[int] | tuple[int, ...] = (64, 128, 256, 512)
    mlp_ratios: list[int | float] | tuple[int | float, ...] = (3, 3, 3, 3)
    token_mixers: list[Literal["repmixer", "attention"]] | tuple[Literal["repmixer", "attention"], ...] = (
        "repmixer", "repmixer", "repmixer", "attention",
    )
    downsamples: list[bool] | tuple[bool, ...] = (False, True, True, True)
    se_downsamples: list[bool] | tuple[bool, ...] = (False, False, True, True)
    position_encodings: list[bool] | tuple[bool, ...] = (False, False, False, True)
    stem_scale_branch: bool = True
    attention_norm: Literal["batch_norm", "layer_norm"] = "batch_norm"
    reparameterized: bool = False
    num_channels: int = 3
    image_size: int = 256
    projection_dim: int = 512
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    _STAGE_FIELDS = ("depths", "hidden_sizes", "mlp_ratios", "token_mixers", "downsamples", "se_downsamples",
                     "position_encodings")

    def __post_init__(self, **kwargs):
        for name in self._STAGE_FIELDS:
            setattr(self, name, list(getattr(self, name)))
        super().__post_init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        """Width of the pooled output: the final block's, twice the last stage's."""
        return FINAL_WIDTH_RATIO * self.hidden_sizes[-1]

    @property
    def projection_bias(self) -> bool:
        """`visual_projection` has a bias, always (timm's classifier head)."""
        return True

    def validate_architecture(self):
        """Raises `ValueError` naming the field when a value is invalid or contradicts another."""
        lengths = {name: len(getattr(self, name)) for name in self._STAGE_FIELDS}
        if len(set(lengths.values())) != 1 or not lengths["depths"]:
            raise ValueError(f"the per-stage lists must have one entry per stage, got lengths {lengths}")
        if not all(n > 0 for n in self.depths) or not all(w > 0 for w in self.hidden_sizes):
            raise ValueError(f"`depths` ({self.depths}) and `hidden_sizes` ({self.hidden_sizes}) must be positive")
        if self.downsamples[0]:
            raise ValueError("`downsamples[0]` must be False: the stem already reduces the first stage's input")
        for index in range(1, len(self.depths)):
            previous, width = self.hidden_sizes[index - 1], self.hidden_sizes[index]
            if width != previous and not self.downsamples[index]:
                raise ValueError(f"`downsamples[{index}]` must be True: the width changes from {previous} to {width}")
            if self.downsamples[index] and width % previous:
                raise ValueError(f"`hidden_sizes[{index}]` ({width}) must be a multiple of the previous stage's "
                                 f"({previous}): the downsampling convolution is grouped by input channel")
        for index, (mixer, width) in enumerate(zip(self.token_mixers, self.hidden_sizes)):
            if mixer == "attention" and width % ATTENTION_HEAD_DIM:
                raise ValueError(f"`hidden_sizes[{index}]` ({width}) of an attention stage must be a multiple of "
                                 f"{ATTENTION_HEAD_DIM} (the head width)")
        for index, (down, se) in enumerate(zip(self.downsamples, self.se_downsamples)):
            if se and not down:
                raise ValueError(f"`se_downsamples[{index}]` needs `downsamples[{index}]` (no downsampling layer)")


def _make_divisible(value: float, divisor: int) -> int:
    """timm's `make_divisible` with `round_limit=0`: the nearest multiple of `divisor`, at least `divisor`."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


def _identity_kernel(channels: int, groups: int, kernel_size: int, like: torch.Tensor) -> torch.Tensor:
    """The kernel of a `groups`-grouped convolution that returns its input (a 1 at each channel's centre tap)."""
    kernel = torch.zeros(channels, channels // groups, kernel_size, kernel_size, dtype=like.dtype, device=like.device)
    centre = kernel_size // 2
    kernel[torch.arange(channels), torch.arange(channels) % (channels // groups), centre, centre] = 1
    return kernel


def _fuse_batch_norm(kernel: torch.Tensor, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """`(kernel, bias)` of a bias-free convolution followed by a BatchNorm in eval mode."""
    std = (norm.running_var + norm.eps).sqrt()
    scale = norm.weight / std
    return kernel * scale.reshape(-1, 1, 1, 1), norm.bias - norm.running_mean * scale


def _pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    pad = (size - kernel.shape[-1]) // 2
    return F.pad(kernel, [pad] * 4)


def _fused_conv(in_channels, out_channels, kernel_size, stride, groups, kernel, bias) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups,
                     device=kernel.device, dtype=kernel.dtype)
    with torch.no_grad():
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
    return conv


class DualClipConvBatchNorm(nn.Module):
    """A bias-free convolution followed by a BatchNorm (timm's `ConvNormAct` without activation: `conv`, `bn`).

    FastViT's kernels are odd and its strides 1 or 2, so timm's symmetric padding is `kernel_size // 2`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=NORM_EPS)

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _fuse_batch_norm(self.conv.weight, self.bn)

    def forward(self, hidden_states):
        return self.bn(self.conv(hidden_states))


class DualClipSqueezeExcite(nn.Module):
    """timm's `SEModule`: `x * sigmoid(fc2(relu(fc1(mean(x)))))`, with 1x1 convolutions `fc1`, `fc2`."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, kernel_size=1)
        self.fc2 = nn.Conv2d(reduced, channels, kernel_size=1)

    def forward(self, hidden_states):
        scale = self.fc2(F.relu(self.fc1(hidden_states.mean((2, 3), keepdim=True))))
        return hidden_states * torch.sigmoid(scale)


class DualClipMobileOneBlock(nn.Module):
    """timm's `MobileOneBlock`: `act(se(sum of branches))`. Training-time branches: `conv_kxk` (kxk convolutions
    with BatchNorm), `conv_scale` (a 1x1 one, padded to kxk when fused), `identity` (a BatchNorm of the input, when
    the shape is kept); inference-time: `reparam_conv`."""

    def __init__(self, in_channels, out_channels, kernel_size, *, reparameterized: bool, stride=1, groups=1,
                 squeeze_excite=False, activation=True, scale_branch=True, conv_branches=1):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
        if reparameterized:
            self.reparam_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                          padding=kernel_size // 2, groups=groups)
        else:
            self.reparam_conv = None
            self.identity = nn.BatchNorm2d(in_channels, eps=NORM_EPS) if in_channels == out_channels and stride == 1 else None
            branches = [DualClipConvBatchNorm(in_channels, out_channels, kernel_size, stride, groups)
                        for _ in range(conv_branches)]
            self.conv_kxk = nn.ModuleList(branches) if branches else None
            self.conv_scale = (DualClipConvBatchNorm(in_channels, out_channels, 1, stride, groups)
                               if kernel_size > 1 and scale_branch else None)
        # timm's `make_divisible(out / 16, 1)`.
        self.se = DualClipSqueezeExcite(out_channels, _make_divisible(out_channels / 16, 1)) if squeeze_excite else nn.Identity()
        self.act = nn.GELU() if activation else nn.Identity()

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(kernel, bias)` of the one convolution the branches sum to (timm's `_get_kernel_bias`)."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        parts = [branch.fused() for branch in self.conv_kxk or ()]
        if self.conv_scale is not None:
            kernel, bias = self.conv_scale.fused()
            parts.append((_pad_kernel(kernel, self.kernel_size), bias))
        if self.identity is not None:
            weight = self.identity.weight
            identity = _identity_kernel(self.in_channels, self.groups, self.kernel_size, weight)
            parts.append(_fuse_batch_norm(identity, self.identity))
        return sum(kernel for kernel, _ in parts), sum(bias for _, bias in parts)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replaces the branches by their fused convolution."""
        if self.reparam_conv is not None:
            return
        kernel, bias = self.fused()
        self.reparam_conv = _fused_conv(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                                        self.groups, kernel, bias)
        del self.conv_kxk, self.conv_scale, self.identity

    def forward(self, hidden_states):
        if self.reparam_conv is not None:
            out = self.reparam_conv(hidden_states)
        else:
            out = 0
            if self.identity is not None:
                out = self.identity(hidden_states)
            if self.conv_scale is not None:
                out = out + self.conv_scale(hidden_states)
            for branch in self.conv_kxk or ():
                out = out + branch(hidden_states)
        return self.act(self.se(out))


class DualClipReparamLargeKernelConv(nn.Module):
    """timm's `ReparamLargeKernelConv` as FastViT's downsampling uses it: a 7x7 stride-2 convolution grouped by input
    channel (`large_conv`) plus a 3x3 one (`small_conv`), each with BatchNorm (or fused: `reparam_conv`), then
    optional squeeze-and-excitation and GELU."""

    def __init__(self, in_channels: int, out_channels: int, *, reparameterized: bool, squeeze_excite: bool):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        stride, groups = 2, in_channels
        if reparameterized:
            self.reparam_conv = nn.Conv2d(in_channels, out_channels, DOWNSAMPLE_KERNEL_SIZE, stride=stride,
                                          padding=DOWNSAMPLE_KERNEL_SIZE // 2, groups=groups)
        else:
            self.reparam_conv = None
            self.large_conv = DualClipConvBatchNorm(in_channels, out_channels, DOWNSAMPLE_KERNEL_SIZE, stride, groups)
            self.small_conv = DualClipConvBatchNorm(in_channels, out_channels, DOWNSAMPLE_SMALL_KERNEL_SIZE, stride,
                                                    groups)
        self.se = (DualClipSqueezeExcite(out_channels, _make_divisible(out_channels * 0.25, 8))
                   if squeeze_excite else nn.Identity())
        self.act = nn.GELU()

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replaces the two branches by their fused convolution."""
        if self.reparam_conv is not None:
            return
        large_kernel, large_bias = self.large_conv.fused()
        small_kernel, small_bias = self.small_conv.fused()
        kernel = large_kernel + _pad_kernel(small_kernel, DOWNSAMPLE_KERNEL_SIZE)
        self.reparam_conv = _fused_conv(self.in_channels, self.out_channels, DOWNSAMPLE_KERNEL_SIZE, 2,
                                        self.in_channels, kernel, large_bias + small_bias)
        del self.large_conv, self.small_conv

    def forward(self, hidden_states):
        if self.reparam_conv is not None:
            out = self.reparam_conv(hidden_states)
        else:
            out = self.large_conv(hidden_states) + self.small_conv(hidden_states)
        return self.act(self.se(out))


class DualClipFastVitDownsample(nn.Module):
    """timm's `PatchEmbed`: the large-kernel stride-2 convolution, then a 1x1 MobileOne block with GELU."""

    def __init__(self, in_channels: int, out_channels: int, *, reparameterized: bool, squeeze_excite: bool):
        super().__init__()
        self.large_kernel = DualClipReparamLargeKernelConv(in_channels, out_channels, reparameterized=reparameterized,
                                                           squeeze_excite=squeeze_excite)
        self.pointwise = DualClipMobileOneBlock(out_channels, out_channels, 1, reparameterized=reparameterized)

    def forward(self, hidden_states):
        return self.pointwise(self.large_kernel(hidden_states))


class DualClipRepConditionalPositionEncoding(nn.Module):
    """timm's `RepConditionalPosEnc` (RepCPE): `x + dwconv7x7(x)` (`pos_enc`), or fused: `reparam_conv`."""

    def __init__(self, channels: int, *, reparameterized: bool):
        super().__init__()
        self.channels = channels
        conv = nn.Conv2d(channels, channels, POSITION_ENCODING_KERNEL_SIZE, padding=POSITION_ENCODING_KERNEL_SIZE // 2,
                         groups=channels)
        if reparameterized:
            self.reparam_conv = conv
        else:
            self.reparam_conv, self.pos_enc = None, conv

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Folds the skip connection into the convolution."""
        if self.reparam_conv is not None:
            return
        weight = self.pos_enc.weight
        kernel = _identity_kernel(self.channels, self.channels, POSITION_ENCODING_KERNEL_SIZE, weight) + weight
        self.reparam_conv = _fused_conv(self.channels, self.channels, POSITION_ENCODING_KERNEL_SIZE, 1, self.channels,
                                        kernel, self.pos_enc.bias)
        del self.pos_enc

    def forward(self, hidden_states):
        if self.reparam_conv is not None:
            return self.reparam_conv(hidden_states)
        return self.pos_enc(hidden_states) + hidden_states


class DualClipLayerScale2d(nn.Module):
    """timm's `LayerScale2d`: a learned per-channel scale, `gamma` of shape `(channels, 1, 1)`."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels, 1, 1), LAYER_SCALE_INIT_VALUE))

    def init_dualclip_weights(self, factor: float) -> None:
        init.constant_(self.gamma, LAYER_SCALE_INIT_VALUE)

    def forward(self, hidden_states):
        return hidden_states * self.gamma


class DualClipRepMixer(nn.Module):
    """timm's `RepMixer`: `x + layer_scale(mixer(x) - norm(x))`, where `mixer` is a depthwise 3x3 MobileOne block
    and `norm` its identity branch alone (a BatchNorm); or fused: one depthwise convolution, `reparam_conv`."""

    def __init__(self, channels: int, *, reparameterized: bool):
        super().__init__()
        self.channels = channels
        kernel_size = REPMIXER_KERNEL_SIZE
        if reparameterized:
            self.reparam_conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        else:
            self.reparam_conv = None
            self.norm = DualClipMobileOneBlock(channels, channels, kernel_size, reparameterized=False, groups=channels,
                                               activation=False, scale_branch=False, conv_branches=0)
            self.mixer = DualClipMobileOneBlock(channels, channels, kernel_size, reparameterized=False,
                                                groups=channels, activation=False)
            self.layer_scale = DualClipLayerScale2d(channels)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Folds the residual, both blocks and the LayerScale into one depthwise convolution (timm's order)."""
        if self.reparam_conv is not None:
            return
        (mixer_kernel, mixer_bias), (norm_kernel, norm_bias) = self.mixer.fused(), self.norm.fused()
        gamma = self.layer_scale.gamma
        identity = _identity_kernel(self.channels, self.channels, REPMIXER_KERNEL_SIZE, mixer_kernel)
        kernel = identity + gamma.unsqueeze(-1) * (mixer_kernel - norm_kernel)
        bias = gamma.reshape(-1) * (mixer_bias - norm_bias)
        self.reparam_conv = _fused_conv(self.channels, self.channels, REPMIXER_KERNEL_SIZE, 1, self.channels, kernel,
                                        bias)
        del self.norm, self.mixer, self.layer_scale

    def forward(self, hidden_states):
        if self.reparam_conv is not None:
            return self.reparam_conv(hidden_states)
        return hidden_states + self.layer_scale(self.mixer(hidden_states) - self.norm(hidden_states))


class DualClipConvMlp(nn.Module):
    """timm's `ConvMlp`: depthwise 7x7 convolution with BatchNorm (`conv`), then `fc2(gelu(fc1(x)))` with 1x1
    convolutions. Not reparameterised (timm keeps its BatchNorm in both forms)."""

    def __init__(self, channels: int, hidden_channels: int):
        super().__init__()
        self.conv = DualClipConvBatchNorm(channels, channels, MLP_DEPTHWISE_KERNEL_SIZE, groups=channels)
        self.fc1 = nn.Conv2d(channels, hidden_channels, kernel_size=1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_channels, channels, kernel_size=1)

    def forward(self, hidden_states):
        return self.fc2(self.act(self.fc1(self.conv(hidden_states))))


class DualClipFastVitAttention(nn.Module):
    """Multi-head self-attention over the positions of a feature map, heads of 32 channels, on transformers'
    attention interface: `q_proj`, `k_proj`, `v_proj` without bias (timm's `qkv`), `out_proj` with one (`proj`).
    Returns `(feature map, attention weights or None)`."""

    def __init__(self, config: DualClipFastVitVisionConfig, channels: int):
        super().__init__()
        self.config = config
        self.head_dim = ATTENTION_HEAD_DIM
        self.num_heads = channels // ATTENTION_HEAD_DIM
        self.scale = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(channels, channels, bias=False)
        self.k_proj = nn.Linear(channels, channels, bias=False)
        self.v_proj = nn.Linear(channels, channels, bias=False)
        self.out_proj = nn.Linear(channels, channels)

    def forward(self, hidden_states, **kwargs):
        batch, channels, height, width = hidden_states.shape
        tokens = hidden_states.flatten(2).transpose(1, 2)

        def heads(projection):
            return projection(tokens).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attended, weights = attention_interface(
            self, heads(self.q_proj), heads(self.k_proj), heads(self.v_proj), None, scaling=self.scale, dropout=0.0,
            **kwargs,
        )
        attended = self.out_proj(attended.reshape(batch, height * width, channels))
        return attended.transpose(1, 2).reshape(batch, channels, height, width), weights


class DualClipRepMixerBlock(GradientCheckpointingLayer):
    """timm's `RepMixerBlock`: `x = token_mixer(x)`, then `x + layer_scale(mlp(x))`."""

    def __init__(self, config: DualClipFastVitVisionConfig, channels: int, mlp_ratio: float):
        super().__init__()
        self.token_mixer = DualClipRepMixer(channels, reparameterized=config.reparameterized)
        self.mlp = DualClipConvMlp(channels, int(channels * mlp_ratio))
        self.layer_scale = DualClipLayerScale2d(channels)

    def forward(self, hidden_states, **kwargs):
        hidden_states = self.token_mixer(hidden_states)
        return hidden_states + self.layer_scale(self.mlp(hidden_states))


class DualClipFastVitAttentionBlock(GradientCheckpointingLayer):
    """timm's `AttentionBlock`: `x + layer_scale_1(attn(norm(x)))`, then `x + layer_scale_2(mlp(x))`."""

    def __init__(self, config: DualClipFastVitVisionConfig, channels: int, mlp_ratio: float):
        super().__init__()
        if config.attention_norm == "layer_norm":
            self.norm = ConvNextLayerNorm(channels, eps=NORM_EPS, data_format="channels_first")
        else:
            self.norm = nn.BatchNorm2d(channels, eps=NORM_EPS)
        self.token_mixer = DualClipFastVitAttention(config, channels)
        self.layer_scale_1 = DualClipLayerScale2d(channels)
        self.mlp = DualClipConvMlp(channels, int(channels * mlp_ratio))
        self.layer_scale_2 = DualClipLayerScale2d(channels)

    def forward(self, hidden_states, **kwargs):
        attended, _ = self.token_mixer(self.norm(hidden_states), **kwargs)
        hidden_states = hidden_states + self.layer_scale_1(attended)
        return hidden_states + self.layer_scale_2(self.mlp(hidden_states))


class DualClipFastVitStage(nn.Module):
    """One stage: optional downsampling, optional RepCPE, then its blocks."""

    def __init__(self, config: DualClipFastVitVisionConfig, index: int):
        super().__init__()
        width = config.hidden_sizes[index]
        previous = config.hidden_sizes[index - 1] if index else width
        reparameterized = config.reparameterized
        self.downsample = (
            DualClipFastVitDownsample(previous, width, reparameterized=reparameterized,
                                      squeeze_excite=config.se_downsamples[index])
            if config.downsamples[index] else None
        )
        self.position_encoding = (DualClipRepConditionalPositionEncoding(width, reparameterized=reparameterized)
                                  if config.position_encodings[index] else None)
        block = DualClipFastVitAttentionBlock if config.token_mixers[index] == "attention" else DualClipRepMixerBlock
        self.blocks = nn.ModuleList(
            [block(config, width, config.mlp_ratios[index]) for _ in range(config.depths[index])]
        )

    def forward(self, hidden_states, **kwargs):
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        if self.position_encoding is not None:
            hidden_states = self.position_encoding(hidden_states)
        for block in self.blocks:
            hidden_states = block(hidden_states, **kwargs)
        return hidden_states


class DualClipFastVitStem(nn.Module):
    """timm's `convolutional_stem`: three MobileOne blocks with GELU (3x3 stride 2; depthwise 3x3 stride 2; 1x1)."""

    def __init__(self, config: DualClipFastVitVisionConfig):
        super().__init__()
        width, reparameterized = config.hidden_sizes[0], config.reparameterized
        scale_branch = config.stem_scale_branch
        self.layers = nn.ModuleList([
            DualClipMobileOneBlock(config.num_channels, width, 3, reparameterized=reparameterized, stride=2,
                                   scale_branch=scale_branch),
            DualClipMobileOneBlock(width, width, 3, reparameterized=reparameterized, stride=2, groups=width,
                                   scale_branch=scale_branch),
            DualClipMobileOneBlock(width, width, 1, reparameterized=reparameterized, scale_branch=scale_branch),
        ])

    def forward(self, pixel_values):
        for layer in self.layers:
            pixel_values = layer(pixel_values)
        return pixel_values


class DualClipFastVit(DualClipPreTrainedModel):
    """FastViT / MCi image tower: stem, stages, final MobileOne block, global average.

    `forward` returns a `BaseModelOutputWithPooling` with:
    - `pooler_output`: (batch, `hidden_size`), the global average of the final block's output (timm's pooled
      features, before the classifier that is `visual_projection`);
    - `last_hidden_state`: the final block's output as (batch, height * width, `hidden_size`), positions in row-major
      order (8 x 8 for a 256 x 256 input to a four-stage model);
    - `hidden_states` (when requested): the stem's output, then each stage's, as (batch, channels, height, width);
    - `attentions` (when requested, with an attention implementation that returns them): each attention block's.
    """

    config: DualClipFastVitVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["DualClipFastVitStem", "DualClipFastVitDownsample", "DualClipRepConditionalPositionEncoding",
                         "DualClipRepMixerBlock", "DualClipFastVitAttentionBlock", "DualClipMobileOneBlock"]
    _can_record_outputs = {
        "hidden_states": OutputRecorder(DualClipFastVitStage),
        "attentions": OutputRecorder(DualClipFastVitAttention, index=1),
    }

    def __init__(self, config: DualClipFastVitVisionConfig):
        super().__init__(config)
        self.embeddings = DualClipFastVitStem(config)
        self.stages = nn.ModuleList([DualClipFastVitStage(config, index) for index in range(len(config.depths))])
        last = config.hidden_sizes[-1]
        self.final_conv = DualClipMobileOneBlock(last, config.hidden_size, 3, reparameterized=config.reparameterized,
                                                 groups=last, squeeze_excite=True)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The stem's first block, the layer that reads pixels."""
        return self.embeddings.layers[0]

    @torch.no_grad()
    def reparameterize(self) -> "DualClipFastVit":
        """Fuses every reparameterisable part in place into its inference-time convolution, as timm's
        `reparameterize_model` does (same numbers in eval mode, fewer operations), and sets
        `config.reparameterized`; a no-op on an inference-time model. Returns the tower."""
        def fuse(parent: nn.Module) -> None:
            # Parents first, as timm: a RepMixer fuses its two MobileOne blocks itself and drops them.
            for child in parent.children():
                if hasattr(child, "reparameterize"):
                    child.reparameterize()
                fuse(child)

        fuse(self)
        self.config.reparameterized = True
        return self

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, pixel_values, interpolate_pos_encoding=False, pooled_only=False, **kwargs: Unpack[TransformersKwargs]
    ):
        """Encodes `pixel_values` (batch, channels, height, width); other sizes than `image_size` need
        `interpolate_pos_encoding=True` (nothing to interpolate: the tower is convolutional). `pooled_only` changes
        nothing: the average reads every position."""
        check_pixel_values(pixel_values, self.config, interpolate_pos_encoding)
        hidden_states = self.embeddings(pixel_values.to(self.dtype))
        for stage in self.stages:
            hidden_states = stage(hidden_states, **kwargs)
        hidden_states = self.final_conv(hidden_states)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states.flatten(2).transpose(1, 2),
            pooler_output=hidden_states.mean((2, 3)),
        )


# As the other image towers, this one reads checkpoints that still carry its `vision_model.` prefix.
register_checkpoint_conversion_mapping(
    "DualClipFastVit", [PrefixChange(prefix_to_remove="vision_model")], overwrite=True
)


__all__ = ["DualClipFastVitVisionConfig", "DualClipFastVit"]
