"""Safe text on every page: user strings (ids, paths, captions, column names, error messages) shown as
text, never Markdown or HTML; the library's errors in the app's words."""

from __future__ import annotations

import re

import streamlit as st


# --- safe text ---------------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&\"'=^])")


def esc(value) -> str:
    """``value`` as literal text inside Markdown: every Markdown, directive (``:red[...]``), LaTeX
    and HTML character is backslash-escaped, so ids, paths, column names, model names and error
    messages can never become links, images or markup."""
    return _MD_SPECIAL.sub(r"\\\1", str(value)).replace("\n", " ")


def error(msg) -> None:
    st.error(esc(msg))


def warning(msg) -> None:
    st.warning(esc(msg))


# the library's errors name the CLI's flags; on a page they name the widget that does the same
APP_WORDS = (
    ("pass --overwrite to replace this export", "tick 'Overwrite an existing export of this name'"),
    ("--overwrite", "'Overwrite an existing export of this name'"),
    ("--out name", "the file name"), ("--out", "the file name"), ("choose another name", "type another file name"),
    ("--columns", "'Also carry these metadata columns'"), ("--format", "the Format box"),
    ("--reshard", "'Also write new tars'"), ("--allow-missing", "the command line's --allow-missing"),
    ("--budget", "the budget"), ("--confounders", "the confounder columns"), ("--filter", "the filter"),
)


def app_words(msg: str) -> str:
    """An error written for the command line, in the words of the app's widgets."""
    for cli, app in APP_WORDS:
        msg = msg.replace(cli, app)
    return msg


# plain words for what a curator reads; the technical name stays beside it, for the help and the CLI
PLAIN_COLUMNS = {
    "prototype": "cluster (k-means prototype)", "hdbscan_label": "density cluster (HDBSCAN)",
    "band": "typical / rare edge / far from its cluster (band)", "selection": "in the subset or not",
    "knn_density": "how crowded its neighbourhood is (kNN density)", "tail_score": "rarity in the pool (tail score)",
    "glosh_score": "far from any cluster (GLOSH outlier score)", "proto_dist": "distance to its cluster centre",
    "fidelity_score": "caption matches the image (fidelity)", "consistency_score": "caption agrees with similar "
    "images' captions (consistency)", "caption_score": "caption quality (placeholders, content words)",
}
PLAIN_BANDS = {"core": "typical of its cluster", "tail": "at its cluster's rare edge",
               "outlier": "far from its cluster's centre"}
PLAIN_REASONS = {
    "kept_tail": "kept: rare in the pool", "kept_core_fps": "kept: covers its cluster (farthest-point order)",
    "kept_outlier": "kept: far from any cluster", "kept_by_rule": "kept: included by a rule",
    "dropped_duplicate": "dropped: near-copy of a kept sample", "dropped_below_gate": "dropped: below a quality gate",
    "dropped_outlier": "dropped: far from any cluster", "dropped_filtered": "dropped: filtered out",
    "dropped_over_budget": "eligible, over the budget", "dropped_low_fidelity": "dropped: caption does not match "
    "its image (fidelity guard)", "dropped_by_rule": "dropped: excluded by a rule",
    "dropped_low_caption_quality": "dropped: placeholder or empty caption (caption guard)",
}


def plain(name: str, table: dict = PLAIN_COLUMNS) -> str:
    """A column or reason in a curator's words (the name itself when there is none)."""
    return table.get(str(name), str(name))
