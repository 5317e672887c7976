"""The summary table: columns, order, the weak/full ratio, the commit, and its readable views."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from pcam import cli
from pcam.errors import DataError
from pcam.evaluate import EvalResult, read_summary, write_csv
from pcam.metrics import class_image_counts
from pcam.summary import (
    BASE_COLUMNS,
    COLUMNS,
    MEAN_SEED,
    SEED_COLUMNS,
    display_frame,
    pivot_frame,
    read_summary_csv,
    render_text,
    summarize,
    summary_frame,
)

CLASSES = ["background", "cat", "dog"]
SPLITS = {"train": "train", "val": "val", "aug": "train_aug"}
WEAK = ["cam", "rw", "rw_crf", "rw_crf_aug", "deeplab", "deeplab_crf"]
FULL = ["deeplab_full", "deeplab_full_crf"]


def _confusion(seed: int) -> np.ndarray:
    """A (C, C+1) confusion matrix with a strong diagonal (the last column: predicted 255)."""
    rng = np.random.default_rng(seed)
    cm = rng.integers(0, 20, (3, 4))
    cm[np.arange(3), np.arange(3)] += rng.integers(20, 200, 3)
    return cm


def _write_eval(path: Path, seed: int, sweep: bool) -> None:
    result = EvalResult(
        split="val", class_names=CLASSES, every=1, n_images=4 + seed % 3,
        threshold=0.15 if sweep else None, confusion=_confusion(seed),
        sweep_thresholds=[0.1, 0.2] if sweep else [],
        sweep_confusion=np.stack([_confusion(seed + 50), _confusion(seed + 60)]) if sweep else None,
        class_images=class_image_counts(_confusion(seed)[None])[0] * (1 + seed % 2),
    )  # fmt: skip
    write_csv(result, path)


def _results(root: Path, experiments: dict[str, list[str]]) -> list[Path]:
    """Evaluation CSVs results/{experiment}/eval/{stage}.csv, listed in a shuffled order."""
    paths = []
    for k, (experiment, stages) in enumerate(experiments.items()):
        for j, stage in enumerate(stages):
            path = root / experiment / "eval" / f"{stage}.csv"
            _write_eval(path, 10 * k + j, sweep=stage in ("cam", "rw"))
            paths.append(path)
    return paths[::-1]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def run(tmp_path: Path):
    evals = _results(tmp_path / "results", {"puzzle": WEAK, "baseline": WEAK, "full": FULL})
    out = tmp_path / "results" / "summary.csv"
    text = summarize(
        evals, out=out, splits=SPLITS, paper={"puzzle": {"cam": 51.53}},
        commits={"puzzle": "abc123", "full": "abc123-dirty"},
    )  # fmt: skip
    return evals, out, text


def test_columns_extend_the_contract_and_rows_follow_the_stage_table(run):
    _, out, _ = run
    header = out.read_text().splitlines()[0].split(",")
    assert header == COLUMNS
    assert header[:12] == [
        "experiment", "stage", "split", "n_images", "threshold", "miou", "fg_miou", "paper_miou",
        "best_threshold", "best_miou", "miou_official", "pixel_accuracy",
    ]  # fmt: skip
    assert header[-1] == "commit"
    rows = _rows(out)
    order = [("baseline", WEAK), ("full", FULL), ("puzzle", WEAK)]
    assert [(r["experiment"], r["stage"]) for r in rows] == [(e, s) for e, ss in order for s in ss]
    assert {r["stage"]: r["split"] for r in rows} == {
        **dict.fromkeys(["cam", "rw", "rw_crf"], "train"),
        "rw_crf_aug": "train_aug",
        **dict.fromkeys(["deeplab", "deeplab_crf", *FULL], "val"),
    }


def test_cells_are_the_evaluation_numbers_formatted_as_before(run, tmp_path):
    evals, out, _ = run
    row = next(r for r in _rows(out) if (r["experiment"], r["stage"]) == ("puzzle", "cam"))
    s = read_summary(tmp_path / "results" / "puzzle" / "eval" / "cam.csv")
    assert row["miou"] == f"{s['miou']:.2f}" and row["fg_miou"] == f"{s['fg_miou']:.2f}"
    assert row["threshold"] == "0.15" and row["best_threshold"] in ("0.1", "0.2")
    assert row["paper_miou"] == "51.53" and row["n_images"] == str(s["n_images"])
    png = next(r for r in _rows(out) if r["stage"] == "rw_crf")
    assert png["threshold"] == png["best_threshold"] == png["best_miou"] == ""


def test_weak_full_ratio_pairs_each_deeplab_row_with_its_fully_supervised_kind(run):
    _, out, _ = run
    rows = {(r["experiment"], r["stage"]): r for r in _rows(out)}
    for weak, full in (("deeplab", "deeplab_full"), ("deeplab_crf", "deeplab_full_crf")):
        expected = float(rows[("puzzle", weak)]["miou"]) / float(rows[("full", full)]["miou"])
        ratio = float(rows[("puzzle", weak)]["weak_full_ratio"])
        assert ratio == pytest.approx(expected, rel=1e-3, abs=0.005)  # as printed: 2 decimals
    others = [r for k, r in rows.items() if k[1] not in ("deeplab", "deeplab_crf")]
    assert all(r["weak_full_ratio"] == "" for r in others)


def test_no_ratio_without_exactly_one_full_experiment(tmp_path):
    for experiments in ({"puzzle": WEAK}, {"puzzle": WEAK, "full": FULL, "full2": FULL}):
        evals = _results(tmp_path / str(len(experiments)), experiments)
        out = tmp_path / f"{len(experiments)}.csv"
        summarize(evals, out=out, splits=SPLITS)
        assert all(r["weak_full_ratio"] == "" for r in _rows(out))


def test_commit_comes_from_the_experiments_provenance_else_unknown(run):
    _, out, text = run
    commits = {r["experiment"]: r["commit"] for r in _rows(out)}
    assert commits == {"puzzle": "abc123", "full": "abc123-dirty", "baseline": "unknown"}
    assert "commit: abc123 (puzzle); abc123-dirty (full); unknown (baseline)" in text


def test_same_inputs_give_the_same_bytes(run, tmp_path):
    evals, out, _ = run
    again = tmp_path / "again.csv"
    summarize(
        evals, out=again, splits=SPLITS, paper={"puzzle": {"cam": 51.53}},
        commits={"puzzle": "abc123", "full": "abc123-dirty"},
    )  # fmt: skip
    assert again.read_bytes() == out.read_bytes()


def test_readable_table_labels_the_gt_chosen_threshold_and_shows_paper_and_ratio(run):
    _, out, text = run
    view = display_frame(read_summary_csv(out))
    assert list(view.columns) == [
        "experiment", "stage", "split", "images", "threshold", "mIoU", "fg mIoU",
        "GT-chosen best", "paper mIoU", "weak/full",
    ]  # fmt: skip
    cam = view[(view["experiment"] == "puzzle") & (view["stage"] == "cam")].iloc[0]
    row = next(r for r in _rows(out) if (r["experiment"], r["stage"]) == ("puzzle", "cam"))
    assert cam["GT-chosen best"] == f"{row['best_miou']} @{row['best_threshold']}"
    assert "chosen with ground truth" in text and "51.53" in text


def test_optional_columns_are_left_out_when_empty(tmp_path):
    evals = _results(tmp_path / "r", {"puzzle": WEAK})
    summarize(evals, out=tmp_path / "s.csv", splits=SPLITS)
    view = display_frame(read_summary_csv(tmp_path / "s.csv"))
    assert "paper mIoU" not in view.columns and "weak/full" not in view.columns


def test_pivot_puts_full_supervision_under_the_deeplab_columns(run):
    _, out, _ = run
    pivot = pivot_frame(read_summary_csv(out)).set_index("experiment")
    assert list(pivot.columns) == WEAK
    rows = {(r["experiment"], r["stage"]): r for r in _rows(out)}
    assert pivot.loc["full", "deeplab"] == rows[("full", "deeplab_full")]["miou"]
    assert pivot.loc["full", "cam"] == ""
    assert pivot.loc["puzzle", "cam"].startswith(rows[("puzzle", "cam")]["miou"] + " (GT-chosen")


def test_an_older_summary_without_the_new_columns_still_reads(run, tmp_path, capsys):
    _, out, _ = run
    old = tmp_path / "old.csv"
    lines = out.read_text().splitlines()
    old.write_text("\n".join(",".join(line.split(",")[: len(BASE_COLUMNS)]) for line in lines))
    assert cli.main(["show-summary", str(old)]) == 0
    printed = capsys.readouterr().out
    assert "GT-chosen best" in printed and "commit: unknown" in printed
    assert render_text(read_summary_csv(old)).splitlines()[0].split()[:2] == ["experiment", "stage"]


def test_a_file_that_is_not_a_summary_is_refused_naming_it(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"bad\.csv: not a summary table"):
        read_summary_csv(bad)
    assert read_summary_csv(io.StringIO(",".join(COLUMNS) + "\n")).empty


# --------------------------------------------------------------------------- seeds


def _seeded(root: Path, experiment: str, stages: list[str], seeds: list[int]) -> list[Path]:
    """results/{experiment}/seed-K/eval/{stage}.csv: other numbers per seed, the same images."""
    paths = []
    for seed in seeds:
        for j, stage in enumerate(stages):
            path = root / experiment / f"seed-{seed}" / "eval" / f"{stage}.csv"
            sweep = stage in ("cam", "rw")
            result = EvalResult(
                split="val", class_names=CLASSES, every=1, n_images=5,
                threshold=0.15 if sweep else None, confusion=_confusion(100 * seed + j),
                sweep_thresholds=[0.1, 0.2] if sweep else [],
                sweep_confusion=np.stack([_confusion(seed + 7), _confusion(j + 9)]) if sweep
                else None,
            )  # fmt: skip
            write_csv(result, path)
            paths.append(path)
    return paths


@pytest.fixture
def seeded(tmp_path: Path):
    root = tmp_path / "results"
    evals = [
        *_seeded(root, "puzzle", WEAK, [0, 1, 2]),
        *_results(root, {"baseline": WEAK}),
        *_seeded(root, "full", FULL, [3, 5]),
    ]
    commits = {"puzzle/seed-0": "abc", "puzzle/seed-1": "abc", "puzzle/seed-2": "abc",
               "baseline": "abc", "full/seed-3": "abc", "full/seed-5": "def"}  # fmt: skip
    frame = summary_frame(evals[::-1], SPLITS, {"puzzle": {"cam": 51.53}}, commits)
    return evals, frame, commits


def test_seeds_give_per_seed_rows_then_a_mean_row_after_the_contract_columns(seeded):
    _, frame, _ = seeded
    assert list(frame.columns) == [*COLUMNS, *SEED_COLUMNS]
    puzzle = frame[frame["experiment"] == "puzzle"]
    assert list(puzzle["stage"]) == [s for s in WEAK for _ in range(4)]
    assert list(puzzle["seed"]) == [0, 1, 2, MEAN_SEED] * len(WEAK)
    baseline = frame[frame["experiment"] == "baseline"]
    assert list(baseline["stage"]) == WEAK and baseline["seed"].isna().all()
    assert baseline[["n_seeds", "miou_std"]].isna().all().all()
    cam = puzzle[puzzle["stage"] == "cam"]
    assert (cam["paper_miou"] == 51.53).all() and (cam["split"] == "train").all()
    assert list(frame.loc[frame["seed"] == MEAN_SEED, "commit"].unique()) == ["mixed", "abc"]


def test_mean_row_values_are_what_pandas_computes_from_the_seed_rows(seeded):
    _, frame, _ = seeded
    seeds = frame[frame["seed"].map(lambda s: isinstance(s, int))]
    means = frame[frame["seed"] == MEAN_SEED].set_index(["experiment", "stage"])
    groups = seeds.groupby(["experiment", "stage"])
    assert len(means) == len(WEAK) + len(FULL) == groups.ngroups
    miou = groups["miou"]
    numeric = ["miou", "fg_miou", "best_threshold", "best_miou", "miou_official",
               "pixel_accuracy", "n_images"]  # fmt: skip
    expected = groups[numeric].agg(lambda c: c.astype(float).mean())
    expected = expected.assign(
        n_seeds=groups.size(), miou_std=miou.std(), miou_min=miou.min(), miou_max=miou.max()
    )  # fmt: skip
    got = means.loc[expected.index, expected.columns].astype(float)
    # equal up to the summation order of pandas' groupby against a Series' mean (~1e-15)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(dtype=float), rtol=1e-12)
    assert (expected["miou_std"] > 0).all()  # the seeds differ: a real spread


def test_weak_full_ratio_with_seeds_is_over_the_full_mean(seeded):
    _, frame, _ = seeded
    full = frame[(frame["experiment"] == "full") & (frame["seed"] == MEAN_SEED)]
    reference = dict(zip(full["stage"], full["miou"], strict=True))
    for _, row in frame[frame["stage"].isin(["deeplab", "deeplab_crf"])].iterrows():
        expected = row["miou"] / reference[row["stage"].replace("deeplab", "deeplab_full")]
        assert row["weak_full_ratio"] == pytest.approx(expected)


def test_seeded_csv_reads_back_and_shows_mean_plus_minus_std(seeded, tmp_path):
    evals, frame, commits = seeded
    out = tmp_path / "summary.csv"
    text = summarize(evals, out=out, splits=SPLITS, commits=commits)
    rows = _rows(out)
    mean = next(r for r in rows if r["experiment"] == "puzzle" and r["seed"] == MEAN_SEED)
    assert mean["stage"] == "cam" and mean["n_seeds"] == "3" and mean["n_images"] == "5"
    per_seed = [float(r["miou"]) for r in rows if r["experiment"] == "puzzle"
                and r["stage"] == "cam" and r["seed"] in ("0", "1", "2")]  # fmt: skip
    # the CSV's cells are rounded to 2 decimals: the mean of rounded values is within 0.01
    assert abs(float(mean["miou"]) - float(np.mean(per_seed))) <= 0.01
    assert abs(float(mean["miou_std"]) - float(np.std(per_seed, ddof=1))) <= 0.01
    view = display_frame(read_summary_csv(out))
    assert "seed" in view.columns
    cell = view[(view["experiment"] == "puzzle") & (view["seed"] == MEAN_SEED)]["mIoU"].iloc[0]
    assert cell == f"{mean['miou']} ± {float(mean['miou_std']):.2f}"
    assert cell in text
    pivot = pivot_frame(read_summary_csv(out))
    assert list(pivot["experiment"]) == ["baseline", "full", "puzzle"]
    assert pivot.set_index("experiment").loc["puzzle", "cam"].startswith(cell)


def test_seeds_that_disagree_on_their_images_are_refused_naming_the_stage(tmp_path):
    root = tmp_path / "results"
    evals = _seeded(root, "puzzle", ["deeplab"], [0, 1])
    result = EvalResult(
        split="val", class_names=CLASSES, every=1, n_images=6, threshold=None,
        confusion=_confusion(1), sweep_thresholds=[], sweep_confusion=None,
    )  # fmt: skip
    write_csv(result, evals[1])
    with pytest.raises(
        DataError, match="puzzle deeplab: the seeds' evaluations differ in n_images"
    ):
        summary_frame(evals, SPLITS, {}, {})


def test_without_seeds_there_are_no_seed_columns(run):
    _, out, _ = run
    assert out.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert "seed" not in display_frame(read_summary_csv(out)).columns


def test_another_network_s_rows_follow_the_deeplab_rows_and_pair_with_its_own_full(tmp_path):
    evals = _results(
        tmp_path / "results",
        {"puzzle": WEAK, "seg": [*WEAK[:3], "segformer", "segformer_crf"],
         "full": FULL, "segfull": ["segformer_full", "segformer_full_crf"]},
    )  # fmt: skip
    out = tmp_path / "summary.csv"
    summarize(evals, out=out, splits=SPLITS)
    rows = {(r["experiment"], r["stage"]): r for r in _rows(out)}
    assert [s for e, s in rows if e == "seg"] == [
        "cam",
        "rw",
        "rw_crf",
        "segformer",
        "segformer_crf",
    ]
    assert rows[("seg", "segformer")]["split"] == "val"
    # two fully supervised experiments, one per network: no single reference, no ratio
    assert all(r["weak_full_ratio"] == "" for r in rows.values())
    only_segformer = [p for p in evals if p.parent.parent.name not in ("full",)]
    summarize(only_segformer, out=out, splits=SPLITS)
    rows = {(r["experiment"], r["stage"]): r for r in _rows(out)}
    ratio = float(rows[("seg", "segformer")]["miou"]) / float(
        rows[("segfull", "segformer_full")]["miou"]
    )
    assert float(rows[("seg", "segformer")]["weak_full_ratio"]) == pytest.approx(ratio, abs=1e-3)
    assert rows[("puzzle", "deeplab")]["weak_full_ratio"] == ""  # no DeepLab reference
    pivot = pivot_frame(read_summary_csv(out)).set_index("experiment")
    assert pivot.loc["segfull", "segformer"] == rows[("segfull", "segformer_full")]["miou"]
