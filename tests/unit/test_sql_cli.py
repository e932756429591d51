"""``hybridrec sql`` / ``sql-server`` / ``spark-conf`` up to the point where Spark would start:
argument checks, the flags ``spark-conf`` prints, a taken port, and how Spark's errors become one
line. No JVM starts here."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hybridrec.analyst import sql_access
from pipelines.cli import main

REPO = Path(__file__).resolve().parents[2]
LOCAL = ["--conf", str(REPO / "conf/local.yaml")]


def _shell_words(text: str) -> list[str]:
    """What ``$(...)`` hands a command: the output split on whitespace, quotes left as they are."""
    return text.split()


def _flags(words: list[str]) -> dict[str, str]:
    assert words[0::2] == ["--conf"] * (len(words) // 2)
    return dict(word.split("=", 1) for word in words[1::2])


def test_spark_conf_flags_survive_command_substitution(tmp_path, capsys):
    assert main(["spark-conf", *LOCAL, "--set", f"run.work_dir={tmp_path}"]) == 0

    flags = _flags(_shell_words(capsys.readouterr().out))

    assert flags["spark.sql.catalogImplementation"] == "hive"
    assert flags["spark.hadoop.javax.jdo.option.ConnectionURL"] == (
        f"jdbc:derby:;databaseName={tmp_path}/metastore/metastore_db;create=true"
    )
    assert flags["spark.sql.warehouse.dir"] == f"{tmp_path}/warehouse"
    assert flags["spark.sql.sources.partitionColumnTypeInference.enabled"] == "false"
    assert flags["spark.driver.extraJavaOptions"] == f"-Dderby.system.home={tmp_path}/metastore"


def test_spark_conf_flags_for_an_external_metastore(tmp_path, capsys):
    args = ["--set", f"run.work_dir={tmp_path}", "--set", "run.metastore=thrift://meta:9083"]
    assert main(["spark-conf", *LOCAL, *args]) == 0

    flags = _flags(_shell_words(capsys.readouterr().out))

    assert flags["spark.hadoop.hive.metastore.uris"] == "thrift://meta:9083"
    assert not any("derby" in value for value in flags.values())


def test_spark_conf_refuses_flags_that_word_splitting_would_break(tmp_path, capsys):
    spaced = tmp_path / "my work"

    assert main(["spark-conf", *LOCAL, "--set", f"run.work_dir={spaced}"]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "--format properties" in err


def test_spark_conf_properties_keep_whitespace_in_one_java_option(tmp_path, capsys):
    spaced = tmp_path / "my work"
    args = ["--set", f"run.work_dir={spaced}", "--format", "properties"]

    assert main(["spark-conf", *LOCAL, *args]) == 0

    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["spark.driver.extraJavaOptions"] == f'"-Dderby.system.home={spaced}/metastore"'
    assert lines["spark.sql.warehouse.dir"] == f"{spaced}/warehouse"


@pytest.mark.parametrize(
    "args",
    [
        ["sql", "SELECT 1", "--max-rows", "0"],
        ["sql", "SELECT 1", "--max-rows", "ten"],
        ["sql", "SELECT 1", "--format", "xml"],
        ["sql-server", "--port", "70000"],
        ["spark-conf", "--format", "yaml"],
    ],
)
def test_bad_arguments_exit_2_before_spark(args, capsys):
    with pytest.raises(SystemExit) as exited:
        main(args)

    assert exited.value.code == 2
    assert ": error: argument" in capsys.readouterr().err


def test_sql_server_on_a_taken_port_is_one_line_and_exit_3(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--set", f"run.work_dir={tmp_path}", "--port", str(port)]

        with pytest.raises(SystemExit) as exited:
            main(["sql-server", *LOCAL, *args])

    assert exited.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"hybridrec: sql-server: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(pass another --port)"
    ]


def test_sql_server_on_an_address_not_here_is_a_config_error(tmp_path, capsys):
    args = ["--set", f"run.work_dir={tmp_path}", "--host", "192.0.2.123"]

    assert main(["sql-server", *LOCAL, *args]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot listen on 192.0.2.123:10000" in err[0]


class _SparkError(Exception):
    """Stands in for PySpark's captured JVM error: the message, and the JVM's stack trace."""

    def __init__(self, message: str, stack_trace: str = ""):
        super().__init__(message)
        self._stackTrace = stack_trace


def test_a_refused_statement_is_its_first_line():
    exc = _SparkError("\n[TABLE_OR_VIEW_NOT_FOUND] The table `x` cannot be found.\n'Project [*]")

    refusal = sql_access._refusal(exc)

    assert isinstance(refusal, sql_access.SqlError)
    assert str(refusal) == "[TABLE_OR_VIEW_NOT_FOUND] The table `x` cannot be found."


def test_a_catalog_held_by_another_process_is_busy_not_a_sql_error():
    exc = _SparkError(
        "org.apache.hadoop.hive.ql.metadata.HiveException: Unable to instantiate ...",
        "Caused by: ERROR XSDB6: Another instance of Derby may have already booted the database",
    )

    assert isinstance(sql_access._refusal(exc), sql_access.BusyError)
