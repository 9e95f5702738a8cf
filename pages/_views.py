"""Views several pages draw: thumbnails, galleries, the sample inspector, region rows, saving a rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from curation import CurationError, id_sets, images, store
from pages import _shared, _text
from pages._knobs import get, put
from pages._text import error, esc


def show_image(root: str | None, value, caption: str | None = None, width: int = 128) -> None:
    """A thumbnail read only from inside the image root; captions as plain text, never HTML."""
    try:
        p = images.resolve_image(Path(root) if root else None, value)
        st.image(str(p), width=width)
    except CurationError as e:
        st.text(f"(no image: {e})")
    if caption is not None:
        st.text(str(caption))


def flagged_columns(info: dict) -> list[str]:
    return list(info.flagged or [])


def rows_in_region(df, region: dict | None):
    """Rows whose map position lies inside a brushed interval {"map_x": [a, b], "map_y": [c, d]}."""
    if not region or "map_x" not in region or "map_y" not in region:
        return df.iloc[:0]
    (x0, x1), (y0, y1) = region["map_x"], region["map_y"]
    m = df.map_x.between(min(x0, x1), max(x0, x1)) & df.map_y.between(min(y0, y1), max(y0, y1))
    return df[m]


def selected_mask(n: int, rows: np.ndarray) -> np.ndarray:
    m = np.zeros(n, bool)
    m[rows] = True
    return m


# --- inspect and act ---------------------------------------------------------------------------
def cluster_name(info: dict, c) -> str:
    """ "12 · edema knee": a cluster's number and its label."""
    label = (info.cluster_labels or {}).get(int(c), "")
    return f"{int(c)} · {label}" if label else str(int(c))


def gallery(df, key: str, root: str | None, page_size: int = 12, extra=None) -> None:
    """Thumbnails and captions of ``df``'s rows, ``page_size`` a page, with a page picker; each
    tile has an Inspect button (the inspector shows on the Map page)."""
    n = len(df)
    if n == 0:
        st.text("(nothing to show)")
        return
    pages = (n + page_size - 1) // page_size
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}_page") if pages > 1 else 1
    part = df.iloc[(page - 1) * page_size: page * page_size]
    grid = st.columns(6)
    for i, (row, r) in enumerate(part.iterrows()):
        with grid[i % 6]:
            show_image(root, r.get("image"), None)
            st.text(str(r.get("id")))
            if r.get("caption") is not None:
                st.text(str(r.get("caption"))[:160])
            if extra is not None:
                st.text(extra(r))
            if st.button("Inspect", key=f"{key}_inspect_{row}"):
                st.session_state["inspect_row"] = int(row)
                st.switch_page("pages/map.py")


def save_rule(path: str, name: str, rows, action: str, kind: str, meta: dict | None = None) -> str | None:
    """Store ``rows`` as an id set and add it to the exclude or include rules; returns its reference."""
    try:
        with store.open_store(path, read_only=False) as s:
            ref = id_sets.save(s, name, rows, kind=kind, meta=meta)
    except CurationError as e:
        error(f"Could not save the rule: {e}")
        return None
    key = "exclude_sets" if action == "exclude" else "include_sets"
    put(key, [r for r in get(key) if r.split("@", 1)[0] != name] + [ref])
    _shared.dataset_info.clear()
    return ref


def inspector(path: str, info: dict, df, row: int, res=None, inp=None, cfg=None) -> None:
    """One sample: image, caption (text), metadata, analysis values, reason under the current
    knobs, and its nearest neighbours from the stored kNN graph, each one click away."""
    r = df.iloc[row]
    st.subheader("Sample " + esc(r["id"]))
    c1, c2 = st.columns([1, 2])
    with c1:
        show_image(info.image_root, r.get("image"), None, width=220)
    with c2:
        if r.get("caption") is not None:
            st.text(str(r["caption"]))
        if res is not None and inp is not None:
            detail = res.details(inp, cfg, _shared.session_cache(), rows=[row])[0] if cfg is not None else ""
            reason = res.reason[row]
            st.text(f"selection: {_text.plain(reason, _text.PLAIN_REASONS)} ({reason}"
                    + (f"; {detail})" if detail else ")"))
        band = r.get("band")
        st.text(f"cluster {cluster_name(info, r['prototype'])}: {_text.plain(band, _text.PLAIN_BANDS)} (band {band})")
    fields = {k: r[k] for k in df.columns if k not in ("image", "caption", "map_x", "map_y", "map_fitted")}
    st.dataframe({"field": [str(k) for k in fields], "value": [str(v) for v in fields.values()]},
                 hide_index=True, key=f"insp_fields_{row}")
    nbr, sim = _shared.knn_graph(path, _shared.data_key(info), info.run_id)
    st.markdown("**Nearest neighbours** (stored kNN graph, analysis space)")
    grid = st.columns(5)
    for i, (j, c) in enumerate(zip(nbr[row], sim[row])):
        if j < 0:
            continue
        with grid[i % 5]:
            show_image(info.image_root, df["image"].iat[j] if "image" in df else None, None, width=100)
            st.text(f"{df['id'].iat[j]}\ncosine {c:.3f}")
            if st.button("Inspect", key=f"nbr_{row}_{j}"):
                st.session_state["inspect_row"] = int(j)
                st.rerun()
