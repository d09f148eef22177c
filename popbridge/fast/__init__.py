"""Speed-ups below Twisted's public API, each with its measured reason (README, benchmarks).

Nothing here changes behaviour: without it popbridge runs the same, slower.
"""
