"""Pipeline YAML validation (medlens.pipelines.config): every shipped file loads; bad files name the key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from medlens.errors import ConfigError
from medlens.pipelines.config import PipelineConfig, load_pipeline_configs, shipped_pipeline_files

BASE = {"name": "demo", "segmenter": {"bundle": "seg"}, "features": ["area"]}


def test_shipped_pipelines_load() -> None:
    names = {PipelineConfig.from_yaml(p).name for p in shipped_pipeline_files()}
    assert {"skin", "polyp", "chest-xray"} <= names


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": ""}, "'name' is required"),
        ({"colour": "red"}, "colour"),
        ({"segmenter": None, "classifier": None}, "needs a 'segmenter', a 'classifier' or both"),
        ({"segmenter": None, "classifier": {"bundle": "cls"}}, "'features' are computed on the segmentation"),
        (
            {"segmenter": None, "features": [], "classifier": {"bundle": "c", "guided": "crop"}},
            "needs a segmenter",
        ),
        (
            {"features": ["area", "sparkle"]},
            r"unknown feature 'sparkle'; valid names: .*cardiothoracic_ratio",
        ),
        ({"features": "area"}, "must be a list of feature names"),
    ],
)
def test_bad_pipelines_name_the_problem(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PipelineConfig.from_dict({**BASE, **change}, "demo.yaml")


def test_user_pipelines_replace_shipped_ones_and_broken_ones_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "skin.yaml").write_text(yaml.safe_dump({**BASE, "name": "skin", "title": "My skin"}))
    (folder / "broken.yaml").write_text("name: [unclosed")
    with caplog.at_level(logging.ERROR):
        configs = load_pipeline_configs(tmp_path)
    assert configs["skin"].title == "My skin" and "polyp" in configs
    assert "broken.yaml" in caplog.text
