"""Side-by-side benchmark of send-sikkert against a private Postfix relay (issue 9).

`python -m bench` (or `scripts/bench`) drives the same load through both, one after the
other on the same machine, to the same counting sink, and prints one table (and JSON).
Nothing here is part of the gateway package; it only runs it as an operator would.
"""
