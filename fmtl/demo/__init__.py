"""`fmtl demo`: four hospitals' federation, end to end, on this machine.

`cli` is the command, `run` drives one run (coordinator, agents, rounds), `processes` starts
and stops the child processes, `example` loads the example's spec and mappings, `record` is
what a run keeps (record.json) and `report` renders it as one self-contained HTML file.
"""
