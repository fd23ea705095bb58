"""Evaluation tasks: perplexity, MGSM, XQuAD, X-CSQA, XLSum (loaders, prompts, scoring)."""
