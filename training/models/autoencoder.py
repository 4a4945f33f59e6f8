"""Convolutional autoencoder (AE) and β-VAE for ensemble members of shape (C, H, W).

Architecture (DESIGN.md §4): the encoder is a stack of ``conv 4×4 stride 2`` blocks
(channels 32, 64, 128, 256, then 256) that halves the working size down to 4×4, each block
followed by batch norm (switchable), LeakyReLU(0.2) and dropout (switchable; the paper's best
was 0.3–0.4), then a linear layer to the latent code (AE: z; β-VAE: μ and log σ²). The decoder
mirrors it with transposed convolutions and ends with a 3×3 convolution without activation
(fields are normalised to zero mean and unit variance, so outputs are unbounded).

Working sizes are 32, 64, 128 and 256 px (3, 4, 5 and 6 down-samplings). Members of any other
shape are adapted *inside* the model, so the exported ONNX encoder takes members exactly as they
are (after normalisation):

- if ``max(H, W) <= 256``: zero-padded (zero = the training mean after normalisation),
  centred, to the smallest working size ``S >= max(H, W)``; the decoder's output is cropped back
  to H×W, so the reconstruction loss sees only real pixels (e.g. 16×16 → 32, 100×60 → 128);
- if ``max(H, W) > 256``: resampled (bilinear, antialiased) so that the longer side is 256,
  then padded as above; the decoder's output is resampled back to H×W.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sense_core.errors import SenseError
from sense_training.config import ARCHITECTURES, ModelConfig

WORKING_SIZES = (32, 64, 128, 256)
BOTTLENECK = 4  # spatial size of the last encoder feature map
MAX_CHANNELS = 256


@dataclass
class AutoencoderConfig:
    """Everything needed to rebuild a model (stored in checkpoints and bundles)."""

    input_shape: tuple[int, int, int]
    arch: str = "ae"
    latent_dim: int = 32
    dropout: float = 0.0
    batch_norm: bool = True
    base_channels: int = 32

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(s) for s in self.input_shape)  # type: ignore[assignment]
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise SenseError(f"input shape must be (C, H, W), got {self.input_shape}")
        if self.arch not in ARCHITECTURES:
            raise SenseError(f"unknown architecture {self.arch!r}; choose {ARCHITECTURES}")
        if self.latent_dim < 1:
            raise SenseError(f"latent size must be >= 1, got {self.latent_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise SenseError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.base_channels < 1:
            raise SenseError(f"base_channels must be >= 1, got {self.base_channels}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        return data

    @classmethod
    def from_model(cls, model: ModelConfig, input_shape: tuple[int, ...]) -> AutoencoderConfig:
        """The network of the encoder configuration's ``model`` section for members of
        ``input_shape``."""
        return cls(input_shape=tuple(input_shape), **model.to_dict())  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoencoderConfig:
        return cls(**{**data, "input_shape": tuple(data["input_shape"])})


def working_geometry(height: int, width: int) -> tuple[int, tuple[int, int] | None]:
    """``(S, resized)``: the working size and, when the member must be resampled first, the
    (height, width) it is resampled to (``None``: padding only)."""
    longest = max(height, width)
    if longest <= WORKING_SIZES[-1]:
        return next(s for s in WORKING_SIZES if s >= longest), None
    scale = WORKING_SIZES[-1] / longest
    resized = (max(1, round(height * scale)), max(1, round(width * scale)))
    return WORKING_SIZES[-1], resized


class InputAdapter(nn.Module):
    """Maps members (H, W) to the working square S×S and model outputs back (see module doc)."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height, self.width = int(height), int(width)
        self.size, self.resized = working_geometry(self.height, self.width)
        inner_h, inner_w = self.resized or (self.height, self.width)
        self.top = (self.size - inner_h) // 2
        self.left = (self.size - inner_w) // 2
        self.inner = (inner_h, inner_w)
        # F.pad order: left, right, top, bottom
        self.padding = (
            self.left,
            self.size - inner_w - self.left,
            self.top,
            self.size - inner_h - self.top,
        )

    def to_working(self, x: torch.Tensor) -> torch.Tensor:
        if self.resized is not None:
            x = F.interpolate(
                x, size=self.resized, mode="bilinear", align_corners=False, antialias=True
            )
        if any(self.padding):
            x = F.pad(x, self.padding)
        return x

    def from_working(self, y: torch.Tensor) -> torch.Tensor:
        inner_h, inner_w = self.inner
        y = y[:, :, self.top : self.top + inner_h, self.left : self.left + inner_w]
        if self.resized is not None:
            y = F.interpolate(
                y, size=(self.height, self.width), mode="bilinear", align_corners=False
            )
        return y


