"""The report: one schema for every device family, as data, as report.json, report.md and report.html."""

from edgeprune.report.html import render_html
from edgeprune.report.io import read_report, report_schema, schema_errors, write_report
from edgeprune.report.model import SCHEMA_VERSION, ModelCounts, Report
from edgeprune.report.render import render_markdown

__all__ = ["SCHEMA_VERSION", "ModelCounts", "Report", "read_report", "render_html", "render_markdown", "report_schema",
           "schema_errors", "write_report"]
