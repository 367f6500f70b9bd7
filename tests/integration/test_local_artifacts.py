"""model.tar.gz and output.tar.gz as the platform stores them, from real jobs and real archives."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from smtk.local.artifacts import MODEL, OUTPUT, ArtifactError, collect, destination, pack, store_artifacts
from smtk.settings import S3Settings
from smtk.stop import Stop, Stopped
from tests.helpers.s3server import S3Server
from tests.integration.test_local import project, smtk_local  # noqa: F401 - the fixture

WRITER = """
import os
model, data = os.environ["SM_MODEL_DIR"], os.environ["SM_OUTPUT_DATA_DIR"]
os.makedirs(os.path.join(model, "tokenizer"))
open(os.path.join(model, "weights.bin"), "wb").write(bytes(range(256)) * 4096)
open(os.path.join(model, "tokenizer", "vocab.txt"), "w").write("a\\nb\\n")
open(os.path.join(data, "eval.json"), "w").write('{"acc": 0.9}')
raise SystemExit(int(os.environ.get("EXIT_WITH", "0")))
"""


def members(archive: Path | bytes) -> dict[str, bytes | None]:
    """name -> content (None for a directory) of a gzip'd tar."""
    raw = archive if isinstance(archive, bytes) else archive.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        found: dict[str, bytes | None] = {}
        for info in tar.getmembers():
            handle = tar.extractfile(info) if info.isfile() else None
            found[info.name] = handle.read() if handle is not None else None
        return found


def test_a_job_stores_both_archives_under_job_name_output(project: Path) -> None:  # noqa: F811
    (project / "src" / "train.py").write_text(WRITER)
    proc = smtk_local(
        "--source-dir", "src", "--entry-point", "train.py", "--job-dir", "job", "--job-name", "packed",
        "--output-path", "file://" + str(project / "out"), cwd=project,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    where = project / "out" / "packed" / "output"
    # The SDK's create_tar_file layout: each entry of model/ at the archive's root.
    assert members(where / MODEL) == {
        "tokenizer": None,
        "tokenizer/vocab.txt": b"a\nb\n",
        "weights.bin": bytes(range(256)) * 4096,
    }
    assert members(where / OUTPUT) == {"eval.json": b'{"acc": 0.9}'}
    assert str(where / MODEL) in proc.stdout
    assert not [p for p in where.iterdir() if p.name.startswith(".smtk-")]  # no staging left


def test_a_failed_job_stores_what_it_left_and_keeps_its_status(project: Path) -> None:  # noqa: F811
    (project / "src" / "train.py").write_text(WRITER)
    proc = smtk_local(
        "--source-dir", "src", "--entry-point", "train.py", "--job-dir", "job", "--job-name", "half",
        "--env", "EXIT_WITH=7", "--output-path", str(project / "out"), cwd=project,
    )  # fmt: skip
    assert proc.returncode == 7
    assert "weights.bin" in members(project / "out" / "half" / "output" / MODEL)


def test_s3_output_path_from_the_spec(project: Path, s3_server: S3Server) -> None:  # noqa: F811
    (project / "src" / "train.py").write_text(WRITER)
    bucket = s3_server.new_bucket()
    spec = {
        "TrainingJobName": "to-s3",
        "HyperParameters": {"sagemaker_program": '"train.py"', "sagemaker_submit_directory": '"src"'},
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/results/"},
    }
    (project / "spec.json").write_text(__import__("json").dumps(spec))
    proc = smtk_local("--spec", "spec.json", "--job-dir", "job", cwd=project, **s3_server.env())
    assert proc.returncode == 0, proc.stderr
    client = s3_server.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["results/to-s3/output/model.tar.gz", "results/to-s3/output/output.tar.gz"]
    body = client.get_object(Bucket=bucket, Key="results/to-s3/output/model.tar.gz")["Body"].read()
    assert members(body)["tokenizer/vocab.txt"] == b"a\nb\n"
    assert f"s3://{bucket}/results/to-s3/output/model.tar.gz" in proc.stdout


def test_an_output_path_that_cannot_be_written_fails_the_job(project: Path) -> None:  # noqa: F811
    (project / "src" / "train.py").write_text(WRITER)
    (project / "out").write_text("a file, not a directory")
    proc = smtk_local(
        "--source-dir", "src", "--entry-point", "train.py", "--job-dir", "job", "--job-name", "blocked",
        "--output-path", str(project / "out"), cwd=project,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "not stored" in proc.stdout and str(project / "out") in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("output_path", "expected"),
    [
        ("s3://bucket", "s3://bucket/job/output"),
        ("s3://bucket/", "s3://bucket/job/output"),
        ("s3://bucket/a/b/", "s3://bucket/a/b/job/output"),
        ("file:///tmp/out", "/tmp/out/job/output"),
        ("/tmp/out/", "/tmp/out/job/output"),
    ],
)
def test_destination(output_path: str, expected: str) -> None:
    assert destination(output_path, "job") == expected


def test_destination_refuses_other_schemes() -> None:
    with pytest.raises(ArtifactError, match="gs://"):
        destination("gs://bucket/x", "job")


def test_hosts_are_merged_later_host_winning(tmp_path: Path) -> None:
    for host, text in (("algo-1", "one"), ("algo-2", "two")):
        (tmp_path / host / "sub").mkdir(parents=True)
        (tmp_path / host / "shared.txt").write_text(text)
        (tmp_path / host / "sub" / f"{host}.txt").write_text(host)
    entries = collect([str(tmp_path / "algo-1"), str(tmp_path / "missing"), str(tmp_path / "algo-2")])
    assert sorted(entries) == ["shared.txt", "sub", "sub/algo-1.txt", "sub/algo-2.txt"]
    pack(entries, str(tmp_path / "m.tar.gz"), label="test")
    assert members(tmp_path / "m.tar.gz")["shared.txt"] == b"two"


def test_links_are_followed_and_fifos_left_out_unopened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "real.bin").write_bytes(b"weights")
    (model / "link.bin").symlink_to(tmp_path / "real.bin")
    (model / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(model / "pipe")  # opening it would block: it must be left alone
    done = threading.Event()
    thread = threading.Thread(
        target=lambda: (pack(collect([str(model)]), str(tmp_path / "m.tar.gz"), label="test"), done.set())
    )
    thread.start()
    assert done.wait(30), "packing blocked on the FIFO"
    assert members(tmp_path / "m.tar.gz") == {"link.bin": b"weights"}
    assert "pipe" in caplog.text and "dangling" in caplog.text


def test_a_stop_ends_packing(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    stop = Stop()
    stop.request()
    with pytest.raises(Stopped, match=r"packing model\.tar\.gz"):
        store_artifacts([str(tmp_path)], str(tmp_path / "out"), "job", {}, S3Settings(), stop=stop)