def _channels(level: int, base: int) -> int:
    return min(base * 2**level, MAX_CHANNELS)


class ConvAutoencoder(nn.Module):
    """Convolutional AE (``arch="ae"``) or β-VAE (``arch="vae"``); see the module docstring.

    ``forward(x)`` returns a dict with ``reconstruction`` (same shape as x), ``code`` (the
    deterministic latent: z, or μ for the VAE), and for the VAE ``mu``, ``logvar`` and ``z``
    (a reparameterised sample in training mode, μ in evaluation mode).
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        channels, height, width = config.input_shape
        self.adapter = InputAdapter(height, width)
        levels = {32: 3, 64: 4, 128: 5, 256: 6}[self.adapter.size]
        widths = [_channels(i, config.base_channels) for i in range(levels)]
        blocks: list[nn.Module] = []
        previous = channels
        for out in widths:
            blocks.append(self._down(previous, out))
            previous = out
        self.encoder = nn.Sequential(*blocks)
        flat = widths[-1] * BOTTLENECK * BOTTLENECK
        head_out = config.latent_dim * (2 if config.arch == "vae" else 1)
        self.to_latent = nn.Sequential(nn.Flatten(), nn.Linear(flat, head_out))
        self.from_latent = nn.Linear(config.latent_dim, flat)
        self.bottleneck_channels = widths[-1]
        ups: list[nn.Module] = []
        reversed_widths = widths[::-1]
        for i, inp in enumerate(reversed_widths):
            out = reversed_widths[i + 1] if i + 1 < len(reversed_widths) else widths[0]
            ups.append(self._up(inp, out))
        self.decoder = nn.Sequential(*ups)
        self.to_fields = nn.Conv2d(widths[0], channels, kernel_size=3, padding=1)

    def _norm(self, channels: int) -> nn.Module:
        return nn.BatchNorm2d(channels) if self.config.batch_norm else nn.Identity()

    def _down(self, inp: int, out: int) -> nn.Module:
        layers = [
            nn.Conv2d(inp, out, 4, stride=2, padding=1, bias=not self.config.batch_norm),
            self._norm(out),
            nn.LeakyReLU(0.2),
        ]
        if self.config.dropout > 0:
            layers.append(nn.Dropout(self.config.dropout))
        return nn.Sequential(*layers)

    def _up(self, inp: int, out: int) -> nn.Module:
        return nn.Sequential(
            nn.ConvTranspose2d(inp, out, 4, stride=2, padding=1, bias=not self.config.batch_norm),
            self._norm(out),
            nn.LeakyReLU(0.2),
        )

    @property
    def variational(self) -> bool:
        return self.config.arch == "vae"

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def input_dim(self) -> int:
        channels, height, width = self.config.input_shape
        return channels * height * width

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(code, logvar)``: AE → (z, None); VAE → (μ, log σ²)."""
        self._check_input(x)
        head = self.to_latent(self.encoder(self.adapter.to_working(x)))
        if self.variational:
            mu, logvar = head.chunk(2, dim=1)
            return mu, logvar
        return head, None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        features = self.from_latent(z).view(
            len(z), self.bottleneck_channels, BOTTLENECK, BOTTLENECK
        )
        return self.adapter.from_working(self.to_fields(self.decoder(features)))

    def forward(self, x: torch.Tensor, reconstruct: int | None = None) -> dict[str, torch.Tensor]:
        """Encode every member of ``x``; decode the first ``reconstruct`` of them (all by
        default). The instance-contrastive term needs only the codes of its second views, and
        the decoder is most of a step's cost, so leaving them out makes that step about 2x
        cheaper."""
        code, logvar = self.encode(x)
        out: dict[str, torch.Tensor] = {"code": code}
        if logvar is None:
            z = code
        else:
            z = code
            if self.training:
                z = code + torch.randn_like(code) * torch.exp(0.5 * logvar)
            out.update(mu=code, logvar=logvar, z=z)
        out["reconstruction"] = self.decode(z if reconstruct is None else z[:reconstruct])
        return out

    def _check_input(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != tuple(self.config.input_shape):
            raise SenseError(
                f"members of shape {tuple(x.shape[1:])} given to a model built for "
                f"{tuple(self.config.input_shape)}"
            )


class LatentEncoder(nn.Module):
    """The part that is exported: normalised fields (B, C, H, W) → latent (B, M) (VAE: μ)."""

    def __init__(self, model: ConvAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x)[0]


def build_autoencoder(config: AutoencoderConfig | dict[str, Any]) -> ConvAutoencoder:
    """A model from its config (or the config's dict, as stored in checkpoints)."""
    if isinstance(config, dict):
        config = AutoencoderConfig.from_dict(config)
    return ConvAutoencoder(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
