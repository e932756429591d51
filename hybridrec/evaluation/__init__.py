"""Judging the lists: ranking metrics with paired intervals (``metrics``), the EASE and item-kNN
baselines (``linear``), and the plots logged to MLflow. May import ``ranking``, ``models``,
``store``, ``config``, ``constants`` and ``udfs``."""
