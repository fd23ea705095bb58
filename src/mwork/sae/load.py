"""``mwork sae load SRC --out DIR``: a published dictionary (a local folder or file, or a hub id)
converted to mwork's format, ``DIR/dictionary.safetensors`` (+ ``.json``), which
``mwork.load_units(DIR)`` reads (:func:`mwork.units.sae_layouts.read_dictionary`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mwork.config import option
from mwork.hooks import SITES
from mwork.jobs import Job, OutputOptions
from mwork.units.dictionary import Dictionary
from mwork.units.sae_layouts import describe, read_dictionary


@dataclass
class LoadedDictionary:
    """A dictionary read from a published layout; ``write(out)`` saves it in mwork's format."""

    units: Dictionary

    def write(self, out: str | Path) -> dict[str, Path]:
        from mwork.files import make_folder

        folder = make_folder(out)
        path = self.units.save(folder / "dictionary.safetensors")
        return {"dictionary": path, "dictionary_json": path.with_suffix(".json")}


@dataclass(frozen=True, kw_only=True)
class SaeLoadConfig(OutputOptions, Job):
    """Read a published dictionary and write it in mwork's format."""

    command = "load"
    summary = "convert a published dictionary (SAELens, Gemma Scope; folder, file or hub id) to mwork's format"

    source: str = option(help="a folder or file (SAELens cfg.json + sae_weights.safetensors, Gemma Scope params.npz "
                         "or params.safetensors, an mwork dictionary) or a hub id owner/repo[/folder]",
                         positional=True, metavar="SRC")
    layer: int | None = option(None, "the layer, where a Gemma Scope path does not name it")
    site: str | None = option(None, "the site, where a Gemma Scope path does not name it", choices=tuple(SITES))

    def check(self) -> None:
        from mwork.files import check_output_path

        if self.layer is not None and self.layer < 0:
            raise ValueError(f"layer must be 0 or more, got {self.layer}")
        check_output_path(self.out, "dictionary folder")

    def run(self, model: Any = None, tokenizer: Any = None) -> LoadedDictionary:
        """No model is needed: the files alone are read."""
        self.check()
        return LoadedDictionary(read_dictionary(self.source, layer=self.layer, site=self.site))


def report(result: LoadedDictionary, files: dict[str, Path]) -> None:
    from mwork.jobs import run_files

    print(describe(result.units))
    print(run_files(files))
