"""The training task of the retrain and backfill DAGs, built for the configured launcher.

- ``local``: a TaskFlow task that runs ``python -m pipelines.cli train`` (or
  ``torchrun``) as a subprocess of the Airflow worker.
- ``docker``: the Docker provider's ``DockerOperator`` runs the trainer image
  with the requested GPUs and the output volume mounted.
- ``kubernetes``: the Kubernetes provider's ``KubernetesPodOperator`` runs
  the same image as a pod with ``nvidia.com/gpu`` limits.

Either container resumes the DAG run's MLflow parent run through
``MLFLOW_RUN_ID``. The providers are imported only for their launcher, so the
DAGs import without the ``deploy`` extra when training runs locally.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from pipelines.errors import ConfigError
from pipelines.orchestration import DeploymentConfig, LauncherSettings

logger = logging.getLogger(__name__)

RUN_ID_TEMPLATE = "{{ ti.xcom_pull(task_ids='start_run') }}"
_INSTALL_HINT = "install the deploy extra: pip install 'mora[deploy]'"


def container_command(launcher: LauncherSettings, config: Path | None = None) -> list[str]:
    """Return the trainer container's command, with the run's params filled in by Airflow.

    The config is ``<config_root>/<file name>`` inside the image: of
    ``config`` when given, else of the run's ``config`` param.
    """
    name = config.name if config is not None else "{{ params.config.split('/')[-1] }}"
    inside = f"{launcher.config_root.rstrip('/')}/{name}"
    trainer = "mora train"
    if launcher.nproc_per_node > 1:
        trainer = f"torchrun --nproc-per-node {launcher.nproc_per_node} -m pipelines.cli train"
    options = (
        "{% if params.resolution is not none %} --resolution {{ params.resolution }}{% endif %}"
        "{% if params.force %} --force{% endif %}"
    )
    return ["bash", "-c", f"exec {trainer} {inside}{options}"]


def container_environment(launcher: LauncherSettings) -> dict[str, str]:
    """Return the container's plain environment: the run id and the listed worker variables."""
    environment = {name: os.environ[name] for name in launcher.env if name in os.environ}
    environment["MORA_OUTPUT_ROOT"] = launcher.outputs_mount
    environment["MLFLOW_RUN_ID"] = RUN_ID_TEMPLATE
    return environment


def training_task(
    deployment: DeploymentConfig,
    mlflow_run: Any,
    config: Path | None = None,
    outlets: list | None = None,
):
    """Add the training task to the DAG being defined and return it.

    Args:
        deployment: Deployment config; its ``launcher`` selects the kind.
        mlflow_run: XCom of the ``start_run`` task (the MLflow parent run id).
        config: Region config; None reads it from the DAG run's params.
        outlets: Assets the task updates (the embedding tables).

    Raises:
        ConfigError: The launcher's provider is not installed.
    """
    launcher = deployment.launcher
    timeout = timedelta(minutes=deployment.tasks.train_timeout_minutes)
    outlets = list(outlets or [])
    if launcher.kind == "local":
        from pipelines.airflow_tasks import train_local

        task = train_local.override(task_id="train", execution_timeout=timeout, outlets=outlets)
        return task(mlflow_run, launcher.model_dump(mode="json"), str(config) if config else None)
    if launcher.kind == "docker":
        operator = docker_operator(launcher, config, timeout, outlets)
    else:
        operator = kubernetes_operator(launcher, config, timeout, outlets)
    mlflow_run >> operator
    return operator


def docker_operator(
    launcher: LauncherSettings, config: Path | None, timeout: timedelta, outlets: list
):
    """Build the DockerOperator that trains in the trainer image."""
    try:
        from airflow.providers.docker.operators.docker import DockerOperator
        from docker.types import DeviceRequest, Mount
    except ImportError as error:
        raise ConfigError(
            f"launcher 'docker' needs apache-airflow-providers-docker; {_INSTALL_HINT}"
        ) from error

    secrets = {name: os.environ[name] for name in launcher.secret_env if name in os.environ}
    devices = [DeviceRequest(count=launcher.gpus, capabilities=[["gpu"]])] if launcher.gpus else []
    return DockerOperator(
        task_id="train",
        image=launcher.image,
        command=container_command(launcher, config),
        environment=container_environment(launcher),
        private_environment=secrets,
        mounts=[
            Mount(target=launcher.outputs_mount, source=launcher.outputs_volume, type="volume")
        ],
        device_requests=devices,
        docker_url=launcher.docker_url,
        network_mode=launcher.network,
        mount_tmp_dir=False,
        auto_remove="success",
        execution_timeout=timeout,
        outlets=outlets,
    )


def kubernetes_operator(
    launcher: LauncherSettings, config: Path | None, timeout: timedelta, outlets: list
):
    """Build the KubernetesPodOperator that trains in the trainer image."""
    try:
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
        from kubernetes.client import models as k8s
    except ImportError as error:
        raise ConfigError(
            f"launcher 'kubernetes' needs apache-airflow-providers-cncf-kubernetes; {_INSTALL_HINT}"
        ) from error

    command = container_command(launcher, config)
    limits = {"nvidia.com/gpu": str(launcher.gpus)} if launcher.gpus else {}
    env_from = []
    if launcher.kubernetes_secret:
        env_from.append(
            k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=launcher.kubernetes_secret))
        )
    return KubernetesPodOperator(
        task_id="train",
        name="mora-train",
        namespace=launcher.namespace,
        image=launcher.image,
        cmds=command[:1],
        arguments=command[1:],
        env_vars=container_environment(launcher),
        env_from=env_from,
        container_resources=k8s.V1ResourceRequirements(limits=limits),
        volumes=[
            k8s.V1Volume(
                name="outputs",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=launcher.outputs_volume
                ),
            )
        ],
        volume_mounts=[k8s.V1VolumeMount(name="outputs", mount_path=launcher.outputs_mount)],
        get_logs=True,
        on_finish_action="delete_pod",
        execution_timeout=timeout,
        outlets=outlets,
    )
