"""Regions of the 2-D map: every row whose map position lies inside a box or a lasso polygon, drawn
on the map or not (the map draws a sample; a rule must act on all of the pool)."""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 18  # rows per step of the polygon test: bounded memory at 10M rows


def rows_in_polygon(x: np.ndarray, y: np.ndarray, px, py) -> np.ndarray:
    """Rows (sorted int64) whose point (x, y) lies inside the polygon with vertices (px, py), by the
    even-odd rule (a point on an edge may fall either way). A bounding-box test first, then one
    crossing test per edge over the candidates only.

    Parameters
    ----------
    x, y : ndarray (n,)
        Map coordinates of every row.
    px, py : sequence of float (m,), m >= 3
        The polygon's vertices in map coordinates (closed implicitly).
    """
    px, py = np.asarray(px, np.float64), np.asarray(py, np.float64)
    if len(px) < 3 or len(px) != len(py):
        return np.zeros(0, np.int64)
    out = []
    qx, qy = np.roll(px, -1), np.roll(py, -1)
    for start in range(0, len(x), CHUNK):
        xs, ys = x[start:start + CHUNK], y[start:start + CHUNK]
        cand = np.flatnonzero((xs >= px.min()) & (xs <= px.max()) & (ys >= py.min()) & (ys <= py.max()))
        cx, cy = xs[cand].astype(np.float64), ys[cand].astype(np.float64)
        inside = np.zeros(len(cand), bool)
        for ax, ay, bx, by in zip(px, py, qx, qy):
            if ay == by:
                continue
            crosses = (ay > cy) != (by > cy)
            xint = ax + (cy - ay) * (bx - ax) / (by - ay)
            inside ^= crosses & (cx < xint)
        out.append(start + cand[inside])
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def rows_in_box(x: np.ndarray, y: np.ndarray, xr, yr) -> np.ndarray:
    """Rows (sorted int64) inside the box with x in ``xr`` and y in ``yr`` (either order, edges included)."""
    (x0, x1), (y0, y1) = sorted(map(float, xr)), sorted(map(float, yr))
    return np.flatnonzero((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)).astype(np.int64)


def box_polygon(xr, yr) -> list[list[float]]:
    """A box as the polygon of its four corners (how a box rule is stored)."""
    (x0, x1), (y0, y1) = sorted(map(float, xr)), sorted(map(float, yr))
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def selection_regions(selection) -> list[list[list[float]]]:
    """The polygons of a map selection (Streamlit's Plotly selection state: ``box`` entries with
    ``x``/``y`` ranges, ``lasso`` entries with ``x``/``y`` vertex lists), in map coordinates."""
    polys = []
    for b in (selection or {}).get("box", []) or []:
        if len(b.get("x", [])) == 2 and len(b.get("y", [])) == 2:
            polys.append(box_polygon(b["x"], b["y"]))
    for s in (selection or {}).get("lasso", []) or []:
        xs, ys = s.get("x", []), s.get("y", [])
        if len(xs) >= 3 and len(xs) == len(ys):
            polys.append([[float(a), float(b)] for a, b in zip(xs, ys)])
    return polys


def rows_in_regions(x: np.ndarray, y: np.ndarray, polygons) -> np.ndarray:
    """Rows (sorted, unique) inside any of ``polygons`` (lists of [x, y] vertices)."""
    parts = [rows_in_polygon(x, y, [p[0] for p in poly], [p[1] for p in poly]) for poly in polygons]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
