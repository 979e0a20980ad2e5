"""The web console: pages for admins, operators and auditors, served by the coordinator.

Server-rendered (Jinja2 templates, matplotlib SVG charts, one vendored script that keeps a
running round's panel live), signed in with the people's API tokens (`session`), and
authorized per route exactly like the REST API (`session.console_roles`). `views` are the
pages, `actions` the forms, `queries` what they read, `graphs` the charts they draw,
`report` the auditor's privacy report. See docs/console.md.
"""
