#!/usr/bin/env python3
"""A PyTorch transcription of the CGGM authors' training loop (zrguo/CGGM `src/segtrain.py` for
BraTS, `src/msatrain.py` for the feature tasks) on a tiny model, for trainer/tests/authors_mode.rs:
the same weights and batches as the Rust side (read as JSON from stdin); prints, per step, the
losses, eps_i, the coefficients and every model parameter after the step.

The loop is theirs, statement by statement: zero the model's gradients; forward; the loss plus
lamda * l_gm of the previous step (none at the first); backward; the classifiers on the detached
features; the fusion and classifier last-layer *weights* cloned into cosines (their `cal_cos`)
after the classifiers' backward and before either optimiser steps; eps_i (per-sample Dice with
1e-3 smoothing for BraTS, `> 0` sign accuracy for regression, argmax accuracy for
classification); coeff = (diff_sum - d) / diff_sum with diff_sum = sum(diff) + 1e-8; l_gm =
(sum |coeff| - sum coeff_i cos_i) / M kept for the next step; BraTS scales parameters named
`vision_encoder` / `text_encoder` (none exist), feature tasks `encoders.{i}` by coeff_i * rou; the
classifiers' step; feature tasks clip the model's gradient norm; the model's step.

The tiny model has their shape of parts: per modality a projection (`proj.{i}`, not scaled) and an
encoder (`encoders.{i}`), a fusion hidden layer and `out_layer`; per modality a classifier with
its own hidden layer and `out_layer`. Layers are 1x1 convolutions, so the same model serves
segmentation ([B, C, S, S] logits) and feature tasks (S = 1, logits flattened).
"""
import json
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Toy(nn.Module):
    def __init__(self, m, hidden, mid, classes):
        super().__init__()
        self.proj = nn.ModuleList([nn.Conv2d(1, hidden, 1) for _ in range(m)])
        self.encoders = nn.ModuleList([nn.Conv2d(hidden, hidden, 1) for _ in range(m)])
        self.hidden = nn.Conv2d(m * hidden, mid, 1)
        self.out_layer = nn.Conv2d(mid, classes, 1)

    def forward(self, x):
        hs = [torch.tanh(e(torch.tanh(p(x[:, i:i + 1]))))
              for i, (p, e) in enumerate(zip(self.proj, self.encoders))]
        out = self.out_layer(F.relu(self.hidden(torch.cat(hs, 1))))
        return out, [h.clone().detach() for h in hs]


class Classifier(nn.Module):
    def __init__(self, hidden, mid, classes):
        super().__init__()
        self.hidden = nn.Conv2d(hidden, mid, 1)
        self.out_layer = nn.Conv2d(mid, classes, 1)

    def forward(self, h):
        return self.out_layer(F.relu(self.hidden(h)))


class SegLoss(nn.Module):
    """Their `SegLoss` (src/eval_metrics.py), on the CPU."""

    def __init__(self, n_classes, weight, alpha=0.5):
        super().__init__()
        self.n_classes, self.weight, self.alpha = n_classes, weight, alpha

    def forward(self, input, target):
        smooth = 0.01
        input1 = F.softmax(input, dim=1)
        target1 = F.one_hot(target, self.n_classes)
        b, n = input1.shape[:2]
        input1 = input1.reshape(b, n, -1)
        target1 = target1.permute(0, 3, 1, 2).reshape(b, n, -1)
        input1 = input1[:, 1:, :]
        target1 = target1[:, 1:, :].float()
        inter = torch.sum(input1 * target1)
        union = torch.sum(input1) + torch.sum(target1) + smooth
        dice = 2.0 * inter / union
        loss = F.cross_entropy(input, target, weight=self.weight)
        return (1 - self.alpha) * loss + (1 - dice) * self.alpha


def Dice(output, target, eps=1e-3):
    inter = torch.sum(output * target, dim=(1, 2)) + eps
    union = torch.sum(output, dim=(1, 2)) + torch.sum(target, dim=(1, 2)) + eps * 2
    return torch.mean(2 * inter / union)


def train_eval_seg(output, target):
    output = torch.argmax(output, dim=1)
    dice1 = Dice((output == 3).float(), (target == 3).float())
    dice2 = Dice(((output == 1) | (output == 3)).float(), ((target == 1) | (target == 3)).float())
    dice3 = Dice((output != 0).float(), (target != 0).float())
    return ((dice1 + dice2 + dice3) / 3).item()


def train_eval_senti(results, truths):
    preds = results.reshape(-1).detach().numpy()
    truth = truths.reshape(-1).detach().numpy()
    return float(np.mean((truth > 0) == (preds > 0)))


def train_eval_class(results, truths):
    return float(np.mean(results.argmax(1).numpy() == truths.numpy()))


def cal_cos(cls_grad, fusion_grad):
    fgn = fusion_grad.clone().view(-1)
    loss = list()
    for i in range(len(cls_grad)):
        tmp = cls_grad[i].clone().view(-1)
        loss.append(F.cosine_similarity(tmp, fgn, dim=0))
    return loss


def tensor(entry):
    return torch.tensor(entry["values"], dtype=torch.float32).view(entry["shape"])


