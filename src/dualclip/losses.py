"""Contrastive losses for dual-tower image/text models, kept apart from the model (OpenCLIP style).

Two losses are provided:

* :func:`contrastive_loss` -- the CLIP softmax (InfoNCE) loss: symmetric cross-entropy over the
  image->text and text->image similarity matrices. On one process it equals
  ``transformers.models.clip.modeling_clip.image_text_contrastive_loss`` on the same logits.
* :func:`sigmoid_loss` -- the SigLIP loss: an independent binary log-sigmoid term for every image/text
  pair, positive on matching pairs and negative elsewhere, summed and divided by the batch size.

Both take already L2-normalised embeddings of shape ``(batch, dim)`` and the *log* of the logit scale
(the learned parameter as stored in the model; ``exp`` is applied here). They do not clamp it: the
caller owns that policy (the model clamps to ``<= ln(100)`` before calling, like OpenCLIP's trainer does),
so a value passed here is used as is and its gradient is never silently zeroed.

Multi-process training. When ``torch.distributed`` is initialised with more than one process and
``gather=True``, every process gathers the features of all processes *with gradients* and scores its own
rows against the whole global batch. The local loss is scaled so that, after the data-parallel engine
(DDP, FSDP, DeepSpeed, Accelerate, the ``Trainer``) averages gradients over processes, every parameter --
the towers and the shared ``logit_scale``/``logit_bias`` alike -- gets exactly the gradient of the loss on
the whole global batch computed by a single process. Local batch sizes may differ between processes.
Every process of the group must then call the loss (and run backward) together, as with any collective.

This module imports only ``torch`` and the standard library, so it can be shipped next to the modeling
file for ``trust_remote_code`` loading.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = [
    "LOSS_TYPES",
    "clip_loss",
    "contrastive_loss",
    "gather_with_grad",
    "sigmoid_loss",
]

#: Values accepted by :func:`clip_loss` (and by a config's loss type).
LOSS_TYPES = ("infonce", "sigmoid")

Scalar = Union[torch.Tensor, float]


# ----------------------------------------------------------------------------------------------------
# Cross-process gather
# ----------------------------------------------------------------------------------------------------


def _world_size(group=None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group=group)


def _gather_sizes(local_size: int, device: torch.device, group=None) -> list[int]:
    """Local batch sizes of every process in ``group``, in rank order."""
    size = torch.tensor([local_size], dtype=torch.long, device=device)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size(group=group))]
    dist.all_gather(sizes, size, group=group)
    return torch.cat(sizes).tolist()


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate ``tensor`` from every process along dim 0; gradients flow back to each local slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: Sequence[int], group):
        rank = dist.get_rank(group=group)
        ctx.group = group
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]

        # Collectives need one shape on every rank, so shorter local batches are zero-padded and trimmed.
        max_size = max(sizes)
        send = tensor.contiguous()
        if send.shape[0] < max_size:
            pad = send.new_zeros((max_size - send.shape[0],) + tuple(send.shape[1:]))
            send = torch.cat([send, pad], dim=0)
        parts = [torch.empty_like(send) for _ in sizes]
        dist.all_gather(parts, send, group=group)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        # Every process's loss depends on every process's rows, so the gradient of a local slice is the
        # sum over processes of their gradients w.r.t. that slice. all_reduce (not reduce_scatter) because
        # every backend, gloo included, has it and it copes with unequal slices; the tensor is only
        # (global batch x dim), small next to the model's own gradient all-reduce.
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start : ctx.stop], None, None


def gather_with_grad(tensor: torch.Tensor, *, group=None) -> torch.Tensor:
    """All-gather ``tensor`` along dim 0 from every process, keeping gradients for the local slice.

    Returns the concatenation, in rank order, of every process's ``tensor`` (local sizes along dim 0 may
    differ; the other dims must match). In backward, the gradient w.r.t. the local slice is the sum over
    all processes of their gradients w.r.t. that slice, so a loss computed on the gathered tensor by each
    process back-propagates into every process's inputs.

    Without an initialised ``torch.distributed`` process group (or with a world size of 1) the tensor is
    returned unchanged. Every process of ``group`` must call this (and run backward) collectively.

    Args:
        tensor: local tensor of shape ``(n, ...)``.
        group: process group; the default group when ``None``.
    """
    if _world_size(group) == 1:
        return tensor
    sizes = _gather_sizes(tensor.shape[0], tensor.device, group)
    return _AllGatherWithGrad.apply(tensor, sizes, group)


# ----------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------


def _check_embeds(image_embeds, text_embeds) -> None:
    for name, value in (("image_embeds", image_embeds), ("text_embeds", text_embeds)):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() != 2:
            raise ValueError(f"{name} must be 2-D (batch, dim), got shape {tuple(value.shape)}")
        if value.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch (shape {tuple(value.shape)})")
        if not value.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if image_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError(
            f"image_embeds and text_embeds must have the same batch size, got {image_embeds.shape[0]} "
            f"and {text_embeds.shape[0]}"
        )
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(
            f"image_embeds and text_embeds must have the same embedding dim, got {image_embeds.shape[1]} "
            f"and {text_embeds.shape[1]}"
        )


def _reduce_dtype(embeds: torch.Tensor) -> torch.dtype:
    # bf16/fp16 logits are reduced in float32 for an accurate loss; float64 stays float64.
    return torch.promote_types(embeds.dtype, torch.float32)


def _as_scalar(name: str, value: Optional[Scalar], like: torch.Tensor) -> torch.Tensor:
    if value is None:
        raise ValueError(f"{name} is required, got None")
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(float(value))
    if value.numel() != 1:
        raise ValueError(f"{name} must be a scalar (one element), got shape {tuple(value.shape)}")
    # .to keeps the autograd link to the parameter.
    return value.reshape(()).to(device=like.device, dtype=_reduce_dtype(like))


class _Partition:
    """Where this process's rows sit in the global batch."""

    def __init__(self, local_size: int, device: torch.device, gather: bool, group):
        self.world_size = _world_size(group) if gather else 1
        if self.world_size == 1:
            self.sizes = [local_size]
            self.offset = 0
        else:
            self.sizes = _gather_sizes(local_size, device, group)
            self.offset = sum(self.sizes[: dist.get_rank(group=group)])
        self.local_size = local_size
        self.global_size = sum(self.sizes)
        self.group = group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return _AllGatherWithGrad.apply(tensor, self.sizes, self.group) if self.distributed else tensor

    def labels(self, device: torch.device) -> torch.Tensor:
        """Column of each local row's positive pair in the gathered matrix."""
        return torch.arange(self.offset, self.offset + self.local_size, device=device)

    def scale_local_loss(self, loss: torch.Tensor) -> torch.Tensor:
        # Each process's loss is a mean over its own rows of a per-row term r_i:
        #     L_p = (1 / n_p) * sum_{i in p} r_i,   while the single-process loss is L = (1 / B) * sum_i r_i.
        # Gradients reach a process's features from *every* process's loss (through the gather), and the
        # data-parallel engine then divides by the world size W, so parameters receive
        #     (1 / W) * d(sum_p c_p L_p),
        # which equals dL exactly when c_p * L_p = (W / B) * sum_{i in p} r_i, i.e. c_p = W * n_p / B.
        # With equal local batches c_p = 1 and the local mean is already right (OpenCLIP's local_loss).
        factor = self.world_size * self.local_size / self.global_size
        return loss if factor == 1.0 else loss * factor


