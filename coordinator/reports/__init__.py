"""Rendering shared by the console, the auditor's privacy report and the demo report.

`charts` draws SVG charts with matplotlib; `pages` holds the Jinja2 environment and the
shared style sheet (inlined into the self-contained reports, served to the console).
"""
