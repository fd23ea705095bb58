"""One schema module per results folder (``mwork.experiments.<experiment>.schema``), shared by the
folder's writer and the report's section: both use the schema's very objects, the writer's files
have exactly the schema's columns (header, in order), and the section reads them with the schema's
required and numeric columns. The folders are written by the producers' own writers from results
with known numbers (as in ``tests/test_report_kinds.py``; the deactivation grid's rows come from
its own ``aggregate`` functions), so no model runs here."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

import mwork.experiments.deactivation.report as deactivation_writer
import mwork.experiments.methods.report as methods_writer
import mwork.experiments.steering.report as steering_writer
import mwork.report.kinds.deactivation as deactivation_kind
import mwork.report.kinds.methods as methods_kind
import mwork.report.kinds.steering as steering_kind
from mwork.experiments.deactivation import schema as deactivation_schema
from mwork.experiments.methods import schema as methods_schema
from mwork.experiments.schema import CsvFile, JsonFile
from mwork.experiments.steering import schema as steering_schema
from mwork.experiments.steering.metrics import METRIC_COLUMNS
from mwork.report import render_report
from mwork.report.read import read_csv, read_json, read_jsonl
from tests.test_report_kinds import STEER, _findings, write_methods, write_steer

# schema module, writer module, report kind module, the CSV files the writer always writes
SCHEMAS = {
    "steer": (steering_schema, steering_writer, steering_kind, ("STEER", "UNSTEERED")),
    "deactivation": (deactivation_schema, deactivation_writer, deactivation_kind, ("GRID", "HEADLINE", "MATRIX")),
    "methods": (methods_schema, methods_writer, methods_kind,
                ("SELECTIVITY", "SUMMARY", "MATRIX", "STABILITY", "AGREEMENT", "COST")),
}


def _files(schema) -> dict[str, CsvFile | JsonFile]:
    return {k: v for k, v in vars(schema).items() if isinstance(v, (CsvFile, JsonFile))}


def _header(path: Path) -> tuple[str, ...]:
    with path.open(newline="", encoding="utf-8") as f:
        return tuple(next(csv.reader(f)))


# ---- the schemas themselves, and both sides importing the same objects ---------------------------

@pytest.mark.parametrize("name", SCHEMAS)
def test_writer_and_report_kind_share_the_schema_objects(name):
    schema, writer, kind, csvs = SCHEMAS[name]
    files = _files(schema)
    assert set(csvs) <= set(files)
    for attr, file in files.items():
        assert getattr(kind, attr) is file, f"{kind.__name__} does not read {file.name} by the schema"
        if isinstance(file, CsvFile):
            assert getattr(writer, attr) is file, f"{writer.__name__} does not write {file.name} by the schema"
            assert len(set(file.columns)) == len(file.columns), file.name
            assert set(file.required) <= set(file.columns), f"{file.name}: reads a column it does not write"
            assert set(file.numeric) <= set(file.columns), f"{file.name}: a numeric column it does not write"
    names = [f.name for f in files.values()]
    assert len(set(names)) == len(names)


def test_report_kinds_older_names_are_the_schemas_required_columns():
    """The section's column constants are the schema's tuples (not copies of them)."""
    s, d, m = steering_schema, deactivation_schema, methods_schema
    assert steering_kind.ROW_COLUMNS is s.STEER.required and steering_kind.NUMERIC is s.STEER.numeric
    assert steering_kind.UNSTEERED_COLUMNS is s.UNSTEERED.required
    assert steering_kind.GENERATION_KEYS is s.GENERATIONS.required
    assert deactivation_kind.HEADLINE_COLUMNS is d.HEADLINE.required and deactivation_kind.GRID_COLUMNS is d.GRID.required
    assert deactivation_kind.MATRIX_COLUMNS is d.MATRIX.required
    for attr in ("SELECTIVITY", "SUMMARY", "MATRIX", "STABILITY", "AGREEMENT", "COST"):
        assert getattr(methods_kind, attr) is getattr(m, attr) is getattr(methods_writer, attr)
    assert steering_writer.ROW_COLUMNS is s.STEER.columns and steering_writer.UNSTEERED_COLUMNS is s.UNSTEERED.columns
    assert steering_writer.TEXT_COLUMNS is s.TEXT_COLUMNS
    # the sweep's measures are the steering metrics' columns
    assert s.STEER.columns[-len(METRIC_COLUMNS):] == METRIC_COLUMNS == s.UNSTEERED.columns[-len(METRIC_COLUMNS):]


# ---- round trips: written by the writer, read as the section reads ------------------------------

def _deactivation_result() -> dict:
    """A grid's result from the grid's own ``aggregate`` functions over made-up cell scores."""
    from mwork.experiments.deactivation.aggregate import grid_rows, headline_rows, matrix_rows, originals
    from mwork.experiments.deactivation.plan import GridSpec, layer_regions

    class Scores(dict):
        def __missing__(self, key):  # a perplexity per cell, worse with neurons off
            value = {"score": 10.0 + (0 if key.variant == "none" else 1 + len(key.region) % 3 + len(key.variant) % 2),
                     "off": 0 if key.variant == "none" else 6}
            self[key] = value
            return value

    spec = GridSpec(("en", "fr", "zh"), "en", 1, 1, (0, 1), matrix=True)
    regions = layer_regions(4, 1, 1)
    results, total = Scores(), 1000
    info = {"metric": "perplexity", "higher_is_better": False, "english": "en", "targets": spec.targets,
            "understanding": 1, "generation": 1, "seeds": list(spec.seeds), "total_neurons": total}
    return {"info": info, "grid": grid_rows(spec, regions, results, total, {r.name: r.kinds for r in regions}, False),
            "headline": headline_rows(spec, results, total), "original": originals(spec, results),
            "matrix": matrix_rows(spec, results, False)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("schema")
    write_methods(root / "methods")
    write_steer(root / "steer", STEER)
    (root / "deactivation").mkdir()
    deactivation_writer.write_outputs(root / "deactivation", _deactivation_result())
    render_report(root)
    return root


@pytest.mark.parametrize("name", SCHEMAS)
def test_written_headers_are_the_schema_columns_and_read_back_with_its_required(folders, name):
    schema, _, _, csvs = SCHEMAS[name]
    folder = folders / name
    for attr, file in _files(schema).items():
        path = folder / file.name
        assert path.is_file(), f"{name}: the writer did not write {file.name}"
        if isinstance(file, CsvFile):
            assert _header(path) == file.columns, file.name
            rows = read_csv(path, file.required, file.numeric)  # raises BadResultFile where the section would warn
            assert rows and all(tuple(r) == file.columns for r in rows)
        elif file.name.endswith(".jsonl"):
            assert read_jsonl(path, file.required)
        else:
            assert isinstance(read_json(path, file.required), dict)
    for attr in csvs:
        assert isinstance(getattr(schema, attr), CsvFile)


def test_deactivation_matrix_rows_are_the_schema_columns():
    """``matrix.csv`` is written by the schema's columns: exactly the keys ``aggregate`` gives each row."""
    result = _deactivation_result()
    assert all(tuple(r) == deactivation_schema.MATRIX.columns for r in result["matrix"])
    assert all(set(deactivation_schema.GRID.columns) <= set(r) for r in result["grid"][1:])
    assert all(tuple(r) == deactivation_schema.HEADLINE.columns for r in result["headline"])
    assert all(math.isfinite(r["specific"]) for r in result["matrix"])


def test_report_reads_every_folder_without_a_warning(folders):
    html = (folders / "index.html").read_text(encoding="utf-8")
    for sid, title in (("methods", "Detection methods compared"), ("steer", "Steering the output language"),
                       ("deactivation", "Deactivation experiment")):
        section = html.split(f"<section id='{sid}'>")[1].split("</section>")[0]
        assert f"<h2>{title}" in section
        assert "class='warn'" not in section, sid
    assert "problem" not in _findings(html)
