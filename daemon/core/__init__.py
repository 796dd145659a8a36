"""The sans-IO heart of routingd: policy model, timeout resolution, engine, breakers.

Nothing in this package may do I/O, import an event loop or read a clock: time and outcomes
are passed in, commands come out. tests/test_core_purity.py enforces it.
"""
