"""Tests for dualclip.losses: parity with transformers / OpenCLIP / a direct formula on one process, and
exactness of the cross-process versions against one process on the whole batch (2 gloo processes on
loopback). This file doubles as the worker script of the distributed test (``--worker``)."""

import math
import os
import socket
import subprocess
import sys
import tempfile
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

if __name__ == "__main__":
    # Distributed worker process: load only losses.py (it imports nothing but torch), not the whole
    # package with transformers, so the two worker processes start in a couple of seconds.
    import importlib.util

    _pkg = importlib.util.find_spec("dualclip")  # locates the package without importing it
    _spec = importlib.util.spec_from_file_location(
        "_dualclip_losses", os.path.join(_pkg.submodule_search_locations[0], "losses.py")
    )
    losses = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(losses)
else:
    from dualclip import losses

LOSS_TYPES = losses.LOSS_TYPES
clip_loss = losses.clip_loss
contrastive_loss = losses.contrastive_loss
gather_with_grad = losses.gather_with_grad
sigmoid_loss = losses.sigmoid_loss


def _pair(batch=6, dim=8, seed=0, dtype=torch.float32):
    """Correlated, L2-normalised image/text embeddings (matching rows are similar, so losses are not flat)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, dim, generator=g, dtype=dtype)
    text = image + 0.7 * torch.randn(batch, dim, generator=g, dtype=dtype)
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def _leaf(x):
    return x.detach().clone().requires_grad_(True)


# ----------------------------------------------------------------------------------------------------
# Single process
# ----------------------------------------------------------------------------------------------------


def test_infonce_matches_transformers_loss_and_gradients():
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss

    image, text = _pair()
    scale = torch.tensor(math.log(1 / 0.07))
    ours_in = [_leaf(image), _leaf(text), _leaf(scale)]
    ref_in = [_leaf(image), _leaf(text), _leaf(scale)]

    ours = contrastive_loss(*ours_in)
    # Exactly what transformers' CLIPModel.forward does.
    logits_per_text = torch.matmul(ref_in[1], ref_in[0].t()) * ref_in[2].exp()
    ref = image_text_contrastive_loss(logits_per_text)

    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    ours.backward()
    ref.backward()
    for a, b in zip(ours_in, ref_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_infonce_matches_open_clip():
    from open_clip.loss import ClipLoss

    image, text = _pair(batch=9, seed=1)
    scale = torch.tensor(math.log(20.0))
    ref = ClipLoss()(image, text, scale.exp())  # OpenCLIP takes the exponentiated scale
    torch.testing.assert_close(contrastive_loss(image, text, scale), ref, rtol=1e-6, atol=1e-6)


def _sigmoid_reference(image, text, logit_scale, logit_bias):
    """-(1/B) * sum_ij log sigmoid(z_ij * (exp(s) * <img_i, txt_j> + b)), z = +1 on i == j, else -1."""
    batch = image.shape[0]
    scale = math.exp(float(logit_scale))
    total = 0.0
    for i in range(batch):
        for j in range(batch):
            z = 1.0 if i == j else -1.0
            logit = scale * float(image[i].double() @ text[j].double()) + float(logit_bias)
            total += math.log(1.0 / (1.0 + math.exp(-z * logit)))
    return -total / batch


@pytest.mark.parametrize("logit_bias", [-10.0, 0.0, 3.0])
def test_sigmoid_matches_direct_formula(logit_bias):
    image, text = _pair(batch=7, seed=2)
    logit_scale = torch.tensor(math.log(10.0))
    ours = sigmoid_loss(image, text, logit_scale, torch.tensor(logit_bias))
    ref = _sigmoid_reference(image, text, logit_scale, logit_bias)
    assert ours.item() == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_sigmoid_matches_open_clip():
    from open_clip.loss import SigLipLoss

    image, text = _pair(batch=8, seed=3)
    logit_scale, logit_bias = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    ref = SigLipLoss()(image, text, logit_scale.exp(), logit_bias)
    torch.testing.assert_close(sigmoid_loss(image, text, logit_scale, logit_bias), ref, rtol=1e-6, atol=1e-6)


def test_clip_loss_dispatch_and_scalar_forms():
    image, text = _pair(seed=4)
    s, b = torch.tensor(2.3), torch.tensor(-4.0)
    assert torch.equal(clip_loss("infonce", image, text, s), contrastive_loss(image, text, s))
    # A bias cannot change a softmax cross-entropy; the dispatcher accepts and ignores it.
    assert torch.equal(clip_loss("infonce", image, text, s, b), contrastive_loss(image, text, s))
    assert torch.equal(clip_loss("sigmoid", image, text, s, b), sigmoid_loss(image, text, s, b))
    # Python floats and shape-(1,) tensors are accepted as scalars.
    assert torch.equal(sigmoid_loss(image, text, 2.3, -4.0), sigmoid_loss(image, text, s, b))
    assert torch.equal(contrastive_loss(image, text, s.reshape(1)), contrastive_loss(image, text, s))
    assert set(LOSS_TYPES) == {"infonce", "sigmoid"}


def test_no_clamping_inside_the_loss():
    # The caller owns clamping: a scale above ln(100) is used as given and keeps its gradient.
    image, text = _pair(seed=5)
    big = torch.tensor(math.log(500.0), requires_grad=True)
    loss = contrastive_loss(image, text, big)
    loss.backward()
    assert big.grad is not None and big.grad.abs().item() > 0
    logits = text @ image.t() * 500.0
    labels = torch.arange(len(logits))
    ref = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-6, atol=1e-6)


def test_half_precision_inputs_are_reduced_in_float32():
    image, text = _pair(batch=16, dim=32, seed=6)
    s, b = torch.tensor(math.log(100.0)), torch.tensor(-10.0)
    for fn, args in ((contrastive_loss, (s,)), (sigmoid_loss, (s, b))):
        low = fn(image.bfloat16(), text.bfloat16(), *args)
        assert low.dtype == torch.float32
        # Only the bf16 matmul rounds (about 3 significant digits); the reduction itself is float32.
        ref = fn(image.bfloat16().float(), text.bfloat16().float(), *args)
        torch.testing.assert_close(low, ref, rtol=2e-3, atol=0)
    assert contrastive_loss(image.double(), text.double(), s).dtype == torch.float64
    # Towers in different dtypes meet in the wider one.
    mixed = sigmoid_loss(image.bfloat16(), text, s, b)
    torch.testing.assert_close(mixed, sigmoid_loss(image.bfloat16().float(), text, s, b))


def test_gather_with_grad_is_identity_without_process_group():
    assert not dist.is_initialized()
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x


# ----------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------

_GOOD = _pair(batch=4, dim=8, seed=7)


@pytest.mark.parametrize("fn", ["infonce", "sigmoid"])
@pytest.mark.parametrize(
    "image, text, match",
    [
        (_GOOD[0], _GOOD[1][:3], "same batch size"),
        (_GOOD[0][:0], _GOOD[1][:0], "image_embeds is an empty batch"),
        (_GOOD[0], _GOOD[1][:0], "text_embeds is an empty batch"),
        (_GOOD[0][0], _GOOD[1][0], "image_embeds must be 2-D"),
        (_GOOD[0], _GOOD[1].unsqueeze(0), "text_embeds must be 2-D"),
        (_GOOD[0], _GOOD[1][:, :5], "same embedding dim"),
        (_GOOD[0].numpy(), _GOOD[1], "image_embeds must be a torch.Tensor"),
        (_GOOD[0], (_GOOD[1] > 0).long(), "text_embeds must be a floating-point"),
    ],
)
def test_bad_embeddings_raise(fn, image, text, match):
    with pytest.raises(ValueError, match=match):
        clip_loss(fn, image, text, torch.tensor(1.0), torch.tensor(0.0))


def test_bad_scalars_and_loss_type_raise():
    image, text = _GOOD
    with pytest.raises(ValueError, match="logit_bias"):
        sigmoid_loss(image, text, torch.tensor(1.0), None)
    with pytest.raises(ValueError, match="logit_bias"):
        clip_loss("sigmoid", image, text, torch.tensor(1.0))
    with pytest.raises(ValueError, match="logit_scale"):
        contrastive_loss(image, text, torch.ones(2))
    with pytest.raises(ValueError, match="logit_scale"):
        contrastive_loss(image, text, None)
    with pytest.raises(ValueError, match="logit_bias"):
        sigmoid_loss(image, text, 1.0, torch.zeros(3))
    with pytest.raises(ValueError, match="loss_type 'softmax'"):
        clip_loss("softmax", image, text, torch.tensor(1.0))


# ----------------------------------------------------------------------------------------------------
# Two processes (gloo on loopback) against one process on the whole batch
# ----------------------------------------------------------------------------------------------------

WORLD = 2
GLOBAL_BATCH, DIM = 8, 6
SPLITS = [(4, 4), (5, 3)]  # equal, and unequal local batches


def _params():
    """The 'model': raw embedding tables (rows = samples), a log scale and a bias. Same on every rank."""
    g = torch.Generator().manual_seed(123)
    image = torch.randn(GLOBAL_BATCH, DIM, generator=g)
    text = image + 0.8 * torch.randn(GLOBAL_BATCH, DIM, generator=g)
    return {
        "image_table": image,
        "text_table": text,
        "logit_scale": torch.tensor(math.log(10.0)),
        "logit_bias": torch.tensor(-3.0),
    }


def _forward(p, loss_type, rows, gather):
    image = F.normalize(p["image_table"][rows], dim=-1)
    text = F.normalize(p["text_table"][rows], dim=-1)
    bias = p["logit_bias"] if loss_type == "sigmoid" else None
    return clip_loss(loss_type, image, text, p["logit_scale"], bias, gather=gather)


def _rows(split, rank):
    start = sum(split[:rank])
    return slice(start, start + split[rank])


def _reference(loss_type):
    """One process, whole batch."""
    p = {k: _leaf(v) for k, v in _params().items()}
    loss = _forward(p, loss_type, slice(None), gather=True)
    loss.backward()
    grads = {k: (v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in p.items()}
    return {"loss": loss.detach(), "grads": grads}


def _average(t, world):
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / world


def _manual_step(loss_type, split, gather, rank, world):
    """Local loss on this rank's rows, gradients all-reduced and divided by the world size (as DDP does)."""
    p = {k: _leaf(v) for k, v in _params().items()}
    loss = _forward(p, loss_type, _rows(split, rank), gather)
    loss.backward()
    grads = {k: _average(v.grad if v.grad is not None else torch.zeros_like(v), world) for k, v in p.items()}
    return {"loss": _average(loss, world), "grads": grads}


