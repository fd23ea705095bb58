"""Plots and the self-contained HTML report."""

from mwork.report.html import render_report

__all__ = ["render_report"]