def main():
    spec = json.load(sys.stdin)
    task, m, names = spec["task"], spec["modalities"], spec["names"]
    model = Toy(m, spec["hidden"], spec["mid"], spec["classes"])
    classifier = nn.ModuleList([Classifier(spec["hidden"], spec["mid"], spec["classes"])
                                for _ in range(m)])
    w = spec["weights"]
    with torch.no_grad():
        for i, name in enumerate(names):
            for layer, rust in [(model.proj[i], f"encoders.{name}.proj"),
                                (model.encoders[i], f"encoders.{name}.body"),
                                (classifier[i].hidden, f"classifiers.{name}.hidden"),
                                (classifier[i].out_layer, f"classifiers.{name}.out_layer")]:
                layer.weight.copy_(tensor(w[rust + ".weight"]))
                layer.bias.copy_(tensor(w[rust + ".bias"]))
        for layer, rust in [(model.hidden, "head.hidden"), (model.out_layer, "head.out_layer")]:
            layer.weight.copy_(tensor(w[rust + ".weight"]))
            layer.bias.copy_(tensor(w[rust + ".bias"]))
    o = spec["optimizer"]
    if task == "segmentation":
        # segtrain.py: SGD for both, the same momentum and weight decay.
        optimizer = torch.optim.SGD(model.parameters(), lr=spec["lr"], weight_decay=o["weight_decay"],
                                    momentum=o["momentum"])
        cls_optimizer = torch.optim.SGD(classifier.parameters(), lr=spec["cls_lr"],
                                        weight_decay=o["weight_decay"], momentum=o["momentum"])
        criterion = SegLoss(4, torch.tensor(spec["class_weights"], dtype=torch.float32))
    else:
        # msatrain.py: getattr(optim, 'Adam') with its defaults.
        optimizer = torch.optim.Adam(model.parameters(), lr=spec["lr"])
        cls_optimizer = torch.optim.Adam(classifier.parameters(), lr=spec["cls_lr"])
        criterion = nn.L1Loss() if task == "regression" else nn.CrossEntropyLoss()

    def net_out(x):
        preds, hs = model(x)
        return (preds if task == "segmentation" else preds.flatten(1)), hs

    def cls_out(hs):
        res = [c(h) for c, h in zip(classifier, hs)]
        return res if task == "segmentation" else [r.flatten(1) for r in res]

    def cal_coeff(cls_res, y):
        if task == "segmentation":
            return [train_eval_seg(r, y) for r in cls_res]
        if task == "regression":
            return [train_eval_senti(r, y) for r in cls_res]
        return [train_eval_class(r, y) for r in cls_res]

    acc1 = [0] * m
    l_gm = None
    lamda, rou = spec["lambda"], spec["rho"]
    report = []
    for batch in spec["batches"]:
        x = tensor(batch["x"])
        if task == "regression":
            y = torch.tensor(batch["y"], dtype=torch.float32).view(-1, 1)
        else:
            y = torch.tensor(batch["y"], dtype=torch.int64).view(batch["y_shape"])
        model.zero_grad()
        preds, hs = net_out(x)
        task_loss = criterion(preds, y)
        raw_loss = task_loss * 1.0
        gm_added = 0.0
        if l_gm is not None:
            gm_added = l_gm.item()
            raw_loss += lamda * l_gm
        raw_loss.backward()

        cls_optimizer.zero_grad()
        cls_res = cls_out(hs)
        cls_loss = criterion(cls_res[0], y)
        fusion_grad = model.out_layer.weight
        for i in range(1, m):
            cls_loss += criterion(cls_res[i], y)
        cls_loss.backward()
        cls_grad = [c.out_layer.weight for c in classifier]
        llist = cal_cos(cls_grad, fusion_grad)
        acc2 = cal_coeff(cls_res, y)
        diff = [acc2[i] - acc1[i] for i in range(m)]
        diff_sum = sum(diff) + 1e-8
        coeff = [(diff_sum - d) / diff_sum for d in diff]
        acc1 = acc2
        l_gm = np.sum(np.abs(coeff)) - sum(coeff[i] * llist[i] for i in range(m))
        l_gm /= m
        named = list(model.named_parameters())
        if task == "segmentation":
            for name, params in named:
                if 'vision_encoder' in name:
                    params.grad *= (coeff[0] * rou)
                if 'text_encoder' in name:
                    params.grad *= (coeff[1] * rou)
        else:
            for i in range(m):
                for name, params in named:
                    if f'encoders.{i}' in name:
                        params.grad *= (coeff[i] * rou)
        cls_optimizer.step()
        if task != "segmentation":
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec["clip"])
        optimizer.step()
        params = {}
        for i, name in enumerate(names):
            params[f"encoders.{name}.proj.weight"] = model.proj[i].weight
            params[f"encoders.{name}.proj.bias"] = model.proj[i].bias
            params[f"encoders.{name}.body.weight"] = model.encoders[i].weight
            params[f"encoders.{name}.body.bias"] = model.encoders[i].bias
            params[f"classifiers.{name}.out_layer.weight"] = classifier[i].out_layer.weight
        params["head.hidden.weight"] = model.hidden.weight
        params["head.out_layer.weight"] = model.out_layer.weight
        params["head.out_layer.bias"] = model.out_layer.bias
        report.append({
            "loss": raw_loss.item(), "task_loss": task_loss.item(), "gm_added": gm_added,
            "eps": acc2, "coefficients": coeff,
            "cosines": [c.item() for c in llist],
            "params": {k: v.detach().flatten().tolist() for k, v in params.items()},
        })
    print(json.dumps(report))


if __name__ == "__main__":
    main()
