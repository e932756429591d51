"""hybridrec: a Spark batch recommender that fuses collaborative filtering with review text."""

__version__ = "0.1.0"
