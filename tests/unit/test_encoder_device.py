"""Which device a task's encoder uses, given the GPU addresses Spark gave it and what torch sees."""

from __future__ import annotations

import logging

import pytest
import torch

from udfs import encoder


@pytest.fixture
def task(monkeypatch):
    def given(addresses: list[str], cuda: bool) -> None:
        monkeypatch.setattr(encoder, "task_gpu_addresses", lambda: addresses)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)

    return given


def test_a_task_encodes_on_the_gpu_spark_assigned_it(task):
    task(["1"], cuda=True)
    assert encoder.choose_device("auto") == "cuda:1"
    assert encoder.choose_device("cuda") == "cuda:1"


def test_an_assigned_gpu_torch_cannot_see_falls_back_to_cpu_with_a_warning(task, caplog):
    task(["1"], cuda=False)
    with caplog.at_level(logging.WARNING, logger=encoder.log.name):
        assert encoder.choose_device("auto") == "cpu"
    assert "Spark assigned GPU address 1 but torch" in caplog.text
    assert "encoding on the CPU" in caplog.text


def test_cuda_mode_fails_rather_than_encode_on_the_cpu(task):
    task(["0"], cuda=False)
    with pytest.raises(RuntimeError, match="GPU address 0 .* embed.device is cuda"):
        encoder.choose_device("cuda")
    task([], cuda=False)
    with pytest.raises(RuntimeError, match="embed.device is cuda but torch sees no CUDA"):
        encoder.choose_device("cuda")


def test_cpu_mode_ignores_gpus(task):
    task(["0"], cuda=True)
    assert encoder.choose_device("cpu") == "cpu"
    task([], cuda=False)
    assert encoder.choose_device("auto") == "cpu"


def test_outside_spark_a_task_has_no_gpu_addresses():
    assert encoder.task_gpu_addresses() == []
