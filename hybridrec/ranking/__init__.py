"""Turning the signals into ranked lists: full-catalog scoring (``scoring``) and per-user
candidates (``candidates``). The arithmetic itself is in ``udfs``' numpy kernels. May import
``models``, ``store``, ``config``, ``constants`` and ``udfs``."""
