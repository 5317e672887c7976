"""The stage table: one list of sections and scored stages that the rest of pcam reads."""

from __future__ import annotations

import pytest

from pcam import pipeline
from pcam.config import load_schema


def test_sections_are_the_schemas_stage_sections():
    schema = load_schema()
    for section in pipeline.SECTIONS:
        assert section in schema["properties"], section
        assert section in schema["$defs"], section


def test_weak_and_full_rows_in_pipeline_order():
    weak = [s.name for s in pipeline.scored_stages("weak")]
    full = [s.name for s in pipeline.scored_stages("full")]
    assert weak == ["cam", "rw", "rw_crf", "rw_crf_aug", "deeplab", "deeplab_crf"]
    assert full == ["deeplab_full", "deeplab_full_crf"]
    segformer = ["segformer", "segformer_crf"]
    full_segformer = ["segformer_full", "segformer_full_crf"]
    assert pipeline.stage_order() == weak + segformer + full + full_segformer
    assert pipeline.train_stage_names() == {"cam", "rw", "rw_crf"}  # Table 2's


def test_each_stage_names_the_split_its_summary_row_reports():
    roles = pipeline.split_roles()
    assert [roles[s] for s in ("cam", "rw", "rw_crf", "rw_crf_aug")] == ["train"] * 3 + ["aug"]
    assert {roles[s] for s in roles if s.startswith(("deeplab", "segformer"))} == {"val"}
    aug = [s.name for s in pipeline.all_scored_stages() if s.aug_masks]
    assert aug == ["rw_crf_aug"]  # scored on every training image, against the training masks


def test_another_segmentation_network_adds_rows_under_its_own_prefix():
    names = [s.name for s in pipeline.scored_stages("weak", prefix="segformer")]
    assert names[-2:] == ["segformer", "segformer_crf"]
    assert all(not s.on_train for s in pipeline.segmentation_stages("full", "segformer"))


def test_every_network_of_the_schema_has_a_prefix_the_paper_s_first():
    networks = load_schema()["$defs"]["deeplab"]["properties"]["network"]["enum"]
    assert pipeline.segmentation_prefixes() == ["deeplab", "segformer"]
    assert len(pipeline.segmentation_prefixes()) == len(networks)


def test_score_map_stages_name_their_threshold_key():
    for stage in pipeline.WEAK_LABEL_STAGES:
        assert (stage.score_key is None) == (stage.threshold is None)


def test_unknown_supervision_is_refused():
    with pytest.raises(ValueError, match="unknown supervision"):
        pipeline.scored_stages("semi")


def test_sections_and_trained_networks_of_each_supervision():
    assert pipeline.stage_sections("weak") == list(pipeline.SECTIONS)
    assert pipeline.stage_sections("full") == ["deeplab", "deeplab_inference"]
    assert pipeline.trained_sections("weak") == ["classifier", "affinitynet", "deeplab"]
    assert pipeline.trained_sections("full") == ["deeplab"]
    with pytest.raises(ValueError, match="unknown supervision"):
        pipeline.stage_sections("semi")
