"""Plain words on every page (issue 28): what a curator reads names things in their words ("rare
in the pool", "near-copies", "far from any cluster"); the technical name may stand beside it, in
brackets, or in a widget's help, never alone. Checked on the rendered pages (AppTest), in every
title, header, caption, text, message, metric, widget label, option and expander label."""

import re

import pytest

from app_helpers import open_app

# technical names a curator is not expected to know, as whole words
JARGON = ["kNN", "GLOSH", "HDBSCAN", "FPS", "farthest-point", "eps", "tail score", "tail_score", "band",
          "prototype", "prototypes", "Cramér", "TF-IDF", "mutual information", "UMAP", "c-TF-IDF",
          "knn_density", "glosh_score", "proto_dist", "fidelity_score", "consistency_score", "caption_score",
          "hdbscan_label", "dup_group", "MLLM"]
PAGES = [None, "pages/map.py", "pages/long_tail.py", "pages/confounders.py", "pages/quality.py",
         "pages/select.py"]
_PATTERN = re.compile(r"(?<![\w-])(" + "|".join(re.escape(j) for j in sorted(JARGON, key=len, reverse=True))
                      + r")(?![\w-])", re.IGNORECASE)


def _readable(text: str) -> str:
    """What is read as words: without bracketed asides (where technical names may stand), code
    spans and Markdown escapes."""
    text = str(text).replace("\\", "")
    text = re.sub(r"`[^`]*`", " ", text)
    prev = None
    while prev != text:  # nested brackets
        prev, text = text, re.sub(r"\([^()]*\)", " ", text)
    return text


def page_texts(at) -> list[tuple[str, str]]:
    out = []
    for kind in ("title", "header", "subheader", "caption", "markdown", "text", "info", "warning", "success",
                 "error"):
        out += [(kind, e.value) for e in getattr(at, kind)]
    out += [("metric", m.label) for m in at.metric]
    for kind in ("selectbox", "radio", "multiselect", "slider", "checkbox", "toggle", "button", "text_input",
                 "number_input", "expander", "tabs"):
        for w in getattr(at, kind, []):
            out.append((kind, getattr(w, "label", "")))
            if kind in ("selectbox", "radio", "multiselect"):
                out += [(f"{kind} option", o) for o in w.options]
    return out


def jargon_in(texts) -> list[tuple[str, str, str]]:
    return [(kind, m.group(0), str(t)[:120]) for kind, t in texts for m in _PATTERN.finditer(_readable(t))]


def test_the_check_finds_jargon_outside_brackets_only():
    texts = [("caption", "rarity in the pool (tail score)"), ("metric", "Prototype clusters"),
             ("caption", "kept: far from any cluster (GLOSH outlier score)"), ("markdown", "run `--knn 10`"),
             ("selectbox option", "band"), ("caption", "dropped\\: near\\-copy (cosine > 1 \\- eps)")]
    assert [(k, w) for k, w, _ in jargon_in(texts)] == [("metric", "Prototype"), ("selectbox option", "band")]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_speaks_plain_words(read_only_app_data, page):
    at = open_app(page)
    if page == "pages/map.py":  # the inspector too, and a colouring by a technical column
        at.session_state["inspect_row"] = 11
        at.selectbox(key="map_color").set_value("glosh_score").run()
    if page == "pages/select.py":
        at.selectbox(key="sel_outliers").set_value("keep").run() if "sel_outliers" in at.session_state else None
    assert not at.exception, at.exception
    found = jargon_in(page_texts(at))
    assert not found, "\n".join(map(str, found))
