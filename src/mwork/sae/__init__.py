"""Sparse dictionaries (SAEs) as units: ``mwork sae train`` (:class:`SaeTrainConfig`) trains them
on the model's activations; ``mwork sae load`` (:class:`SaeLoadConfig`) converts a published one
(SAELens, Gemma Scope: :mod:`mwork.units.sae_layouts`) to mwork's format. Either way the result is
a :class:`mwork.units.Dictionary` that ``mwork.load_units`` reads."""

from mwork.sae.config import DEFAULT_CORPUS, TRAIN_SITES, SaeTrainConfig, train_dictionaries
from mwork.sae.load import SaeLoadConfig
from mwork.sae.quality import reconstruction_quality, splice_losses
from mwork.sae.train import TrainSettings, train_codebook

__all__ = ["DEFAULT_CORPUS", "TRAIN_SITES", "SaeLoadConfig", "SaeTrainConfig", "TrainSettings", "reconstruction_quality",
           "splice_losses", "train_codebook", "train_dictionaries"]
