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
