"""Secrets are masked in URIs, config params and log records, and MLflow prints no run URL."""

from __future__ import annotations

import io
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hybridrec.config.loader import load_config
from hybridrec.safety.redaction import (
    MASK,
    MLFLOW_URL_ENV,
    RedactingFilter,
    install_log_redaction,
    is_secret_key,
    mask_text,
    mask_uri,
    quiet_mlflow_urls,
    redact_mapping,
    remove_log_redaction,
    secret_values,
)


@pytest.fixture(autouse=True)
def _clean_logging_and_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Registers the variable with monkeypatch, which restores it after quiet_mlflow_urls sets it.
    monkeypatch.delenv(MLFLOW_URL_ENV, raising=False)
    yield
    remove_log_redaction()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "http://alice:s3cr3t@mlflow.example:5000/#/experiments/1",
            "http://***@mlflow.example:5000/#/experiments/1",
        ),
        ("postgresql://app:pa%40ss@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        ("jdbc:postgresql://app:p@ss@db:5432/hive", "jdbc:postgresql://***@db:5432/hive"),
        # AWS secret keys hold "/" and "+".
        (
            "s3a://AKIAEXAMPLE:wJal/rXUt+nFEMI@bucket/path/x.parquet",
            "s3a://***@bucket/path/x.parquet",
        ),
        ("https://ghp_0123456789abcdef@github.com/o/r.git", "https://***@github.com/o/r.git"),
        ("mongodb://u:pw99@h1:27017,h2:27017/db", "mongodb://***@h1:27017,h2:27017/db"),
    ],
)
def test_mask_uri_masks_the_whole_userinfo(uri: str, expected: str) -> None:
    assert mask_uri(uri) == expected


@pytest.mark.parametrize(
    "text",
    [
        "http://mlflow.example:5000/#/experiments/1/runs/abc",
        "sqlite:////tmp/work/mlflow.db",
        "file:///home/a@b/work",
        "thrift://metastore:9083",
        "mail alice@example.com about http://h/x",
        "stage als: done in 3.2s: rank=32, reg_param=0.1, key_env=HYBRIDREC_PSEUDONYM_KEY",
        "",
    ],
)
def test_mask_uri_leaves_text_without_credentials_alone(text: str) -> None:
    assert mask_uri(text) == text


def test_mask_uri_masks_every_uri_in_free_text() -> None:
    text = "copy from s3a://AK:sk1234@src/a to http://bob:hunter22@dst:80/b, then done"
    masked = mask_uri(text)
    assert masked == "copy from s3a://***@src/a to http://***@dst:80/b, then done"


def test_mask_uri_masks_secret_query_parameters_only() -> None:
    url = (
        "https://b.s3.amazonaws.com/k?X-Amz-Date=20260101&X-Amz-Credential=AKIA%2F1"
        "&X-Amz-Signature=deadbeef&run_id=r1&token=t0k3n&password=pw1&sig=abcd"
        "&access_token=at99&api_key=k1"
    )
    assert mask_uri(url) == (
        "https://b.s3.amazonaws.com/k?X-Amz-Date=20260101&X-Amz-Credential=***"
        "&X-Amz-Signature=***&run_id=r1&token=***&password=***&sig=***"
        "&access_token=***&api_key=***"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "jdbc:sqlserver://db:1433;user=app;password=Pw0rd!;encrypt=true",
            "jdbc:sqlserver://db:1433;user=app;password=***;encrypt=true",
        ),
        (
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=abc+/==;EndpointSuffix=x",
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=***;EndpointSuffix=x",
        ),
        (
            "--set spark.conf.spark.hadoop.fs.s3a.secret.key=SK123 --set als.rank=8",
            "--set spark.conf.spark.hadoop.fs.s3a.secret.key=*** --set als.rank=8",
        ),
        (
            "{'user': 'bob', 'password': 'pw1234', \"token\": 123456}",
            "{'user': 'bob', 'password': '***', \"token\": ***}",
        ),
    ],
)
def test_mask_uri_masks_secret_pairs_in_free_text(text: str, expected: str) -> None:
    assert mask_uri(text) == expected


