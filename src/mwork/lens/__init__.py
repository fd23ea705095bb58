"""Layer-wise decoding (logit lens), token language identification, per-layer language shares
and the understanding / task-solving / generation layer split; :func:`run_lens` runs them all
and writes the lens files (what ``mwork lens`` does)."""

from mwork.lens.config import LensConfig
from mwork.lens.langid import (
    UNKNOWN, WORDFREQ_LATIN_LANGUAGES, LanguageIdentifier, ScriptWordfreqIdentifier, TokenLabeler,
    coverage_warnings,
)
from mwork.lens.logit_lens import LensOptions, LensResult, PromptLens, logit_lens
from mwork.lens.pipeline import LensRun, lens_prompts, make_identifier, run_lens
from mwork.lens.plot import plot_shares
from mwork.lens.prompts import Prompt, builtin_languages, builtin_prompts, read_prompts
from mwork.lens.regions import RegionEstimate, estimate_regions
from mwork.lens.shares import LayerShares, language_shares, read_shares, write_csv, write_json

__all__ = [
    "LensConfig", "LensRun", "run_lens", "lens_prompts", "make_identifier",
    "UNKNOWN", "WORDFREQ_LATIN_LANGUAGES", "LanguageIdentifier", "ScriptWordfreqIdentifier", "TokenLabeler",
    "coverage_warnings",
    "LensOptions", "LensResult", "PromptLens", "logit_lens", "plot_shares",
    "Prompt", "builtin_languages", "builtin_prompts", "read_prompts",
    "RegionEstimate", "estimate_regions",
    "LayerShares", "language_shares", "read_shares", "write_csv", "write_json",
]
