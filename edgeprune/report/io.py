"""Reading and writing reports: every report.json is checked against the published JSON Schema."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgeprune.errors import EdgepruneError, InputError
from edgeprune.report.html import render_html
from edgeprune.report.model import READABLE_SCHEMAS, Report
from edgeprune.report.render import render_markdown

SCHEMA = Path(__file__).with_name("schema.json")
# eight times a big model's report (its per-layer rows come to about a megabyte): the schema check of
# a file this size takes about a second, and a larger one is refused before it is read
MAX_REPORT_BYTES = 8_000_000


@lru_cache(maxsize=1)
def report_schema() -> dict[str, Any]:
    """Returns the JSON Schema of report.json (docs/report.schema.json is the same file)."""
    return json.loads(SCHEMA.read_text())


def schema_errors(data: Any) -> list[str]:
    """Returns what makes ``data`` not a report of this schema, one line each (empty when it is one)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(report_schema())
    found = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        found.append(f"{where}: {error.message}"[:200])
    return found


def write_report(report: Report, folder: Path) -> tuple[Path, Path, Path]:
    """Returns the paths of report.json, report.md and report.html written into the folder.

    A report that does not match the schema, or holds NaN or infinity (not JSON), is a
    defect of the build: it raises instead of writing something a reader would refuse.
    """
    data = report.to_dict()
    errors = schema_errors(data)
    if errors:
        raise EdgepruneError(f"the build produced a report that does not match its schema: {errors[0]}")
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    json_path = folder / "report.json"
    md_path = folder / "report.md"
    html_path = folder / "report.html"
    json_path.write_text(text)
    md_path.write_text(render_markdown(data))
    html_path.write_text(render_html(data))
    return json_path, md_path, html_path


def read_report(path: str | Path) -> Report:
    """Returns a stored report.json (or the report.json inside a build folder); InputError if it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        size = path.stat().st_size
        if size > MAX_REPORT_BYTES:  # refused before it is read: the schema check of a huge one takes minutes
            raise InputError(f"report {path} is {size / 1e6:.0f} MB; no build writes one over "
                             f"{MAX_REPORT_BYTES / 1e6:.0f} MB")
        data = json.loads(path.read_text(), parse_constant=_refuse_constant, parse_float=_finite)
    except FileNotFoundError:
        raise InputError(f"report not found: {path}") from None
    except RecursionError:
        raise InputError(f"report {path} nests deeper than any report does") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"report {path} is not valid JSON: {str(exc)[:200]}") from None
    except OSError as exc:
        raise InputError(f"cannot read report {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict) or "budgets" not in data or "latency" not in data:
        raise InputError(f"{path} is not an edgeprune report (no 'latency' or 'budgets')")
    if data.get("schema") not in READABLE_SCHEMAS:
        raise InputError(f"{path}: report schema {data.get('schema')!r}, this edgeprune reads schemas {', '.join(map(str, READABLE_SCHEMAS))}")
    errors = schema_errors(data)
    if errors:
        raise InputError(f"{path} is not a valid edgeprune report: {errors[0]}")
    return Report.from_dict(data)


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400 parses to infinity, which JSON cannot hold
        raise ValueError(f"{text[:20]} is not a number JSON allows")
    return value


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


