"""A corpus statistic from outside mwork: the largest value of each unit over the counted tokens."""

from __future__ import annotations

import torch

from mwork.corpus_statistics import Statistic


class Maximum(Statistic):
    name = "test_max"
    takes = "tokens"  # (tokens, n) float64 on the CPU

    def start(self, n, corpus):
        self.value = None

    def update(self, values, batch):
        top = values.max(0).values
        self.value = top if self.value is None else torch.maximum(self.value, top)

    def result(self):
        return self.value
