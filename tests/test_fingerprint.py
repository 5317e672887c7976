"""Rule code fingerprints follow a stage's transitive pcam imports, and nothing else."""

from pathlib import Path

from pcam import fingerprint

REPO = Path(__file__).resolve().parent.parent


def _fake_package(tmp_path: Path) -> Path:
    pkg = tmp_path / "pcam"
    (pkg / "stages").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "stages" / "__init__.py").write_text("")
    (pkg / "io.py").write_text("X = 1\n")
    (pkg / "crf.py").write_text("from pcam.io import X\n")
    (pkg / "cams.py").write_text("Y = 2\n")
    (pkg / "stages" / "a.py").write_text("def f():\n    from pcam import crf\n")
    (pkg / "stages" / "b.py").write_text("from ..cams import Y\nimport pcam.io\n")
    return pkg


def test_closure_follows_lazy_relative_and_from_imports(tmp_path, monkeypatch):
    pkg = _fake_package(tmp_path)
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", pkg)

    def names(root):
        return {p.relative_to(tmp_path).as_posix() for p in fingerprint.module_closure(root)}

    assert names("pcam.stages.a") == {
        "pcam/stages/a.py",
        "pcam/stages/__init__.py",
        "pcam/__init__.py",
        "pcam/crf.py",
        "pcam/io.py",
    }
    assert "pcam/crf.py" not in names("pcam.stages.b")
    assert "pcam/cams.py" in names("pcam.stages.b")


def test_fingerprint_changes_only_for_stages_that_import_the_edit(tmp_path, monkeypatch):
    pkg = _fake_package(tmp_path)
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", pkg)
    before = {
        s: fingerprint.code_fingerprint.__wrapped__(s) for s in ("pcam.stages.a", "pcam.stages.b")
    }
    (pkg / "crf.py").write_text("from pcam.io import X\nZ = 3\n")
    after = {s: fingerprint.code_fingerprint.__wrapped__(s) for s in before}
    assert after["pcam.stages.a"] != before["pcam.stages.a"]
    assert after["pcam.stages.b"] == before["pcam.stages.b"]
    (pkg / "io.py").write_text("X = 2\n")
    assert fingerprint.code_fingerprint.__wrapped__("pcam.stages.b") != after["pcam.stages.b"]


def test_real_stage_closure_excludes_cli():
    files = {p.name for p in fingerprint.module_closure("pcam.summary")}
    assert "summary.py" in files and "io.py" in files and "cli.py" not in files
