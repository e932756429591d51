"""The served recommender as an MLflow model (``recommender``): a complete run's ranking of its
served fold, exported once and loaded, predicted and served without Spark."""
