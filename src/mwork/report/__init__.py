"""The research page: any results folder rendered into one self-contained, accessible HTML file
(findings first, one section per results folder, the layer and neuron explorers, settings and
versions at the end). Kinds of results folders are a registry: :func:`register_results_kind`."""

from mwork.report.page import render_report
from mwork.report.registry import FolderView, ResultsKind, register_results_kind, results_kinds
from mwork.report.section import Section

__all__ = ["render_report", "register_results_kind", "results_kinds", "ResultsKind", "FolderView", "Section"]
