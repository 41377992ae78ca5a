"""Network definitions used by the test beds."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["EpsMLP", "ConvClassifier", "ResidualClassifier", "TimeCNN", "TimeMLP", "unet_config", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017; as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class EpsMLP(nn.Module):
    """eps-prediction MLP for 2-D data: ``eps(x, t) = MLP([x, emb(t)])`` with SiLU (TAG's toy uses 3 layers)."""

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, emb_dim: int = 32) -> None:
        super().__init__()
        self.config = {"dim": dim, "hidden": hidden, "layers": layers, "emb_dim": emb_dim}
        self.emb_dim = emb_dim
        mods: list[nn.Module] = []
        width = dim + emb_dim
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        mods.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(torch.cat([x, timestep_embedding(t, self.emb_dim)], dim=-1))


class _Heads(nn.Module):
    """One linear head per attribute; ``forward`` returns the first head's logits unless ``head`` is given."""

    def __init__(self, features: int, num_classes: list[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(features, k) for k in num_classes])

    def forward(self, f: torch.Tensor, head: int | None) -> torch.Tensor | list[torch.Tensor]:
        if head is None:
            return [h(f) for h in self.heads] if len(self.heads) > 1 else self.heads[0](f)
        return self.heads[head](f)


class ConvClassifier(nn.Module):
    """Guidance classifier: plain conv stack [conv3x3 - GroupNorm - SiLU] x2 per stage, avg-pool, linear heads.

    ``num_classes`` is a list, one head per attribute (digits: ``[10]``; shapes: ``[3, 3]`` = type, size).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, num_classes: list[int] = (10,), width: int = 32) -> None:
        super().__init__()
        num_classes = list(num_classes)
        self.config = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes, "width": width}
        stages = 2 if image_size <= 8 else 3
        layers: list[nn.Module] = []
        c_in = in_channels
        for s in range(stages):
            c = width * 2**s
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU()]
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU(), nn.AvgPool2d(2)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.feature_dim = c_in
        self.head = _Heads(c_in, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, feature_dim)``."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, head: int | None = None):
        return self.head(self.features(x), head)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class ResidualClassifier(nn.Module):
    """Independent evaluation classifier: a small ResNet (BatchNorm, ReLU, strided convs, 5x5 stem).

    A different architecture from :class:`ConvClassifier` so that guidance is never scored by the
    network it followed. ``features(x)`` (global-average-pooled last stage) defines the Fréchet distance.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, num_classes: list[int] = (10,), width: int = 48) -> None:
        super().__init__()
        num_classes = list(num_classes)
        self.config = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes, "width": width}
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 5, padding=2, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks = [_ResBlock(width, width, 1), _ResBlock(width, 2 * width, 2)]
        if image_size > 8:
            blocks += [_ResBlock(2 * width, 2 * width, 2), _ResBlock(2 * width, 2 * width, 2)]
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = 2 * width
        self.head = _Heads(2 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, feature_dim)``."""
        return self.blocks(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, head: int | None = None):
        return self.head(self.features(x), head)


class _ConditionEmbedding(nn.Module):
    """One learned embedding per categorical attribute, concatenated (TAG App. E.4: the conditional
    time predictor concatenates condition embeddings to the flattened features before the last layer)."""

    def __init__(self, cond_classes: list[int], emb_dim: int) -> None:
        super().__init__()
        self.cond_classes = list(cond_classes)
        self.tables = nn.ModuleList([nn.Embedding(k, emb_dim) for k in self.cond_classes])
        self.dim = emb_dim * len(self.cond_classes)

    def forward(self, f: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if not self.cond_classes:
            return f
        if cond is None:
            raise ValueError(f"cond: this time predictor is conditional on {len(self.cond_classes)} attribute(s); expected a LongTensor (B, {len(self.cond_classes)}), got None")
        cond = torch.as_tensor(cond, dtype=torch.long, device=f.device)
        if cond.dim() == 1:
            cond = cond[:, None]
        if cond.dim() != 2 or cond.shape[1] != len(self.cond_classes):
            raise ValueError(f"cond: expected a LongTensor (B, {len(self.cond_classes)}), got shape {tuple(cond.shape)}")
        if cond.shape[0] == 1 and f.shape[0] > 1:
            cond = cond.expand(f.shape[0], -1)
        for k, n in enumerate(self.cond_classes):
            if (cond[:, k] < 0).any() or (cond[:, k] >= n).any():
                raise ValueError(f"cond: attribute {k} must lie in [0, {n - 1}]")
        return torch.cat([f] + [table(cond[:, k]) for k, table in enumerate(self.tables)], dim=1)


class TimeCNN(nn.Module):
    """SimpleCNN time predictor ``phi(x[, c]) -> T logits`` (TAG, Park et al. 2025, App. E.4; the TCS predictor).

    Four blocks ``[conv3x3 (pad 1) -> ReLU -> 2x2 avg-pool]``, no normalisation layers, flatten, optional
    condition embeddings concatenated, one linear layer to ``num_timesteps`` logits. A block pools only
    while the output side stays >= 2 (8x8 digits: 8 -> 4 -> 2, then no pooling), so the head always
    sees ``2 * 2 * widths[-1]`` features.

    Project default ``widths = (16, 32, 64, 128)``: half the paper's 32/64/128/256 (which is available
    by passing it), so four predictors fit in the package budget and train in minutes on a CPU; the
    accuracy curves in ``docs/results/tag.md`` show what the narrower network reaches.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 32,
        num_timesteps: int = 1000,
        widths: list[int] = (16, 32, 64, 128),
        cond_classes: list[int] = (),
        emb_dim: int = 64,
    ) -> None:
        super().__init__()
        widths, cond_classes = list(widths), list(cond_classes)
        self.config = {"in_channels": in_channels, "image_size": image_size, "num_timesteps": num_timesteps,
                       "widths": widths, "cond_classes": cond_classes, "emb_dim": emb_dim}
        self.num_timesteps = num_timesteps
        layers: list[nn.Module] = []
        c_in, side = in_channels, image_size
        for c in widths:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU()]
            if side // 2 >= 2:
                layers.append(nn.AvgPool2d(2))
                side //= 2
            c_in = c
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.cond = _ConditionEmbedding(cond_classes, emb_dim)
        self.head = nn.Linear(side * side * c_in + self.cond.dim, num_timesteps)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.cond(self.body(x), cond))