def _ddp_step(loss_type, split, rank, world):
    """The same through a real DistributedDataParallel wrapper."""

    class Tables(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for k, v in _params().items():
                if k != "logit_bias" or loss_type == "sigmoid":
                    self.register_parameter(k, torch.nn.Parameter(v.clone()))

        def forward(self, rows):
            return _forward(dict(self.named_parameters()), loss_type, rows, gather=True)

    module = Tables()
    model = torch.nn.parallel.DistributedDataParallel(module)
    loss = model(_rows(split, rank))
    loss.backward()
    grads = {k: v.grad.detach().clone() for k, v in module.named_parameters()}
    grads.setdefault("logit_bias", torch.zeros(()))
    return {"loss": _average(loss, world), "grads": grads}


def _gather_check(rank, world):
    """gather_with_grad on unequal slices: values in rank order, gradient = sum over ranks for own rows."""
    split = SPLITS[1]
    full = torch.arange(GLOBAL_BATCH * 2, dtype=torch.float32).reshape(GLOBAL_BATCH, 2)
    local = _leaf(full[_rows(split, rank)])
    gathered = gather_with_grad(local)
    weights = torch.full_like(gathered, float(rank + 1))
    (gathered * weights).sum().backward()
    return {"gathered": gathered.detach(), "grad": local.grad}


def _worker(rank, world, port, out):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        results = {"gather": _gather_check(rank, world)}
        for loss_type in LOSS_TYPES:
            for split in SPLITS:
                for gather in (True, False):
                    results[(loss_type, split, gather)] = _manual_step(loss_type, split, gather, rank, world)
            results[(loss_type, "ddp")] = _ddp_step(loss_type, SPLITS[1], rank, world)
        torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        outs = [os.path.join(tmp, f"rank{r}.pt") for r in range(WORLD)]
        procs = [
            subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker", str(r), str(WORLD), str(port), outs[r]],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for r in range(WORLD)
        ]
        logs = []
        try:
            for proc in procs:
                logs.append(proc.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for proc in procs:
                proc.kill()
            pytest.fail("distributed loss workers timed out")
        for r, proc in enumerate(procs):
            assert proc.returncode == 0, f"rank {r} failed:\n{logs[r]}"
        return [torch.load(o) for o in outs]


def _assert_same(got, ref, label):
    torch.testing.assert_close(got["loss"], ref["loss"], rtol=0, atol=1e-5, msg=f"{label}: loss")
    for k, g in ref["grads"].items():
        torch.testing.assert_close(got["grads"][k], g, rtol=0, atol=1e-5, msg=f"{label}: grad {k}")


def test_two_processes_equal_one_process_on_whole_batch():
    # One test for the whole distributed run, so pytest-xdist starts the worker processes only once.
    results = _run_two_processes()

    split = SPLITS[1]
    full = torch.arange(GLOBAL_BATCH * 2, dtype=torch.float32).reshape(GLOBAL_BATCH, 2)
    for rank, res in enumerate(results):
        assert torch.equal(res["gather"]["gathered"], full)
        # Each rank weighted the gathered tensor by (rank + 1): the local slice receives 1 + 2.
        assert torch.equal(res["gather"]["grad"], torch.full((split[rank], 2), 3.0))

    for loss_type in LOSS_TYPES:
        ref = _reference(loss_type)
        for rank, res in enumerate(results):
            for split in SPLITS:
                _assert_same(res[(loss_type, split, True)], ref, f"{loss_type} split={split} rank={rank}")
            _assert_same(res[(loss_type, "ddp")], ref, f"{loss_type} DDP rank={rank}")
        # Without gathering, each process only sees its own negatives: a different loss and gradients.
        for split in SPLITS:
            got = results[0][(loss_type, split, False)]
            assert abs(got["loss"] - ref["loss"]).item() > 0.05, (loss_type, split)
            for k in ("image_table", "text_table", "logit_scale"):
                diff = (got["grads"][k] - ref["grads"][k]).abs().max().item()
                assert diff > 0.01, (loss_type, split, k, diff)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