def _prepare(image_embeds, text_embeds, gather: bool, group):
    _check_embeds(image_embeds, text_embeds)
    # Same device rule as transformers' CLIPModel (works with device_map splitting the towers); a common
    # dtype because the matmuls and the single-collective gather below need one.
    dtype = torch.promote_types(image_embeds.dtype, text_embeds.dtype)
    image_embeds = image_embeds.to(device=text_embeds.device, dtype=dtype)
    text_embeds = text_embeds.to(dtype)
    part = _Partition(text_embeds.shape[0], text_embeds.device, gather, group)
    return image_embeds, text_embeds, part


def _logits(rows: torch.Tensor, columns: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # The matmul stays in the embeddings' dtype (the expensive part, autocast applies); the (n x B)
    # logits are reduced in at least float32 so bf16/fp16 training gets an accurate loss. In float32 this
    # is the same arithmetic as transformers' CLIPModel: (text @ image.T) * logit_scale.exp().
    logits = torch.matmul(rows, columns.t())
    return logits.to(_reduce_dtype(logits)) * scale


# ----------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: Scalar,
    *,
    gather: bool = True,
    group=None,
) -> torch.Tensor:
    """CLIP softmax (InfoNCE) loss: mean of the text->image and image->text cross-entropies.

    On one process this is ``image_text_contrastive_loss(text_embeds @ image_embeds.T * logit_scale.exp())``
    from transformers' CLIP. Across processes (``torch.distributed`` initialised, world size > 1,
    ``gather=True``) each process scores its own rows against the features of all processes, gathered with
    gradients; after the usual data-parallel gradient averaging the result equals one process on the
    concatenated batch. Local batch sizes may differ between processes.

    Args:
        image_embeds: L2-normalised image embeddings, ``(batch, dim)``.
        text_embeds: L2-normalised text embeddings, ``(batch, dim)``; row ``i`` pairs with image row ``i``.
        logit_scale: the learned *log* temperature (scalar tensor or float); ``exp`` is applied here and no
            clamping is done (clamp before calling, e.g. ``logit_scale.clamp(max=math.log(100))``).
        gather: use negatives from all processes when running distributed. ``False`` computes the loss on
            the local batch only.
        group: ``torch.distributed`` process group; the default group when ``None``.

    Returns:
        Scalar loss, in float32 (float64 for float64 inputs).

    Raises:
        ValueError: on non-2-D, empty, non-float or mismatched embeddings, or a non-scalar ``logit_scale``.
    """
    image_embeds, text_embeds, part = _prepare(image_embeds, text_embeds, gather, group)
    scale = _as_scalar("logit_scale", logit_scale, text_embeds).exp()

    if not part.distributed:
        logits_per_text = _logits(text_embeds, image_embeds, scale)
        labels = part.labels(logits_per_text.device)
        return (F.cross_entropy(logits_per_text, labels) + F.cross_entropy(logits_per_text.t(), labels)) / 2

    # One collective for both modalities: the embeddings share their dim.
    gathered = part.gather(torch.cat([image_embeds, text_embeds], dim=1))
    all_image, all_text = gathered.split(image_embeds.shape[1], dim=1)
    logits_per_text = _logits(text_embeds, all_image, scale)  # local texts x global images
    logits_per_image = _logits(image_embeds, all_text, scale)  # local images x global texts
    labels = part.labels(logits_per_text.device)
    loss = (F.cross_entropy(logits_per_text, labels) + F.cross_entropy(logits_per_image, labels)) / 2
    return part.scale_local_loss(loss)


