"""What the monitor (``app/monitor.py``) reads and draws: run folders tailed incrementally, Plotly charts."""
