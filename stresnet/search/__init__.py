"""Rank search: choose a Tucker-2 rank per layer under a compression budget.

``ilp`` solves the global choice exactly, ``budgets`` parses budget strings and
``baselines`` holds the classic per-layer heuristics the search is compared with.
"""
