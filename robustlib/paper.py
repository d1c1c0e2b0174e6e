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

# Table III: CIFAR-10, ResNet-50
TABLE_III = pd.DataFrame(
    [("Vanilla", 0.937, 0.450, 0.159, 0.056), ("TRADES (1/λ=0.05)", 0.914, 0.535, 0.258, 0.086),
     ("TRADES (1/λ=0.01)", 0.926, 0.494, 0.192, 0.063), ("Ours", 0.938, 0.649, 0.310, 0.109)],
    columns=["method", "natural", "pgd@2/255", "pgd@5/255", "pgd@8/255"],
)

# The vanilla model's clean accuracy per paper profile (Tables II and III)
VANILLA_NATURAL = {"paper-mnist": 0.993, "paper-cifar10": 0.937}
