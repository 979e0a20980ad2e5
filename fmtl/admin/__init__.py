"""`fmtl admin`: drive a coordinator's REST API as an admin, from a terminal.

`cli` is the command, `client` the typed REST client it (and the demo) uses, `tables` the
Rich tables it prints.
"""
