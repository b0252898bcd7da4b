"""Plain-text tables for terminals and log files."""

from __future__ import annotations


def text_table(rows: list[dict], columns: list[str]) -> str:
    """Rows as an aligned plain-text table; floats to 4 significant digits."""
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    width = {c: max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns}
    line = lambda cells: "  ".join(cell.ljust(width[c]) for c, cell in zip(columns, cells))
    return "\n".join([line(columns), line(["-" * width[c] for c in columns]),
                      *(line([fmt(r.get(c, "")) for c in columns]) for r in rows)])