def test_mask_text_also_masks_known_literals() -> None:
    assert mask_text("pw is hunter22, or hunter2", ["hunter22", "abc"]) == "pw is ***, or hunter2"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("spark.conf.spark.hadoop.fs.s3a.secret.key", True),
        ("spark.conf.spark.hadoop.fs.s3a.access.key", True),
        ("spark.conf.spark.hadoop.fs.s3a.session.token", True),
        ("spark.conf.spark.ssl.keyStorePassword", True),
        ("spark.conf.spark.authenticate.secret", True),
        ("spark.conf.spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net", True),
        ("spark.conf.spark.hadoop.javax.jdo.option.ConnectionPassword", True),
        ("source.generic.options.password", True),
        ("apiKey", True),
        ("api_key", True),
        ("aws_access_key_id", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("MLFLOW_TRACKING_TOKEN", True),
        ("client_credentials", True),
        ("proxy.auth", True),
        ("ssh.private", True),
        ("azure.sas", True),
        ("X-Amz-Signature", True),
        ("passwd", True),
        ("mlflow.tracking_uri", False),
        ("run.keep_runs", False),
        ("als.rank", False),
        ("privacy.key_env", False),
        ("privacy.pseudonymise_user_ids", False),
        ("partition_key", False),
        ("spark.conf.spark.ssl.keyStore", False),
        ("spark.conf.spark.io.encryption.keySizeBits", False),
        ("spark.conf.spark.hadoop.fs.s3a.aws.credentials.provider", False),
        ("spark.conf.spark.kubernetes.authenticate.driver.oauthTokenFile", False),
        ("embed.max_length", False),
        ("embed.pad_token", False),
        ("tokenizer", False),
        ("monkey", False),
    ],
)
def test_is_secret_key(name: str, secret: bool) -> None:
    assert is_secret_key(name) is secret


def test_no_base_config_key_is_secret() -> None:
    # Every hybridrec setting is logged as a param: none may be masked by accident.
    assert [key for key in load_config([], []).flat() if is_secret_key(key)] == []


def _config_with_secrets():
    return load_config(
        [],
        [
            "mlflow.tracking_uri=http://alice:s3cr3t@mlflow.example:5000",
            "spark.conf.spark.hadoop.fs.s3a.secret.key=SEKRETkey/1",
            "spark.conf.spark.hadoop.fs.s3a.access.key=AKIAEXAMPLE",
            "spark.conf.spark.executor.memory=8g",
            "run.metastore=jdbc:mysql://hive:hivepw@db:3306/metastore",
        ],
    )


@pytest.mark.parametrize("form", ["flat", "nested"])
def test_redact_mapping_masks_a_config_alike_flat_and_nested(form: str) -> None:
    cfg = _config_with_secrets()
    source = cfg.flat() if form == "flat" else cfg.to_dict()
    redacted = redact_mapping(source)
    flat = (
        redacted
        if form == "flat"
        else {
            f"{section}.{key}": value
            for section, values in redacted.items()
            for key, value in values.items()
        }
    )
    spark_conf = (
        {k.removeprefix("spark.conf."): v for k, v in flat.items() if k.startswith("spark.conf.")}
        if form == "flat"
        else flat["spark.conf"]
    )
    assert flat["mlflow.tracking_uri"] == "http://***@mlflow.example:5000"
    assert flat["run.metastore"] == "jdbc:mysql://***@db:3306/metastore"
    assert spark_conf["spark.hadoop.fs.s3a.secret.key"] == MASK
    assert spark_conf["spark.hadoop.fs.s3a.access.key"] == MASK
    assert spark_conf["spark.executor.memory"] == "8g"
    assert flat["als.rank"] == 32  # type kept
    assert flat["privacy.key_env"] == "HYBRIDREC_PSEUDONYM_KEY"
    text = json.dumps(redacted)
    for secret in ("s3cr3t", "SEKRETkey", "AKIAEXAMPLE", "hivepw"):
        assert secret not in text
    # The source is not changed.
    assert "s3cr3t" in json.dumps(source)


def test_redact_mapping_lists_empty_and_flag_values() -> None:
    redacted = redact_mapping(
        {
            "a.password": "",
            "b.password": None,
            "c.token": True,
            "d.secret": 1234,
            "e.uris": ["http://u:pw9876@h", {"api_key": "k" * 8, "n": 1}],
        }
    )
    assert redacted == {
        "a.password": "",
        "b.password": None,
        "c.token": True,
        "d.secret": MASK,
        "e.uris": ["http://***@h", {"api_key": MASK, "n": 1}],
    }


def test_secret_values_lists_literal_secrets() -> None:
    found = secret_values(
        {
            **_config_with_secrets().flat(),
            "tok.url": "https://ghp_tokenvalue@github.com/x?access_token=at12345&n=1",
            "pw.encoded": "postgresql://u:p%40ssword@db/x",
            "short.password": "abc",
            "flag.token": "true",
        }
    )
    assert found == {
        "s3cr3t",
        "SEKRETkey/1",
        "AKIAEXAMPLE",
        "hivepw",
        "ghp_tokenvalue",
        "at12345",
        "p%40ssword",
        "p@ssword",
    }