class TimeMLP(nn.Module):
    """MLP time predictor for 2-D data (TAG's toy: 5 layers; width and activation unstated, here 128 and SiLU)."""

    def __init__(self, dim: int = 2, num_timesteps: int = 100, hidden: int = 128, layers: int = 5,
                 cond_classes: list[int] = (), emb_dim: int = 16) -> None:
        super().__init__()
        cond_classes = list(cond_classes)
        self.config = {"dim": dim, "num_timesteps": num_timesteps, "hidden": hidden, "layers": layers,
                       "cond_classes": cond_classes, "emb_dim": emb_dim}
        self.num_timesteps = num_timesteps
        mods: list[nn.Module] = []
        width = dim
        for _ in range(layers - 1):
            mods += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.body = nn.Sequential(*mods)
        self.cond = _ConditionEmbedding(cond_classes, emb_dim)
        self.head = nn.Linear(width + self.cond.dim, num_timesteps)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.cond(self.body(x), cond))


def unet_config(bed: str) -> dict:
    """The diffusers ``UNet2DModel`` configuration of a test bed ('digits', 'shapes' or 'mosaic').

    Sized for CPU training: digits ~0.7 M parameters (8 -> 4, attention at 4x4), shapes ~1.1 M
    (32 -> 16 -> 8 -> 4, attention at 4x4), mosaic ~2.5 M (64 -> 32 -> 16 -> 8, no attention).
    """
    if bed == "digits":
        return dict(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=16,
        )
    if bed == "shapes":
        return dict(
            sample_size=32,
            in_channels=1,
            out_channels=1,
            layers_per_block=1,
            block_out_channels=(16, 32, 64, 64),
            down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        )
    if bed == "mosaic":  # fully convolutional (no attention), 64 -> 32 -> 16 -> 8, ~2.5 M parameters
        return dict(
            sample_size=64,
            in_channels=1,
            out_channels=1,
            layers_per_block=1,
            block_out_channels=(16, 32, 64, 128),
            down_block_types=("DownBlock2D",) * 4,
            up_block_types=("UpBlock2D",) * 4,
            norm_num_groups=8,
        )
    raise ValueError(f"bed: expected 'digits', 'shapes' or 'mosaic', got {bed!r}")
