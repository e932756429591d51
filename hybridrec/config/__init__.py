"""Configuration: the YAML files in ``conf/``, overlays and ``--set``, their schema, checks and
one-line errors. Imports nothing else from hybridrec: every other package may import it."""