def _stream_logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def test_filter_masks_uri_in_args_and_known_secrets() -> None:
    logger, stream = _stream_logger("hybridrec.test_redaction.a")
    install_log_redaction(["hunter22"], from_env=False)
    logger.info("connecting to %s", "http://u:pw1234@h")
    logger.warning("retrying with %s and %r", "hunter22", {"password": "pw5678"})
    try:
        raise ValueError("cannot open s3a://AK:sk0000@bucket/x")
    except ValueError:
        logger.exception("failed")
    out = stream.getvalue()
    assert "connecting to http://***@h" in out
    assert "retrying with *** and {'password': '***'}" in out
    assert "s3a://***@bucket/x" in out  # the traceback
    for secret in ("pw1234", "hunter22", "pw5678", "sk0000"):
        assert secret not in out


def test_filter_leaves_clean_records_untouched() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "rank=%d", (32,), None)
    assert RedactingFilter(["hunter22"]).filter(record) is True
    assert record.getMessage() == "rank=32"


def test_install_is_idempotent_and_accumulates_secrets() -> None:
    logger, stream = _stream_logger("hybridrec.test_redaction.b")
    first = install_log_redaction(["alpha123"], from_env=False)
    second = install_log_redaction(["beta4567"], from_env=False)
    assert first is second
    assert logger.handlers[0].filters.count(first) == 1
    logger.info("%s %s", "alpha123", "beta4567")
    assert stream.getvalue().strip() == "hybridrec.test_redaction.b *** ***"


def test_handler_added_after_install_on_hybridrec_logger_is_covered() -> None:
    install_log_redaction(["latesecret"], from_env=False)
    logger, stream = _stream_logger("hybridrec")
    try:
        logger.info("value %s", "latesecret")
    finally:
        logger.handlers = []
        logger.propagate = True
    assert "latesecret" not in stream.getvalue()


def test_install_masks_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRIDREC_TEST_PASSWORD", "envpass99")
    logger, stream = _stream_logger("hybridrec.test_redaction.c")
    install_log_redaction()
    logger.info("got %s", "envpass99")
    assert "envpass99" not in stream.getvalue()


def test_mlflow_child_logger_records_are_masked(capfd: pytest.CaptureFixture[str]) -> None:
    # MLflow's own handler sits on "mlflow" with propagate False; a logger-level filter on
    # "mlflow" would not see records of "mlflow.*" children, only the handler-level one does.
    install_log_redaction(["hunter22"], from_env=False)
    child = logging.getLogger("mlflow.tracking.test_redaction")
    child.warning("tracking at %s as %s", "http://user:pw4321@127.0.0.1:5000", "hunter22")
    err = capfd.readouterr().err
    assert "tracking at http://***@127.0.0.1:5000 as ***" in err
    assert "pw4321" not in err and "hunter22" not in err


