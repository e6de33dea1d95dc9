"""``aline-monitor [--runs DIR] [streamlit options]``: the monitor, served to this machine only.

Streamlit's defaults listen on every interface and send usage statistics. The app's own
``app/.streamlit/config.toml`` already says otherwise; this launcher passes the same settings as flags, so
they hold whatever Streamlit version reads or ignores that file. A ``--server.address`` given here wins:
listening elsewhere is then the user's explicit choice.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

LOCAL_DEFAULTS = {
    "--server.address": "127.0.0.1",
    "--browser.gatherUsageStats": "false",
    "--server.headless": "true",
}


def monitor_script() -> Path:
    return Path(__file__).resolve().parents[2] / "app" / "monitor.py"


def build_command(argv: list[str]) -> list[str]:
    """``python -m streamlit run app/monitor.py <streamlit flags> -- <monitor args>``.

    ``--runs DIR`` (the monitor's own option) goes after ``--``; every other argument goes to Streamlit.
    """
    ours, theirs = [], []
    it = iter(argv)
    for arg in it:
        if arg == "--runs":
            ours += [arg, next(it, "")]
        elif arg.startswith("--runs="):
            ours.append(arg)
        else:
            theirs.append(arg)
    given = {a.split("=", 1)[0] for a in theirs if a.startswith("--")}
    flags = [f"{key}={value}" for key, value in LOCAL_DEFAULTS.items() if key not in given]
    cmd = [sys.executable, "-m", "streamlit", "run", str(monitor_script()), *flags, *theirs]
    return cmd + (["--", *ours] if ours else [])


def main(argv: list[str] | None = None) -> int:
    script = monitor_script()
    if not script.is_file():
        print(f"error: {script} not found; aline-monitor needs the repository checkout", file=sys.stderr)
        return 2
    cmd = build_command(list(sys.argv[1:] if argv is None else argv))
    os.execv(cmd[0], cmd)  # replaces this process: Ctrl-C and exit codes are Streamlit's own
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
