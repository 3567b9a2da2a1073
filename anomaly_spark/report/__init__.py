"""HTML report rendering with Jinja2; every value from the data is escaped."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from ..logs import mask_secrets

__all__ = ["render_report"]


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("anomaly_spark", "report/templates"),
        autoescape=select_autoescape(["html"], default=True),
    )
    env.filters["fmt"] = _format_number
    return env


def _format_number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _embed_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_report(summary: dict[str, Any], top_anomalies: list[dict[str, Any]], plots: dict[str, Path], path: Path) -> Path:
    """Render the self-contained run report (CSS inline, plots embedded) to ``path``."""
    template = _environment().get_template("report.html")
    images = {name: _embed_png(p) for name, p in plots.items() if p.exists()}
    html = template.render(summary=summary, top_anomalies=top_anomalies, images=images)
    path.write_text(mask_secrets(html), encoding="utf-8")
    return path
