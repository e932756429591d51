"""Judging the lists: ranking metrics with paired intervals (``metrics``), the EASE and item-kNN
baselines (``linear``, item-kNN's Spark scoring in ``item_knn``), and the plots logged to MLflow.
May import ``ranking``, ``models``, ``store``, ``config``, ``constants`` and ``udfs``."""
