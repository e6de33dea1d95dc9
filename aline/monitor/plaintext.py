"""Text read from a run folder or the URL, made safe to put into Streamlit's markdown messages.

Streamlit renders the body of ``st.error``, ``st.warning``, ``st.info``, captions and expander labels as
markdown: a status reason holding ``![x](http://...)`` would make every browser showing it fetch that URL.
:func:`plain` escapes every character that opens markup (images, links, HTML, emphasis, code, math,
Streamlit's ``:color[...]`` directives) so that such text shows literally, on one line.
"""

from __future__ import annotations

# CommonMark lets a backslash escape any ASCII punctuation; these are the ones that can start markup here.
_SPECIAL = frozenset("\\`*_[]<>!$~{}|&")


def plain(text: object) -> str:
    """``text`` as literal markdown: special characters backslash-escaped, line breaks made spaces."""
    flat = " ".join(str(text).splitlines())
    return "".join("\\" + ch if ch in _SPECIAL else ch for ch in flat)
