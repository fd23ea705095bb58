"""Neuron importance (PLND), detection over corpora, and NeuronSets."""
