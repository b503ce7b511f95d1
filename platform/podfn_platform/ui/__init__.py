"""The dashboard at /ui: server-rendered pages over the same Postgres and the same tokens.

docs/ui.md says what it shows and how it signs people in.
"""
