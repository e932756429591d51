"""The stream's micro-batch: landed files to validated events (``events``), and the touched
users' history, ALS fold-in, text vectors and ranking against the serving run, as Spark jobs
(``live``) or, for a small micro-batch, in the driver (``local``).

Owns nothing the batch does not: it validates with ``hybridrec.ingest``, computes preferences
and vectors with ``hybridrec.models`` and ranks with ``hybridrec.ranking.rank``. May import
config, store, models, ranking, sources, safety, ingest and ``udfs``; nothing imports it but the
stream job.
"""