def sigmoid_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: Scalar,
    logit_bias: Scalar,
    *,
    gather: bool = True,
    group=None,
) -> torch.Tensor:
    """SigLIP sigmoid loss.

    ``-sum_ij log sigmoid(z_ij * (exp(logit_scale) * <image_i, text_j> + logit_bias)) / batch`` with
    ``z_ij = +1`` for matching pairs (``i == j``) and ``-1`` otherwise, as in the SigLIP paper and OpenCLIP's
    ``SigLipLoss``. Across processes (``torch.distributed`` initialised, world size > 1, ``gather=True``)
    each process scores its own images against the texts of all processes, gathered with gradients; after
    the usual data-parallel gradient averaging the result equals one process on the concatenated batch.

    Args:
        image_embeds: L2-normalised image embeddings, ``(batch, dim)``.
        text_embeds: L2-normalised text embeddings, ``(batch, dim)``; row ``i`` pairs with image row ``i``.
        logit_scale: the learned *log* scale (scalar tensor or float); ``exp`` is applied, no clamping.
        logit_bias: the learned bias (scalar tensor or float), added after scaling. Required.
        gather: use negatives from all processes when running distributed. ``False`` computes the loss on
            the local batch only.
        group: ``torch.distributed`` process group; the default group when ``None``.

    Returns:
        Scalar loss, in float32 (float64 for float64 inputs).

    Raises:
        ValueError: on non-2-D, empty, non-float or mismatched embeddings, a missing ``logit_bias`` or a
            non-scalar ``logit_scale``/``logit_bias``.
    """
    if logit_bias is None:
        raise ValueError("logit_bias is required for the sigmoid loss, got None")
    image_embeds, text_embeds, part = _prepare(image_embeds, text_embeds, gather, group)
    device = text_embeds.device
    scale = _as_scalar("logit_scale", logit_scale, text_embeds).exp()
    bias = _as_scalar("logit_bias", logit_bias, text_embeds)

    # The loss is a plain sum over (image, text) pairs, so gathering texts alone covers every pair once.
    all_text = part.gather(text_embeds)
    logits = _logits(image_embeds, all_text, scale) + bias  # local images x global texts
    signs = torch.full_like(logits, -1.0)
    signs[torch.arange(part.local_size, device=device), part.labels(device)] = 1.0
    loss = -F.logsigmoid(signs * logits).sum() / part.local_size
    return part.scale_local_loss(loss)


def clip_loss(
    loss_type: str,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: Scalar,
    logit_bias: Optional[Scalar] = None,
    *,
    gather: bool = True,
    group=None,
) -> torch.Tensor:
    """Dispatch to :func:`contrastive_loss` (``"infonce"``) or :func:`sigmoid_loss` (``"sigmoid"``).

    ``logit_bias`` is required for ``"sigmoid"``. For ``"infonce"`` it is accepted and ignored: adding the
    same constant to every logit leaves a softmax cross-entropy (and its gradients) unchanged.

    Raises:
        ValueError: for a ``loss_type`` not in :data:`LOSS_TYPES`, and for the inputs errors of the losses.
    """
    if loss_type == "infonce":
        return contrastive_loss(image_embeds, text_embeds, logit_scale, gather=gather, group=group)
    if loss_type == "sigmoid":
        return sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias, gather=gather, group=group)
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(map(repr, LOSS_TYPES))}")
