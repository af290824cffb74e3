"""Small models for the extraction tests, shaped like the real architectures the paper probes.

They live in a module of their own so that a subprocess (the kill -9 resume test) can build them
by name, ``--arch test_extract_models:small_cnn``. This file holds no tests. Each model also has a
``manual_*`` function that computes the expected per-layer features by hand, without hooks.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn


class AttnBlock(nn.Module):
    """A pre-norm transformer block: attention mixes the tokens, so the class token depends on the image."""

    def __init__(self, d):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, num_heads=2, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """timm's layout: patch_embed, cls_token, blocks.0..N-1, norm, head (classifies from the class token)."""

    def __init__(self, d=16, depth=3, num_classes=5, patch=4):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.5)
        self.blocks = nn.Sequential(*[AttnBlock(d) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)

    def tokens(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.tokens(x)))[:, 0])


def manual_vit(model, x, pooling="cls"):
    """{layer: (N, D)} computed by walking the model by hand."""
    out = {}
    with torch.no_grad():
        t = model.tokens(torch.as_tensor(x))
        for i, blk in enumerate(model.blocks):
            t = blk(t)
            # The token mean is over the patch tokens, after the class token (timm's avg pooling).
            out[f"blocks.{i}"] = (t[:, 0] if pooling == "cls" else t[:, 1:].mean(dim=1)).numpy()
        out["pre_logits"] = model.norm(t)[:, 0].numpy()
    return out


class MixerBlock(nn.Module):
    def __init__(self, tokens, d):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.mlp_tokens = nn.Linear(tokens, tokens)
        self.norm2 = nn.LayerNorm(d)
        self.mlp_channels = nn.Linear(d, d)

    def forward(self, x):
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class TinyMixer(nn.Module):
    """timm's MLP-Mixer layout: stem, blocks.*, norm, mean over tokens, head; no class token."""

    def __init__(self, d=12, depth=2, num_classes=4, patch=4, image=16):
        super().__init__()
        self.stem = nn.Conv2d(3, d, patch, patch)
        self.blocks = nn.Sequential(*[MixerBlock((image // patch) ** 2, d) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(t)).mean(dim=1))


def manual_mixer(model, x):
    out = {}
    with torch.no_grad():
        t = model.stem(torch.as_tensor(x)).flatten(2).transpose(1, 2)
        for i, blk in enumerate(model.blocks):
            t = blk(t)
            out[f"blocks.{i}"] = t.mean(dim=1).numpy()
        out["pre_logits"] = model.norm(t).mean(dim=1).numpy()
    return out


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Conv2d(cin, cout, 1, stride, bias=False) if (cin != cout or stride != 1) else nn.Identity()

    def forward(self, x):
        return torch.relu(self.down(x) + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    """torchvision/timm ResNet layout: conv1, bn1, layer1..layer3 (stages), global pool, fc."""

    def __init__(self, widths=(8, 16, 24), num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for i, w in enumerate(widths):
            setattr(self, f"layer{i + 1}", nn.Sequential(Basic(cin, w, 1 if i == 0 else 2), Basic(w, w, 1)))
            cin = w
        self.fc = nn.Linear(cin, num_classes)

    def stages(self):
        return [getattr(self, f"layer{i + 1}") for i in range(3)]

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        for s in self.stages():
            x = s(x)
        return self.fc(x.mean(dim=(2, 3)))


def manual_resnet(model, x):
    out = {}
    with torch.no_grad():
        h = torch.relu(model.bn1(model.conv1(torch.as_tensor(x))))
        for i, s in enumerate(model.stages()):
            h = s(h)
            out[f"layer{i + 1}"] = h.mean(dim=(2, 3)).numpy()
        out["pre_logits"] = h.mean(dim=(2, 3)).numpy()
    return out


def small_cnn():
    """Factory for --arch test_extract_models:small_cnn (random init; weights come from the file)."""
    return TinyResNet()


def trained_like_cnn(seed: int) -> TinyResNet:
    """A TinyResNet with seeded weights and non-trivial BatchNorm statistics, as a checkpoint would hold."""
    torch.manual_seed(seed)
    m = TinyResNet()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def images(n, seed=0, size=16):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)
