"""Secrets and people: masking credentials in URIs and messages, redacting logs and config
params, pseudonymising user ids. May import ``config`` and ``constants``."""
