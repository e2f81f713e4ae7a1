import torch


class FrozenBatchNorm2d(torch.nn.Module):
    """Only referenced by open_clip's freeze helpers, which the tests never call."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("torchvision stand-in: FrozenBatchNorm2d is not available in tests")
