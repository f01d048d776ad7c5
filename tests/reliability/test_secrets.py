"""Credentials never reach logs, MLflow params, tags or artifacts, or published files.

The shared run has secret-bearing variables in its environment
(``SECRET_VALUES``); its log records and its MLflow store are searched for
their values.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from reliability_helpers import SECRET_VALUES

from pipelines.tracking import EXPERIMENT_PREFIX, redact_uri

SECRET_TEXTS = [
    "tok-e7c1b2-not-for-logs",
    "pw-51f0aa-not-for-logs",
    "db-9d3e44-not-for-logs",
    "conn-2b8f61-not-for-logs",
]
# Characters of a user name or password as they appear in a URI, "@" included:
# an unescaped "@" in a password must not leave its tail visible.
credential_text = st.text(
    alphabet=st.sampled_from("abcXYZ0189-_.~%!$&'()*+,;=@"), min_size=1, max_size=20
)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("postgresql://mora:s3cret@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        ("https://token@mlflow.example.org/api", "https://***@mlflow.example.org/api"),
        ("mysql+pymysql://u:p@ss@host/db", "mysql+pymysql://***@host/db"),
        ("https://host/store?token=abc&region=eu", "https://host/store?token=***&region=eu"),
        ("s3://bucket/runs?X-Amz-Signature=f00&x=1", "s3://bucket/runs?X-Amz-Signature=***&x=1"),
        ("https://host/db?password=hunter2#top", "https://host/db?password=***#top"),
        ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),
        ("file:///data/mlruns", "file:///data/mlruns"),
        ("databricks", "databricks"),
    ],
)
def test_redact_uri_cases(uri, expected):
    assert redact_uri(uri) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["postgresql", "mysql+pymysql", "https", "http"]),
    credential_text,
    credential_text,
    st.sampled_from(["db.internal", "10.0.0.5:5432", "[::1]:5000"]),
)
def test_redact_uri_hides_user_and_password(scheme, user, password, host):
    uri = f"{scheme}://{user}:{password}@{host}/mlflow"
    redacted = redact_uri(uri)
    assert redacted == f"{scheme}://***@{host}/mlflow"


def test_run_logs_hold_no_secret(small_run):
    assert small_run.log_records, "the shared run collected no log records"
    messages = [record.getMessage() for record in small_run.log_records]
    assert any("tracking to sqlite:" in message for message in messages)
    for secret in SECRET_TEXTS:
        leaked = [message for message in messages if secret in message]
        assert not leaked, leaked[:3]


def _runs(small_run):
    client = MlflowClient(tracking_uri=f"sqlite:///{small_run.root.parent / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"{EXPERIMENT_PREFIX}{small_run.config.name}")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) > 1, "expected a parent run and nested stage runs"
    return runs


def test_mlflow_params_and_tags_hold_no_secret(small_run):
    for run in _runs(small_run):
        recorded = {**run.data.params, **run.data.tags}
        assert run.data.params or run.data.tags
        for key, value in recorded.items():
            for secret in [*SECRET_TEXTS, *SECRET_VALUES.values()]:
                assert secret not in key
                assert secret not in value, (run.info.run_id, key)
            # The store's address is no param: a server URI would carry credentials.
            assert "sqlite:" not in value, (run.info.run_id, key)


def test_artifacts_and_tables_hold_no_secret(small_run):
    output_root = small_run.root.parent
    files = [path for path in output_root.rglob("*") if path.is_file()]
    artifacts = [path for path in files if "mlartifacts" in path.parts]
    assert any(path.name == "region.yaml" for path in artifacts)
    for path in files:
        if path.name == "mlflow.db":
            continue
        content = path.read_bytes()
        for secret in SECRET_TEXTS:
            assert secret.encode() not in content, path
