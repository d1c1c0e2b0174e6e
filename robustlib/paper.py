"""The paper's reported numbers (Hou et al. 2022), for "paper" columns beside measured ones.

Accuracies are fractions; PGD columns are named ``pgd@<eps>`` with eps as the paper writes it (in [0, 1]
units on MNIST, in 1/255 units on CIFAR-10). Nothing here is computed: these are transcriptions.
"""
from __future__ import annotations

import pandas as pd

# Table II: MNIST, the 2-conv + 2-FC CNN; PGD-20, step eps/20
TABLE_II = pd.DataFrame(
    [("Vanilla", 0.993, 0.883, 0.186), ("TRADES (1/λ=1)", 0.993, 0.984, 0.935),
     ("TRADES (1/λ=0.5)", 0.993, 0.979, 0.921), ("TRADES (1/λ=0.1)", 0.994, 0.972, 0.908),
     ("Ours", 0.993, 0.980, 0.959)],
    columns=["method", "natural", "pgd@0.1", "pgd@0.3"],
)

# Section V-C: the equal-strength point, both attacks on a vanilla ResNet-50 (CIFAR-10); DRA with p = 1/3, T = 5
CALIBRATION = {"dra_eps": 1.0, "pgd_eps": "2.55/255", "robust_acc": 0.445, "dra_p": 1 / 3, "dra_steps": 5}

# Table III: CIFAR-10, ResNet-50
TABLE_III = pd.DataFrame(
    [("Vanilla", 0.937, 0.450, 0.159, 0.056), ("TRADES (1/λ=0.05)", 0.914, 0.535, 0.258, 0.086),
     ("TRADES (1/λ=0.01)", 0.926, 0.494, 0.192, 0.063), ("Ours", 0.938, 0.649, 0.310, 0.109)],
    columns=["method", "natural", "pgd@2/255", "pgd@5/255", "pgd@8/255"],
)

# The vanilla model's clean accuracy per paper profile (Tables II and III)
VANILLA_NATURAL = {"paper-mnist": 0.993, "paper-cifar10": 0.937}

# Table IV: CIFAR-10, four backbones, vanilla and ours
TABLE_IV = pd.DataFrame(
    [("ResNet-18", "Vanilla", 0.931, 0.441, 0.146, 0.058), ("ResNet-18", "Ours", 0.924, 0.604, 0.255, 0.085),
     ("ResNet-34", "Vanilla", 0.933, 0.466, 0.153, 0.045), ("ResNet-34", "Ours", 0.929, 0.614, 0.279, 0.089),
     ("ResNet-50", "Vanilla", 0.937, 0.450, 0.159, 0.056), ("ResNet-50", "Ours", 0.938, 0.649, 0.310, 0.109),
     ("ResNet-101", "Vanilla", 0.937, 0.469, 0.159, 0.068), ("ResNet-101", "Ours", 0.938, 0.698, 0.323, 0.142)],
    columns=["backbone", "method", "natural", "pgd@2/255", "pgd@5/255", "pgd@8/255"],
)

# Table V: ResNet-50 trained with PGD (eps 2.55/255) against DRA (eps 1), CIFAR-10
TABLE_V = pd.DataFrame(
    [("Madry + PGD", 0.888, 0.661, 0.309, 0.110), ("Madry + DRA", 0.894, 0.667, 0.316, 0.125),
     ("TRADES + PGD", 0.879, 0.650, 0.343, 0.121), ("TRADES + DRA", 0.872, 0.683, 0.391, 0.139),
     ("Ours + PGD", 0.906, 0.592, 0.270, 0.101), ("Ours + DRA", 0.913, 0.600, 0.289, 0.098)],
    columns=["method", "natural", "pgd@2/255", "pgd@5/255", "pgd@8/255"],
)

# Table VI: the DRA fraction p of the fine-tune, ResNet-50, CIFAR-10 (its p = 0 row is the vanilla model)
TABLE_VI = pd.DataFrame(
    [("0", 0.0, 0.937, 0.450, 0.159, 0.056), ("1/6", 1 / 6, 0.918, 0.585, 0.280, 0.092),
     ("1/3", 1 / 3, 0.913, 0.600, 0.289, 0.098), ("1/2", 1 / 2, 0.904, 0.614, 0.291, 0.100),
     ("1", 1.0, 0.896, 0.619, 0.293, 0.101)],
    columns=["label", "p", "natural", "pgd@2/255", "pgd@5/255", "pgd@8/255"],
)

# Table VII: CIFAR-10-C accuracy of the DRA fine-tuned and the vanilla ResNet-50 (severity not stated)
TABLE_VII = pd.DataFrame(
    [("snow", 0.8537, 0.8410), ("frost", 0.844, 0.8141), ("zoom_blur", 0.8497, 0.8213),
     ("motion_blur", 0.7689, 0.7408), ("jpeg_compression", 0.8951, 0.8451), ("gaussian_noise", 0.7585, 0.5092)],
    columns=["corruption", "Ours", "Vanilla"],
)
