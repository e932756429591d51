"""The served recommender's model code, as MLflow logs "models from code": this file, not a
pickled object, is what a loading process runs (``recommender.log_served_model``)."""

from mlflow.models import set_model

from hybridrec.serving.recommender import HybridRecommender

set_model(HybridRecommender())
