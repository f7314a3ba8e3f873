#!/usr/bin/env python3
"""PyTorch eager reference of CGGM Studio's training steps, for `cggm bench train --against-torch`
(which runs it beside the project's own step, prints the ratios and checks that the parameter
counts agree).

The model is the project's, layer by layer (trainer/src/model/): per modality a ResNet (basic or
bottleneck blocks, output stride 8 or 16) + ASPP encoder, a DeepLabv3+ fusion head over all
modalities' features, and one grouped light decoder holding every modality's classifier. The step is
the project's (trainer/src/step.rs): joint = forward, 0.5 x weighted CE + 0.5 x (1 - soft
foreground Dice), backward, SGD/Adam/AdamW step; cggm adds the classifiers on detached features
(their own optimiser), the batch Dice per modality, the balance coefficients, L_gm from g_F taken
with create_graph, and the encoders' gradients scaled by B_i.

Feature tasks (`--features name:TxD,...`, trainer/src/model/features.rs and transformer.rs): per
modality a 1-D projection (Conv1d, kernel 1) and a MulT Transformer encoder (scaled embeddings plus
sinusoidal positions, pre-norm self-attention written with matmuls, 4x ReLU feed-forward, final
layer norm); a Transformer fusion over the concatenated tokens read at the first token; a residual
output block and a linear output layer; per modality a light classifier (Transformer + Linear-ReLU
+ output layer of the fusion output layer's shape). The step is the project's for feature tasks:
cross-entropy (classification) or L1 (regression); cggm adds the classifiers' losses and batch
accuracy / Acc-2 as eps_i, B_i, L_gm from g_F, B_i-scaled encoder gradients; then gradient
clipping (grad_clip) and the optimiser step. Libtorch is reseeded every step, as the project does.

Reads the run configuration (the JSON of a `TrainConfig`) from stdin; prints one JSON object with
seconds per step per method, parameter counts and peak memory. Usage (normally through the cggm
command):
    python3 scripts/bench_torch.py --methods joint,cggm --batch-size 2 --crop 64 --steps 5 < cfg.json
    python3 scripts/bench_torch.py --features text:4x16,audio:8x12,vision:6x8 --task classification \
        --outputs 4 --batch-size 32 --steps 5 < cfg.json
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBn(nn.Module):
    def __init__(self, cin, cout, k, stride=1, dilation=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k - 1) // 2,
                              dilation=dilation, groups=groups, bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


def stage_width(cfg, stage):
    return max(4, int(round((64 << stage) * cfg["width"])))


def expansion(cfg):
    return 4 if cfg["depth"] >= 50 else 1


BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}


class Block(nn.Module):
    def __init__(self, cfg, cin, width, stride, dilation):
        super().__init__()
        cout = width * expansion(cfg)
        if cfg["depth"] >= 50:
            convs = [ConvBn(cin, width, 1), ConvBn(width, width, 3, stride, dilation),
                     ConvBn(width, cout, 1)]
        else:
            convs = [ConvBn(cin, width, 3, stride, dilation), ConvBn(width, cout, 3, 1, dilation)]
        self.convs = nn.ModuleList(convs)
        self.down = ConvBn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = x
        for i, conv in enumerate(self.convs):
            y = conv(y)
            if i != len(self.convs) - 1:
                y = F.relu(y)
        return F.relu(y + (self.down(x) if self.down is not None else x))


class ResNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.stem = ConvBn(cfg["in_channels"], stage_width(cfg, 0), 7, 2)
        plan = ([(1, 1), (2, 1), (1, 2), (1, 4)] if cfg["output_stride"] == 8
                else [(1, 1), (2, 1), (2, 1), (1, 2)])
        cin, stages = stage_width(cfg, 0), []
        for s, (n, (stride, dilation)) in enumerate(zip(BLOCKS[cfg["depth"]], plan)):
            width, blocks = stage_width(cfg, s), []
            for b in range(n):
                blocks.append(Block(cfg, cin, width, stride if b == 0 else 1, dilation))
                cin = width * expansion(cfg)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.stem(x)), 3, 2, 1)
        low = None
        for s, stage in enumerate(self.stages):
            y = stage(y)
            if s == 0:
                low = y
        return low, y


class Aspp(nn.Module):
    def __init__(self, cin, cout, rates):
        super().__init__()
        self.branches = nn.ModuleList([ConvBn(cin, cout, 1)] +
                                      [ConvBn(cin, cout, 3, 1, r) for r in rates])
        self.pool = ConvBn(cin, cout, 1)
        self.project = ConvBn(cout * (len(rates) + 2), cout, 1)

    def forward(self, x):
        h, w = x.shape[2:]
        outs = [F.relu(b(x)) for b in self.branches]
        pooled = F.adaptive_avg_pool2d(x, 1)
        # BatchNorm on a 1x1 map of one sample has no variance: eval mode then, as in the project.
        if self.training and x.shape[0] == 1:
            self.pool.eval()
            pooled = F.relu(self.pool(pooled))
            self.pool.train()
        else:
            pooled = F.relu(self.pool(pooled))
        outs.append(F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=False))
        return F.dropout(F.relu(self.project(torch.cat(outs, 1))), 0.1, self.training)


class Encoder(nn.Module):
    def __init__(self, cfg, aspp_channels):
        super().__init__()
        self.backbone = ResNet(cfg)
        rates = [12, 24, 36] if cfg["output_stride"] == 8 else [6, 12, 18]
        self.aspp = Aspp(stage_width(cfg, 3) * expansion(cfg), aspp_channels, rates)

    def forward(self, x):
        low, high = self.backbone(x)
        return self.aspp(high), low


class Decoder(nn.Module):
    def __init__(self, high_in, low_in, high_proj, low_proj, mid, refine_convs, refine_kernel,
                 classes, groups):
        super().__init__()
        g = groups
        self.groups = g
        self.high_proj = ConvBn(high_in * g, high_proj * g, 1, groups=g)
        self.low_proj = ConvBn(low_in * g, low_proj * g, 1, groups=g)
        cin, refine = high_proj + low_proj, []
        for _ in range(refine_convs):
            refine.append(ConvBn(cin * g, mid * g, refine_kernel, groups=g))
            cin = mid
        self.refine = nn.ModuleList(refine)
        self.last = nn.Conv2d(cin * g, classes * g, 1, groups=g)

    def forward(self, high, low, out_hw):
        b, _, h, w = low.shape
        high = F.interpolate(F.relu(self.high_proj(high)), size=(h, w), mode="bilinear",
                             align_corners=False)
        low = F.relu(self.low_proj(low))
        g = self.groups
        if g == 1:
            y = torch.cat([high, low], 1)
        else:
            y = torch.cat([high.view(b, g, -1, h, w), low.view(b, g, -1, h, w)], 2).view(b, -1, h, w)
        for conv in self.refine:
            y = F.relu(conv(y))
        return F.interpolate(self.last(y), size=out_hw, mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    def __init__(self, m, modalities):
        super().__init__()
        bb = m["backbone"]
        low_ch = stage_width(bb, 0) * expansion(bb)
        self.encoders = nn.ModuleList([Encoder(bb, m["aspp_channels"]) for _ in range(modalities)])
        self.head = Decoder(m["aspp_channels"] * modalities, low_ch * modalities,
                            m["decoder_channels"], m["low_level_proj"], m["decoder_channels"],
                            2, 3, m["classes"], 1)

    def forward(self, x):
        feats = [enc(x[:, i:i + 1]) for i, enc in enumerate(self.encoders)]
        high = torch.cat([f[0] for f in feats], 1)
        low = torch.cat([f[1] for f in feats], 1)
        return self.head(high, low, x.shape[2:]), high, low


class Classifiers(nn.Module):
    def __init__(self, m, modalities):
        super().__init__()
        bb = m["backbone"]
        self.classes = m["classes"]
        self.decoder = Decoder(m["aspp_channels"], stage_width(bb, 0) * expansion(bb),
                               m["classifier_channels"], max(1, m["low_level_proj"] // 2),
                               m["decoder_channels"], 1, 1, m["classes"], modalities)

    def forward(self, high, low, out_hw):
        return self.decoder(high.detach(), low.detach(), out_hw)

    def last_grad(self, i):
        return self.decoder.last.weight.grad[i * self.classes:(i + 1) * self.classes]


def task_loss(logits, target, loss_cfg):
    logits = logits.float()
    weights = torch.tensor(loss_cfg["class_weights"], dtype=torch.float32, device=logits.device)
    ce = F.cross_entropy(logits, target, weight=weights)
    classes = logits.shape[1]
    probs = logits.softmax(1)
    onehot = F.one_hot(target, classes).permute(0, 3, 1, 2).float()
    fg_p, fg_t = probs[:, 1:], onehot[:, 1:]
    inter = (fg_p * fg_t).sum((0, 2, 3))
    denom = fg_p.sum((0, 2, 3)) + fg_t.sum((0, 2, 3))
    dice = ((inter * 2 + 1) / (denom + 1)).mean()
    return ce * loss_cfg["ce_weight"] + (1 - dice) * loss_cfg["dice_weight"]


def batch_dice(logits, target):
    """Mean of WT/TC/ET Dice of argmax(logits) (BraTS convention for empty regions).

    max(1).indices, not argmax(1): the same first maximum, but PyTorch's CPU argmax over a
    dimension that is not the innermost is ~12x slower; the project uses max too (task/mod.rs).
    """
    pred = logits.max(1).indices
    scores = []
    for region in ([1, 2, 3], [1, 3], [3]):
        r = torch.tensor(region, device=pred.device)
        p, t = torch.isin(pred, r), torch.isin(target, r)
        inter, ps, ts = (p & t).sum().item(), p.sum().item(), t.sum().item()
        scores.append((1.0 if ps == 0 else 0.0) if ts == 0 else 2 * inter / (ps + ts))
    return sum(scores) / 3


def make_optimizer(groups, opt_cfg):
    kind = opt_cfg["kind"]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=0.01, momentum=opt_cfg["momentum"],
                               weight_decay=opt_cfg["weight_decay"])
    cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    return cls(groups, lr=0.01, betas=tuple(opt_cfg["betas"]), eps=opt_cfg["eps"],
               weight_decay=opt_cfg["weight_decay"])


class Balance:
    """B_i = rho * (1 - clamp(d_i / sum d, 0, 1)), neutral rho (M-1)/M when sum d <= 1e-4."""

    def __init__(self, m, rho):
        self.prev, self.rho = [0.0] * m, rho

    def update(self, metrics):
        d = [(a - b) if math.isfinite(a - b) else 0.0 for a, b in zip(metrics, self.prev)]
        self.prev = list(metrics)
        m, total = len(d), sum(d)
        if m <= 1:
            return [self.rho] * m
        if total <= 1e-4:
            return [self.rho * (m - 1) / m] * m
        return [self.rho * (1 - min(max(di / total, 0.0), 1.0)) for di in d]


class Runner:
    def __init__(self, cfg, method, device, amp_dtype):
        m = 4
        self.cfg, self.method, self.device, self.amp_dtype = cfg, method, device, amp_dtype
        torch.manual_seed(cfg.get("seed", 0))
        self.model = Segmenter(cfg["model"], m).to(device)
        self.classifiers = Classifiers(cfg["model"], m).to(device) if method == "cggm" else None
        groups = [{"params": list(self.model.head.parameters()), "lr": 0.01}] + [
            {"params": list(e.parameters()), "lr": 0.01} for e in self.model.encoders]
        self.opt = make_optimizer(groups, cfg["optimizer"])
        if self.classifiers is not None:
            self.cls_opt = make_optimizer([{"params": list(self.classifiers.parameters())}],
                                          cfg["optimizer"])
            for g in self.cls_opt.param_groups:
                g["lr"] = cfg["schedule"]["classifier_lr"]
        self.balance = Balance(m, cfg["cggm"]["rho"])
        self.lr = cfg["schedule"]["lr"]

    def params(self):
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0
        return count(self.model), count(self.classifiers)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype,
                              enabled=self.amp_dtype is not None)

    def step(self, images, labels):
        for g in self.opt.param_groups:
            g["lr"] = self.lr
        with self.autocast():
            logits, high, low = self.model(images)
        loss = task_loss(logits, labels, self.cfg["loss"])
        if not math.isfinite(loss.item()):
            raise RuntimeError("task loss is not finite")
        if self.classifiers is None:
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            return loss.item()
        m = len(self.model.encoders)
        classes = self.cfg["model"]["classes"]
        self.cls_opt.zero_grad()
        with self.autocast():
            all_logits = self.classifiers(high, low, images.shape[2:])
        metrics, cls_loss = [], torch.zeros((), device=self.device)
        for i in range(m):
            li = all_logits[:, i * classes:(i + 1) * classes]
            metrics.append(batch_dice(li, labels))
            cls_loss = cls_loss + task_loss(li, labels, self.cfg["loss"])
        if not math.isfinite(cls_loss.item()):
            raise RuntimeError("classifier loss is not finite")
        cls_loss.backward()
        cls_grads = [self.classifiers.last_grad(i).detach().clone() for i in range(m)]
        self.cls_opt.step()
        b = self.balance.update(metrics)
        w_last = self.model.head.last.weight
        (g_f,) = torch.autograd.grad(loss, [w_last], create_graph=True)
        gm = torch.zeros((), device=self.device)
        for g_i, b_i in zip(cls_grads, b):
            cos = F.cosine_similarity(g_f.flatten(), g_i.flatten(), 0, 1e-8)
            gm = gm + (abs(b_i) - b_i * cos)
        gm = gm / m
        if not math.isfinite(gm.item()):
            raise RuntimeError("L_gm is not finite")
        total = loss + gm * self.cfg["cggm"]["lambda"]
        self.opt.zero_grad()
        total.backward()
        with torch.no_grad():
            for enc, b_i in zip(self.model.encoders, b):
                for p in enc.parameters():
                    if p.grad is not None:
                        p.grad.mul_(b_i)
        self.opt.step()
        return total.item()


# ---------------------------------------------------------------- feature tasks (model/features.rs)


def sinusoidal_positions(t, d, device):
    half = d // 2
    pos = torch.arange(t, dtype=torch.float32, device=device).unsqueeze(1)
    freq = (torch.arange(half, dtype=torch.float32, device=device)
            * (-math.log(10000.0) / (max(half, 2) - 1))).exp()
    angles = pos * freq.unsqueeze(0)
    emb = torch.cat([angles.sin(), angles.cos()], 1)
    if d % 2 == 1:
        emb = torch.cat([emb, torch.zeros(t, 1, device=device)], 1)
    return emb


class EncoderLayer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn_norm = nn.LayerNorm(d)
        self.in_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)
        self.ffn_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x, c):
        b, t, d = x.shape
        h = c["heads"]
        qkv = self.in_proj(self.attn_norm(x))

        def split(k):
            return qkv.narrow(2, k * d, d).view(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(0), split(1), split(2)
        scores = q.matmul(k.transpose(-2, -1)) / math.sqrt(d // h)
        attn = F.dropout(scores.softmax(-1, dtype=torch.float32), c["attn_dropout"], self.training)
        mixed = attn.matmul(v).transpose(1, 2).contiguous().view(b, t, d)
        x = x + F.dropout(self.out_proj(mixed), c["res_dropout"], self.training)
        ffn = F.dropout(F.relu(self.fc1(self.ffn_norm(x))), c["relu_dropout"], self.training)
        return x + F.dropout(self.fc2(ffn), c["res_dropout"], self.training)


class Transformer(nn.Module):
    def __init__(self, c, layers):
        super().__init__()
        self.c = c
        self.layers = nn.ModuleList([EncoderLayer(c["proj_dim"]) for _ in range(layers)])
        self.norm = nn.LayerNorm(c["proj_dim"])

    def forward(self, x):
        _, t, d = x.shape
        x = F.dropout(x * math.sqrt(d) + sinusoidal_positions(t, d, x.device),
                      self.c["embed_dropout"], self.training)
        for layer in self.layers:
            x = layer(x, self.c)
        return self.norm(x)


class ModalityEncoder(nn.Module):
    def __init__(self, c, dim):
        super().__init__()
        self.proj = nn.Conv1d(dim, c["proj_dim"], 1)
        self.transformer = Transformer(c, c["layers"])

    def forward(self, x):
        return self.transformer(self.proj(x.transpose(1, 2)).transpose(1, 2))


class FeatureNet(nn.Module):
    def __init__(self, c, dims, outputs):
        super().__init__()
        d = c["proj_dim"]
        self.encoders = nn.ModuleList([ModalityEncoder(c, dim) for dim in dims])
        self.fusion = Transformer(c, max(c["layers"] - 2, 1))
        self.proj1 = nn.Linear(d, d)
        self.proj2 = nn.Linear(d, d)
        self.out_layer = nn.Linear(d, outputs)
        self.out_dropout = c["out_dropout"]

    def forward(self, xs):
        hidden = [enc(x) for enc, x in zip(self.encoders, xs)]
        fused = self.fusion(torch.cat(hidden, 1))[:, 0]
        residual = self.proj2(F.dropout(F.relu(self.proj1(fused)), self.out_dropout,
                                        self.training)) + fused
        return self.out_layer(residual), hidden


class FeatureClassifier(nn.Module):
    def __init__(self, c, outputs):
        super().__init__()
        self.transformer = Transformer(c, c["classifier_layers"])
        self.proj1 = nn.Linear(c["proj_dim"], c["proj_dim"])
        self.out_layer = nn.Linear(c["proj_dim"], outputs)

    def forward(self, h):
        return self.out_layer(F.relu(self.proj1(self.transformer(h.detach())[:, 0])))


def feature_loss(logits, target, task):
    if task == "classification":
        return F.cross_entropy(logits, target)
    return F.l1_loss(logits.flatten(), target.flatten().to(logits.dtype))


def feature_metric(logits, target, task):
    if task == "classification":
        return (logits.argmax(1) == target).float().mean().item()
    return ((logits.flatten() >= 0) == (target.flatten() >= 0)).float().mean().item()


class FeatureRunner:
    def __init__(self, cfg, method, device, amp_dtype, dims, task, outputs):
        self.cfg, self.method, self.device, self.amp_dtype = cfg, method, device, amp_dtype
        self.task, self.seed, self.step_no = task, cfg.get("seed", 0), 0
        torch.manual_seed(self.seed)
        c = cfg["features"]
        self.model = FeatureNet(c, dims, outputs).to(device)
        self.classifiers = (nn.ModuleList([FeatureClassifier(c, outputs) for _ in dims]).to(device)
                            if method == "cggm" else None)
        enc_ids = {id(p) for p in self.model.encoders.parameters()}
        head = [p for p in self.model.parameters() if id(p) not in enc_ids]
        self.opt = make_optimizer([{"params": head}] + [
            {"params": list(e.parameters())} for e in self.model.encoders], cfg["optimizer"])
        for g in self.opt.param_groups:
            g["lr"] = cfg["schedule"]["lr"]
        if self.classifiers is not None:
            self.cls_opt = make_optimizer([{"params": list(self.classifiers.parameters())}],
                                          cfg["optimizer"])
            for g in self.cls_opt.param_groups:
                g["lr"] = cfg["schedule"]["classifier_lr"]
        self.balance = Balance(len(dims), cfg["cggm"]["rho"])
        self.clip = cfg.get("grad_clip")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype,
                              enabled=self.amp_dtype is not None)

    def step(self, xs, labels):
        torch.manual_seed(self.seed + self.step_no * 1_000_003)
        self.step_no += 1
        with self.autocast():
            logits, hidden = self.model(xs)
        loss = feature_loss(logits.float(), labels, self.task)
        if not math.isfinite(loss.item()):
            raise RuntimeError("task loss is not finite")
        total = loss * 1.0
        if self.classifiers is not None:
            self.cls_opt.zero_grad()
            with self.autocast():
                all_logits = [c(h) for c, h in zip(self.classifiers, hidden)]
            metrics, cls_loss = [], torch.zeros((), device=self.device)
            for li in all_logits:
                metrics.append(feature_metric(li, labels, self.task))
                cls_loss = cls_loss + feature_loss(li.float(), labels, self.task)
            if not math.isfinite(cls_loss.item()):
                raise RuntimeError("classifier loss is not finite")
            cls_loss.backward()
            cls_grads = [c.out_layer.weight.grad.detach().clone() for c in self.classifiers]
            self.cls_opt.step()
            b = self.balance.update(metrics)
            (g_f,) = torch.autograd.grad(loss, [self.model.out_layer.weight], retain_graph=True,
                                         create_graph=True)
            gm = torch.zeros((), device=self.device)
            cosines = []
            for g_i, b_i in zip(cls_grads, b):
                cos = F.cosine_similarity(g_f.flatten(), g_i.flatten(), 0, 1e-8)
                cosines.append(cos.item())
                gm = gm + (cos * (-b_i) + abs(b_i))
            gm = gm / len(cls_grads)
            if not math.isfinite(gm.item()):
                raise RuntimeError("L_gm is not finite")
            total = total + gm * self.cfg["cggm"]["lambda"]
        self.opt.zero_grad()
        total.backward()
        if self.classifiers is not None:
            with torch.no_grad():
                for enc, b_i in zip(self.model.encoders, b):
                    for p in enc.parameters():
                        if p.grad is not None:
                            p.grad.mul_(b_i)
        report = (total.item(), loss.item())
        if self.clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            if not math.isfinite(norm.item()):
                raise RuntimeError("gradient norm is not finite")
        self.opt.step()
        return report[0]

    def params(self):
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0
        return count(self.model), count(self.classifiers)


def random_feature_batch(shapes, b, task, outputs, device):
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(b, t, d, generator=gen).to(device) for _, t, d in shapes]
    if task == "classification":
        labels = torch.randint(0, outputs, (b,), generator=gen)
    else:
        labels = (torch.randn(b, generator=gen) * 1.5).clamp(-3, 3)
    return xs, labels.to(device)


def parse_shapes(text):
    """'text:4x16,audio:8x12' -> [('text', 4, 16), ('audio', 8, 12)] (steps x dim)."""
    shapes = []
    for part in text.split(","):
        name, shape = part.split(":")
        t, d = shape.split("x")
        shapes.append((name, int(t), int(d)))
    return shapes


def random_batch(b, crop, device):
    """Random images and a label map with a disc of each tumour class per sample."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(b, 4, crop, crop, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(crop), torch.arange(crop), indexing="ij")
    labels = torch.zeros(b, crop, crop, dtype=torch.long)
    for s in range(b):
        cx, cy = torch.randint(crop // 4, 3 * crop // 4, (2,), generator=gen).tolist()
        r = ((xx - cx) ** 2 + (yy - cy) ** 2).float().sqrt()
        lab = torch.zeros(crop, crop, dtype=torch.long)
        lab[r < 12] = 2
        lab[r < 6] = 3
        lab[r < 3] = 1
        labels[s] = lab
    return images.to(device), labels.to(device)


def peak_rss_bytes():
    """VmHWM of this process. Not getrusage's ru_maxrss: Linux carries that over fork and exec,
    so a child of the (larger) Rust benchmark reported the parent's peak as its own."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(runner, images, labels):
    """PyTorch's FlopCounterMode on one untimed step: the convolutions' and matrix products'
    FLOPs (forward and backward; a multiply-add counts 2), in total and by operator. The costliest
    layers come from a forward pass alone: the counter attributes backward FLOPs to whichever
    modules are on its stack when autograd runs them, so per-layer backward counts are unreliable.
    """
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        runner.step(images, labels)
    total = counter.get_total_flops()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    forward = FlopCounterMode(display=False)
    with forward, torch.no_grad(), runner.autocast():
        runner.model(images)
    by_module = forward.get_flop_counts()
    names = [m for m in by_module if m != "Global"]
    # A module's count includes its children's: a leaf is a module no other name extends.
    leaves = [m for m in names if not any(o != m and o.startswith(m + ".") for o in names)]
    layers = sorted(((m, sum(by_module[m].values())) for m in leaves), key=lambda x: -x[1])
    return {"total": int(total), "by_op": by_op,
            "forward": int(forward.get_total_flops()),
            "top_forward_layers": [{"layer": m, "flops": int(n)} for m, n in layers[:10]]}


def profile_layers(runner, images, labels, device, steps, top):
    """Where a step's forward time goes, layer by layer, against each layer's FLOPs: every leaf
    module's forward is timed with hooks (the device synchronised around it) over `steps` training
    steps, and its forward FLOPs counted with FlopCounterMode. A layer far below the machine's
    peak GFLOP/s, or one with no FLOPs and much time (batch norm, upsampling, pooling), is where
    the gap to the hardware is. The backward is timed as a whole (autograd runs it outside the
    modules)."""
    from torch.utils.flop_counter import FlopCounterMode
    leaves = [(n, m) for n, m in runner.model.named_modules()
              if n and not any(True for _ in m.children())]
    times, calls, started = {}, {}, {}

    def before(name):
        def hook(_module, _inputs):
            sync(device)
            started[name] = time.perf_counter()
        return hook

    def after(name):
        def hook(_module, _inputs, _output):
            sync(device)
            times[name] = times.get(name, 0.0) + time.perf_counter() - started[name]
            calls[name] = calls.get(name, 0) + 1
        return hook

    hooks = [h for n, m in leaves for h in (m.register_forward_pre_hook(before(n)),
                                            m.register_forward_hook(after(n)))]
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        runner.step(images, labels)
    sync(device)
    step_seconds = (time.perf_counter() - t0) / steps
    for h in hooks:
        h.remove()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), runner.autocast():
        runner.model(images)
    # FlopCounterMode names a module "<RootClass>.<path>".
    flops = {}
    for name, ops in counter.get_flop_counts().items():
        if "." in name:
            flops[name.split(".", 1)[1]] = sum(ops.values())
    rows = []
    for name, module in leaves:
        if name not in times:
            continue
        seconds = times[name] / steps
        n = flops.get(name, 0)
        rows.append({"layer": name, "type": type(module).__name__, "ms": seconds * 1e3,
                     "gflop": n / 1e9, "gflops_per_s": (n / seconds / 1e9) if seconds else 0.0})
    forward_ms = sum(r["ms"] for r in rows)
    by_type = {}
    for r in rows:
        t = by_type.setdefault(r["type"], {"ms": 0.0, "gflop": 0.0, "layers": 0})
        t["ms"] += r["ms"]
        t["gflop"] += r["gflop"]
        t["layers"] += 1
    rows.sort(key=lambda r: -r["ms"])
    return {"step_ms": step_seconds * 1e3, "leaf_forward_ms": forward_ms,
            "by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1]["ms"])),
            "top_layers": rows[:top]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="joint,cggm")
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--features", help="feature task: name:STEPSxDIM,... per modality")
    ap.add_argument("--task", default="classification", choices=["classification", "regression"])
    ap.add_argument("--outputs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--profile-layers", type=int, metavar="TOP", default=0,
                    help="instead of the timing: each method's per-layer forward time against its "
                         "FLOPs, the TOP slowest layers and the time by layer type")
    ap.add_argument("--count-forward", action="store_true",
                    help="only count the FLOPs of one inference forward pass (eval mode, the fused "
                         "output) per sample at --crop, for `cggm bench infer --flops`")
    args = ap.parse_args()
    cfg = json.load(sys.stdin)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    if args.features:
        shapes = parse_shapes(args.features)
        images, labels = random_feature_batch(shapes, args.batch_size, args.task, args.outputs,
                                              device)

        def make_runner(method):
            return FeatureRunner(cfg, method, device, amp, [d for _, _, d in shapes], args.task,
                                 args.outputs)
    else:
        images, labels = random_batch(args.batch_size, args.crop, device)

        def make_runner(method):
            return Runner(cfg, method, device, amp)
    if args.count_forward:
        from torch.utils.flop_counter import FlopCounterMode
        runner = make_runner("joint")
        runner.model.eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            runner.model(images)
        print(json.dumps({"forward_flops_per_sample": counter.get_total_flops() / args.batch_size,
                          "crop": args.crop}))
        return
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "seconds_per_step": {}, "peak_gpu_bytes": {}, "peak_gpu_reserved_bytes": {},
           "last_loss": {}, "params": {"model": 0, "classifiers": 0}, "flops": {}}
    for method in args.methods.split(","):
        runner = make_runner(method)
        model_params, classifier_params = runner.params()
        out["params"]["model"] = model_params
        out["params"]["classifiers"] = max(out["params"]["classifiers"], classifier_params)
        for _ in range(args.warmup):
            runner.step(images, labels)
        if args.profile_layers:
            out.setdefault("profile", {})[method] = profile_layers(
                runner, images, labels, device, args.steps, args.profile_layers)
            del runner
            continue
        out["flops"][method] = count_flops(runner, images, labels)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = runner.step(images, labels)
        sync(device)
        out["seconds_per_step"][method] = (time.perf_counter() - t0) / args.steps
        out["last_loss"][method] = loss
        if device.type == "cuda":
            out["peak_gpu_bytes"][method] = torch.cuda.max_memory_allocated(device)
            out["peak_gpu_reserved_bytes"][method] = torch.cuda.max_memory_reserved(device)
        del runner
    out["peak_rss_bytes"] = peak_rss_bytes()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
