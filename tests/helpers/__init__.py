"""Helpers shared by the test modules: fixture data, reference implementations and fault drivers.

``evalhelp``: a tiny trained run for evaluation and prediction tests; ``gaussref``: brute-force Gaussian
conditioning to check the Kalman code against; ``gloohelp``: how multi-process tests start their gloo
ranks; ``monitor_fixtures``: run folders written as the run-folder contract says; ``engines``: fake
evaluators and run-folder readers for the handler tests; ``run_safety_driver``: the trainer with one fault
injected, run as a script by ``tests/test_run_safety.py``.
"""
