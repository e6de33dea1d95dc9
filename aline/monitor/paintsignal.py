"""The browser's word that it has drawn a stage of the monitor's first page.

The monitor sends a browser session's first page in stages (runs table, first chart, the rest), because a
browser draws everything one script run sends in one go. A stage must not be sent before the one before
it is on the screen, and only the browser knows when that is. A Streamlit v2 component asks it: its
script waits until an element of the stage (``selector``) is in the page and one more frame has been
painted, then triggers ``drawn``; after ``timeout_s`` it triggers anyway, so that a stage without that
element (no runs yet) cannot hold the page back.

Streamlit without components v2 gets a timer instead: a ``run_every`` fragment whose rerun the browser
can only ask for when it is not busy. That is weaker: the timer also fires while the browser waits for a
lazily loaded script (the table's, plotly's), and the next stage then often arrives in time to be drawn
together with the one before.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

NAME = "aline_monitor_drawn"
JS = """
export default function (component) {
  const { data, setTriggerValue } = component;
  const start = performance.now();
  let done = false;
  let timer = 0;
  const check = () => {
    if (done) return;
    if (document.querySelector(data.selector) || performance.now() - start > data.timeout_ms) {
      done = true;
      requestAnimationFrame(() => setTimeout(() => setTriggerValue("drawn", data.stage), 0));
      return;
    }
    timer = setTimeout(check, 50);
  };
  check();
  return () => { done = true; clearTimeout(timer); };
}
"""
TICK_S = 0.1  # the timer of the fallback

try:
    from streamlit.components.v2 import component as _component
except ImportError:  # Streamlit without components v2
    _mount = None
else:
    # Registered once per process (a module is imported once), not on every script run.
    _mount = _component(NAME, js=JS)


def when_drawn(stage: int, selector: str, then: Callable[[], None], timeout_s: float = 5.0) -> None:
    """Call ``then`` once the browser has drawn an element matching ``selector`` (or after ``timeout_s``),
    then rerun the page."""
    if _mount is None:
        _tick(stage, then)
        return
    # ``then`` runs as the trigger's callback, before the rerun the trigger causes.
    _mount(
        key=f"drawn_{stage}",
        data={"stage": stage, "selector": selector, "timeout_ms": int(timeout_s * 1000)},
        on_drawn_change=then,
        height=0,
    )


@st.fragment(run_every=TICK_S)
def _tick(stage: int, then: Callable[[], None]) -> None:
    # Its call in the page's run arms the browser's timer; the timer's rerun is the (weak) word. The full
    # rerun that follows stops the timer unless it calls this again.
    if st.session_state.get("_drawn_armed") == stage:
        then()
        st.rerun(scope="app")
    st.session_state["_drawn_armed"] = stage