class _FakeTrackingServer(BaseHTTPRequestHandler):
    """Answers the two REST calls ``MlflowClient.set_terminated`` makes."""

    run = {
        "info": {
            "run_id": "r0123",
            "run_uuid": "r0123",
            "experiment_id": "7",
            "run_name": "als",
            "status": "RUNNING",
            "start_time": 1,
            "lifecycle_stage": "active",
            "artifact_uri": "file:///tmp/artifacts",
        },
        "data": {},
    }

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # runs/get
        self._reply({"run": self.run})

    def do_POST(self) -> None:  # runs/update
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._reply({"run_info": self.run["info"]})

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_tracking_uri() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeTrackingServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://user:hunter22@127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("quiet", [False, True])
def test_mlflow_prints_no_run_url_with_credentials(
    fake_tracking_uri: str, quiet: bool, capfd: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    install_log_redaction(from_env=False)
    if quiet:
        quiet_mlflow_urls()
    MlflowClient(tracking_uri=fake_tracking_uri).set_terminated("r0123")
    captured = capfd.readouterr()
    output = captured.out + captured.err
    if quiet:
        assert "hunter22" not in output
        assert "View run" not in output
    else:
        # The leak this guards against: MLflow writes the URL to stdout, bypassing logging.
        assert "🏃 View run als at: http://user:hunter22@127.0.0.1:" in captured.out


def test_mlflow_run_stores_and_prints_no_secret(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    db = tmp_path / "mlflow.db"
    secrets = secret_values(_config_with_secrets().flat())
    install_log_redaction(secrets, from_env=False)
    quiet_mlflow_urls()
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    try:
        # Its own experiment: an earlier test's active experiment id does not exist in this store.
        experiment = mlflow.set_experiment("redaction")
        with mlflow.start_run(run_name="redaction", experiment_id=experiment.experiment_id) as run:
            mlflow.log_params(redact_mapping(_config_with_secrets().flat()))
            logging.getLogger("mlflow.test_redaction").warning("uri %s", "s3cr3t")
        params = mlflow.get_run(run.info.run_id).data.params
    finally:
        mlflow.set_tracking_uri(None)
    assert params["mlflow.tracking_uri"] == "http://***@mlflow.example:5000"
    assert params["spark.conf.spark.hadoop.fs.s3a.secret.key"] == MASK
    captured = capfd.readouterr()
    assert "uri ***" in captured.err
    assert "s3cr3t" not in captured.out + captured.err
    for secret in ("SEKRETkey", "AKIAEXAMPLE", "hivepw"):
        assert secret.encode() not in db.read_bytes()


def test_mask_uri_stays_linear_on_pathological_text() -> None:
    started = time.perf_counter()
    mask_uri("x://" * 20_000 + "a=b&" * 20_000)
    assert time.perf_counter() - started < 3.0  # quadratic took ~20 s


def test_uncaught_exceptions_are_masked_in_their_tracebacks(capsys) -> None:
    install_log_redaction(["hunter22"], from_env=False)
    try:
        raise ValueError("API request to http://user:s3cret@127.0.0.1:9/api failed (hunter22)")
    except ValueError:
        sys.excepthook(*sys.exc_info())
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "API request to http://***@127.0.0.1:9/api failed (***)" in err
    assert "s3cret" not in err and "hunter22" not in err


def test_exceptions_of_threads_are_masked(capsys) -> None:
    install_log_redaction(["hunter22"], from_env=False)

    def fails() -> None:
        raise ConnectionError("http://user:s3cret@127.0.0.1:9/ refused hunter22")

    worker = threading.Thread(target=fails, name="worker")
    worker.start()
    worker.join()
    err = capsys.readouterr().err
    assert "Exception in thread worker" in err
    assert "http://***@127.0.0.1:9/ refused ***" in err
    assert "s3cret" not in err and "hunter22" not in err


def test_removing_the_redaction_restores_the_exception_hooks() -> None:
    before = (sys.excepthook, threading.excepthook, sys.unraisablehook)
    install_log_redaction(from_env=False)
    assert sys.excepthook is not before[0] and threading.excepthook is not before[1]
    remove_log_redaction()
    assert (sys.excepthook, threading.excepthook, sys.unraisablehook) == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_is_named_masked_with_its_setting(tmp_path) -> None:
    from hybridrec.ops import tracking

    uri = f"http://user:s3cret@127.0.0.1:{_closed_port()}/"
    cfg = load_config([], [f"run.work_dir={tmp_path}", f"mlflow.tracking_uri={uri}"])
    started = time.perf_counter()
    with pytest.raises(tracking.TrackingUnreachableError) as unreachable:
        tracking.check_reachable(cfg)
    message = str(unreachable.value)
    assert time.perf_counter() - started < 5
    assert "s3cret" not in message
    assert "http://***@127.0.0.1:" in message and "connection refused" in message.lower()
    assert "mlflow.tracking_uri" in message
    assert "\n" not in message


def test_a_local_store_needs_no_check(tmp_path) -> None:
    from hybridrec.ops import tracking

    tracking.check_reachable(load_config([], [f"run.work_dir={tmp_path}"]))


@pytest.fixture
def _signal_handlers() -> Iterator[None]:
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def test_mlflow_lost_mid_run_is_one_masked_line_and_status_6(
    tmp_path, capsys, _signal_handlers
) -> None:
    import requests
    from mlflow.exceptions import MlflowException

    from hybridrec.ops import runner, tracking

    install_log_redaction(from_env=False)
    uri = "http://user:s3cret@127.0.0.1:9"
    cfg = load_config([], [f"run.work_dir={tmp_path}", f"mlflow.tracking_uri={uri}"])
    with (
        pytest.raises(SystemExit) as exited,
        runner.exit_on_known_errors("R1"),
        tracking.translate_unreachable(cfg),
    ):
        try:  # what mlflow.utils.rest_utils.http_request raises once its retries are spent
            raise requests.exceptions.ConnectionError(
                "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded",
            ) from ConnectionRefusedError(111, "Connection refused")
        except requests.exceptions.ConnectionError as exc:
            # MLflow raises it without "from": the connection error is only its context.
            raise MlflowException(  # noqa: B904
                f"API request to {uri}/api/2.0/x failed with exception {exc}"
            )
    assert exited.value.code == 6
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert "s3cret" not in lines[0]
    assert lines[0] == (
        "hybridrec: MLflow tracking server http://***@127.0.0.1:9 cannot be reached "
        "(Connection refused): check mlflow.tracking_uri"
    )
