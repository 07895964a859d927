"""Job specs: every path is resolved inside the data directory, every mode is checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from planchet.exceptions import BadRequest, PathRefused
from planchet.messages import StartJob
from planchet.spec import ERROR_SUFFIX, JobSpec, build_spec, resolve_inside


def request(**overrides: Any) -> StartJob:
    """A read-write JSONL job on ``in.jsonl`` -> ``out.jsonl``, with overrides."""
    fields: dict[str, Any] = {
        "id": 1,
        "job": "j",
        "reader": "JsonlReader",
        "writer": "JsonlWriter",
        "metadata": {"input_file_path": "in.jsonl", "output_file_path": "out.jsonl"},
    }
    fields.update(overrides)
    return StartJob(**fields)


def meta(**paths: Any) -> dict[str, Any]:
    return {"input_file_path": "in.jsonl", "output_file_path": "out.jsonl", **paths}


def test_relative_paths_resolve_against_the_data_dir(data_dir: Path) -> None:
    spec = build_spec(
        request(metadata=meta(input_file_path="sub/in.jsonl", output_file_path="./o/../out.jsonl")),
        data_dir,
    )
    root = data_dir.resolve()
    assert spec.input_path == str(root / "sub" / "in.jsonl")
    assert spec.output_path == str(root / "out.jsonl")
    assert spec.error_path == str(root / ("out.jsonl" + ERROR_SUFFIX))
    assert all(Path(p).is_absolute() for p in (spec.input_path, spec.output_path))


def test_an_absolute_path_inside_the_data_dir_is_fine(data_dir: Path) -> None:
    inside = str(data_dir.resolve() / "in.jsonl")
    spec = build_spec(request(metadata=meta(input_file_path=inside)), data_dir)
    assert spec.input_path == inside


def test_the_data_dir_may_itself_be_a_symlink(tmp_path: Path, data_dir: Path) -> None:
    link = tmp_path / "link-to-data"
    link.symlink_to(data_dir, target_is_directory=True)
    spec = build_spec(request(), link)
    assert spec.input_path == str(data_dir.resolve() / "in.jsonl")


@pytest.mark.parametrize("key", ["input_file_path", "output_file_path", "error_file_path"])
@pytest.mark.parametrize(
    "raw", ["../in.jsonl", "sub/../../in.jsonl", "..", "/etc/passwd", "/tmp/x.jsonl"]
)
def test_paths_that_leave_the_data_dir_are_refused(data_dir: Path, key: str, raw: str) -> None:
    with pytest.raises(PathRefused, match=key) as caught:
        build_spec(request(metadata=meta(**{key: raw})), data_dir)
    assert caught.value.code == "path_refused"


def test_a_sibling_with_a_common_prefix_is_outside(tmp_path: Path, data_dir: Path) -> None:
    """``/x/data-evil`` starts with ``/x/data`` as a string, not as a path."""
    (tmp_path / "data-evil").mkdir()
    with pytest.raises(PathRefused):
        build_spec(request(metadata=meta(input_file_path="../data-evil/in.jsonl")), data_dir)


def test_a_symlink_to_a_file_outside_is_refused(tmp_path: Path, data_dir: Path) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"a": 1}\n')
    (data_dir / "innocent.jsonl").symlink_to(secret)
    with pytest.raises(PathRefused):
        build_spec(request(metadata=meta(input_file_path="innocent.jsonl")), data_dir)
    with pytest.raises(PathRefused):  # writing through it would clobber the target
        build_spec(request(metadata=meta(output_file_path="innocent.jsonl")), data_dir)


def test_a_symlinked_directory_outside_is_refused(tmp_path: Path, data_dir: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (data_dir / "linkdir").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathRefused):
        build_spec(request(metadata=meta(output_file_path="linkdir/out.jsonl")), data_dir)


def test_a_dangling_symlink_pointing_outside_is_refused(tmp_path: Path, data_dir: Path) -> None:
    (data_dir / "later.jsonl").symlink_to(tmp_path / "not-yet.jsonl")
    with pytest.raises(PathRefused):
        build_spec(request(metadata=meta(output_file_path="later.jsonl")), data_dir)


def test_a_symlink_that_stays_inside_is_followed(data_dir: Path) -> None:
    (data_dir / "real.jsonl").write_text("{}\n")
    (data_dir / "alias.jsonl").symlink_to(data_dir / "real.jsonl")
    spec = build_spec(request(metadata=meta(input_file_path="alias.jsonl")), data_dir)
    assert spec.input_path == str(data_dir.resolve() / "real.jsonl")


@pytest.mark.parametrize("raw", ["", None, 5, ["in.jsonl"], "in\x00.jsonl"])
def test_paths_must_be_non_empty_strings(data_dir: Path, raw: Any) -> None:
    with pytest.raises(BadRequest, match="input_file_path") as caught:
        resolve_inside(data_dir, raw, "input_file_path")
    assert not isinstance(caught.value, PathRefused)


def test_a_missing_path_is_a_bad_request(data_dir: Path) -> None:
    with pytest.raises(BadRequest, match="output_file_path"):
        build_spec(request(metadata={"input_file_path": "in.jsonl"}), data_dir)
    with pytest.raises(BadRequest, match="input_file_path"):
        build_spec(request(metadata={"output_file_path": "out.jsonl"}), data_dir)


@pytest.mark.parametrize(
    ("mode", "reader", "writer", "problem"),
    [
        ("read-write", None, "JsonlWriter", "needs reader"),
        ("read-write", "JsonlReader", None, "needs writer"),
        ("read", None, None, "needs reader"),
        ("read", "JsonlReader", "JsonlWriter", "takes no writer"),
        ("write", None, None, "needs writer"),
        ("write", "JsonlReader", "JsonlWriter", "takes no reader"),
    ],
)
def test_modes_need_and_refuse_readers_and_writers(
    data_dir: Path, mode: str, reader: str | None, writer: str | None, problem: str
) -> None:
    with pytest.raises(BadRequest, match=problem):
        build_spec(request(mode=mode, reader=reader, writer=writer), data_dir)


def test_read_mode(data_dir: Path) -> None:
    spec = build_spec(request(mode="read", writer=None, metadata={"input_file_path": "a.jsonl"}),
                      data_dir)
    assert spec.output_path is None
    assert spec.error_path == str(data_dir.resolve() / ("a.jsonl" + ERROR_SUFFIX))
    assert spec.files == [spec.error_path]


def test_write_mode(data_dir: Path) -> None:
    spec = build_spec(
        request(mode="write", reader=None, metadata={"output_file_path": "w.csv"},
                writer="CsvWriter"),
        data_dir,
    )
    assert spec.input_path is None
    assert spec.error_path == str(data_dir.resolve() / ("w.csv" + ERROR_SUFFIX))
    assert spec.files == [spec.output_path, spec.error_path]


def test_an_explicit_error_path(data_dir: Path) -> None:
    spec = build_spec(request(metadata=meta(error_file_path="logs/bad.jsonl")), data_dir)
    assert spec.error_path == str(data_dir.resolve() / "logs" / "bad.jsonl")


@pytest.mark.parametrize("kind", ["reader", "writer"])
def test_unknown_formats_are_refused_with_the_known_ones(data_dir: Path, kind: str) -> None:
    with pytest.raises(BadRequest, match=f"unknown {kind} 'os.system'.*Jsonl"):
        build_spec(request(**{kind: "os.system"}), data_dir)


@pytest.mark.parametrize(
    "paths",
    [
        {"output_file_path": "in.jsonl"},
        {"output_file_path": "./sub/../in.jsonl"},
        {"error_file_path": "in.jsonl"},
        {"error_file_path": "out.jsonl"},
    ],
)
def test_a_job_never_writes_over_its_own_input_or_output(data_dir: Path, paths: dict) -> None:
    with pytest.raises(BadRequest):
        build_spec(request(metadata=meta(**paths)), data_dir)


def test_identity_ignores_the_tunables(data_dir: Path) -> None:
    a = build_spec(request(), data_dir)
    b = build_spec(request(batch_size=7, lease_timeout=1.5, max_attempts=2, clean_start=True,
                           token="other"), data_dir)
    assert a != b
    assert a.identity() == b.identity()
    assert "batch_size" not in a.identity()


@pytest.mark.parametrize(
    "change",
    [
        {"metadata": meta(output_file_path="other.jsonl")},
        {"metadata": meta(input_file_path="other.jsonl")},
        {"metadata": meta(error_file_path="e.jsonl")},
        {"metadata": meta(delimiter=";")},
        {"writer": "CsvWriter"},
        {"job": "k"},
    ],
)
def test_identity_sees_everything_else(data_dir: Path, change: dict) -> None:
    assert build_spec(request(), data_dir).identity() != build_spec(
        request(**change), data_dir).identity()


def test_a_spec_survives_its_json_form(data_dir: Path) -> None:
    spec = build_spec(request(metadata=meta(extra={"nested": [1, "x"]})), data_dir)
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec


def test_a_link_planted_at_the_default_error_path_is_refused(
    tmp_path: Path, data_dir: Path
) -> None:
    """The derived ``<output>.errors.jsonl`` is resolved and checked like a named path."""
    (data_dir / ("out.jsonl" + ERROR_SUFFIX)).symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(PathRefused, match="default error file"):
        build_spec(request(), data_dir)
    (data_dir / ("a.jsonl" + ERROR_SUFFIX)).symlink_to(data_dir / ".planchet" / "x.jsonl")
    with pytest.raises(PathRefused, match=r"\.planchet"):
        build_spec(request(mode="read", writer=None, metadata={"input_file_path": "a.jsonl"}),
                   data_dir)


def test_a_default_error_path_linked_to_the_input_is_refused(data_dir: Path) -> None:
    """Following the link at the default error path shows it is the input: refused."""
    (data_dir / "in.jsonl").write_text("{}\n")
    (data_dir / ("out.jsonl" + ERROR_SUFFIX)).symlink_to(data_dir / "in.jsonl")
    with pytest.raises(BadRequest, match="cannot write the file it reads"):
        build_spec(request(), data_dir)


def test_a_default_error_path_linked_inside_is_resolved(data_dir: Path) -> None:
    """A link at the default error path that stays inside is stored as its target."""
    (data_dir / ("out.jsonl" + ERROR_SUFFIX)).symlink_to(data_dir / "errors.jsonl")
    spec = build_spec(request(), data_dir)
    assert spec.error_path == str(data_dir.resolve() / "errors.jsonl")


@pytest.mark.parametrize("levels", [200, 300])
def test_metadata_that_would_not_load_back_is_refused(data_dir: Path, levels: int) -> None:
    """A spec the server could store but not load again is refused when the job starts."""
    deep: Any = 1
    for _ in range(levels):
        deep = [deep]
    with pytest.raises(BadRequest, match="metadata cannot be stored"):
        build_spec(request(metadata=meta(extra=deep)), data_dir)
