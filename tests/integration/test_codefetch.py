"""Fetching sagemaker_submit_directory: S3 (a real S3-protocol server), local tar, local dir.

Malicious archives are built member by member with :mod:`tarfile`; each must be
rejected before anything is written, naming the member, with the code dir left
empty and everything around it untouched.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtk.codefetch import fetch_code
from smtk.environment import Environment
from smtk.errors import ArchiveError, ConfigError
from tests.helpers.jobtree import make_tree
from tests.helpers.s3server import S3Server
from tests.helpers.slowproxy import SlowProxy


@dataclass
class Member:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    mode: int = 0o644


def build_tar(path: Path, members: list[Member], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.type
            info.mode = m.mode
            info.linkname = m.linkname
            if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                info.devmajor, info.devminor = 1, 3
            info.size = len(m.data) if m.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(m.data) if m.type == tarfile.REGTYPE else None)
    return path


def job(tmp_path: Path, submit: str | None, **environ: str) -> Environment:
    hps = {"sagemaker_submit_directory": submit} if submit is not None else {}
    root = make_tree(tmp_path / "job", hyperparameters=hps)
    return Environment(root=root, environ=environ)


def snapshot(base: Path, skip: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under ``base`` except inside ``skip``: (mode, size, link target)."""
    result: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        if Path(dirpath) == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            info = path.lstat()
            target = os.readlink(path) if path.is_symlink() else ""
            result[str(path)] = (info.st_mode, info.st_size, target)
    return result


def tree(path: Path) -> dict[str, str]:
    """Relative path -> kind/content of everything under ``path``."""
    result: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(path))
            if p.is_symlink():
                result[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                result[rel] = "dir"
            else:
                result[rel] = p.read_text()
    return result


GOOD = [
    Member("./", type=tarfile.DIRTYPE, mode=0o755),
    Member("./train.py", b"print('train')\n"),
    Member("./run.sh", b"#!/bin/sh\necho run\n", mode=0o4755),
    Member("./pkg", type=tarfile.DIRTYPE, mode=0o755),
    Member("./pkg/model.py", b"MODEL = 1\n"),
    Member("./latest.py", type=tarfile.SYMTYPE, linkname="pkg/model.py"),
    Member("./pkg/up", type=tarfile.SYMTYPE, linkname=".."),
    Member("./copy.py", type=tarfile.LNKTYPE, linkname="./train.py"),
]
GOOD_TREE = {
    "train.py": "print('train')\n",
    "run.sh": "#!/bin/sh\necho run\n",
    "pkg": "dir",
    "pkg/model.py": "MODEL = 1\n",
    "pkg/up": "-> ..",
    "latest.py": "-> pkg/model.py",
    "copy.py": "print('train')\n",
}


# -- local archives ----------------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "mode"), [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w")])
def test_local_tar_is_unpacked(tmp_path: Path, suffix: str, mode: str) -> None:
    archive = build_tar(tmp_path / f"sourcedir{suffix}", GOOD, mode)
    env = job(tmp_path, str(archive))
    report = fetch_code(env)
    assert report is not None
    assert (report.kind, report.skipped, report.members) == ("tar", False, len(GOOD))
    code = Path(env.paths.code_dir)
    assert tree(code) == GOOD_TREE
    # the data filter: set-uid dropped, execute bits kept
    assert stat.S_IMODE((code / "run.sh").stat().st_mode) == 0o755
    assert os.path.samefile(code / "copy.py", code / "train.py")


def test_no_submit_directory_means_nothing_to_do(tmp_path: Path) -> None:
    assert fetch_code(job(tmp_path, None)) is None


def test_submit_directory_that_is_the_code_dir(tmp_path: Path) -> None:
    root = make_tree(tmp_path, code={"train.py": ""})
    (root / "input/config/hyperparameters.json").write_text(
        '{"sagemaker_submit_directory": "%s"}' % (root / "code")
    )
    env = Environment(root=root, environ={})
    assert fetch_code(env) is None
    assert tree(root / "code") == {"train.py": ""}


def test_baked_code_wins_and_says_so(tmp_path: Path, smtk_log: pytest.LogCaptureFixture) -> None:
    archive = build_tar(tmp_path / "sourcedir.tar.gz", GOOD)
    env = job(tmp_path, str(archive))
    Path(env.paths.code_dir, "baked.py").write_text("baked\n")
    report = fetch_code(env)
    assert report is not None and report.skipped
    assert tree(Path(env.paths.code_dir)) == {"baked.py": "baked\n"}
    warning = [r.getMessage() for r in smtk_log.records if r.levelno == logging.WARNING]
    assert any("baked.py" in m and str(archive) in m and "NOT unpacking" in m for m in warning), warning


def test_local_directory_is_copied(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "train.py").write_text("t\n")
    (src / "pkg" / "m.py").write_text("m\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o6775)
    os.symlink("pkg/m.py", src / "rel.py")
    os.symlink(src / "train.py", src / "abs.py")  # absolute but inside: re-pointed into the copy
    env = job(tmp_path, str(src))
    report = fetch_code(env)
    assert report is not None and report.kind == "dir"
    code = Path(env.paths.code_dir)
    assert tree(code) == {
        "train.py": "t\n",
        "pkg": "dir",
        "pkg/m.py": "m\n",
        "run.sh": "#!/bin/sh\n",
        "rel.py": "-> pkg/m.py",
        "abs.py": "-> train.py",
    }
    assert stat.S_IMODE((code / "run.sh").stat().st_mode) == 0o755


def test_local_directory_with_escaping_link_is_rejected(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text("t\n")
    os.symlink("/etc/passwd", src / "passwd")
    env = job(tmp_path, str(src))
    with pytest.raises(ArchiveError, match="'passwd' links to '/etc/passwd', outside"):
        fetch_code(env)
    assert os.listdir(env.paths.code_dir) == []


def test_local_directory_with_fifo_is_rejected(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    env = job(tmp_path, str(src))
    with pytest.raises(ArchiveError, match="'pipe' is not a file, directory or link"):
        fetch_code(env)
    assert os.listdir(env.paths.code_dir) == []


def test_local_plain_file_is_copied(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("x\n")
    env = job(tmp_path, str(tmp_path / "train.py"))
    report = fetch_code(env)
    assert report is not None and report.kind == "file"
    assert tree(Path(env.paths.code_dir)) == {"train.py": "x\n"}


def test_file_uri_is_a_local_path(tmp_path: Path) -> None:
    archive = build_tar(tmp_path / "sourcedir.tar.gz", GOOD)
    env = job(tmp_path, f"file://{archive}")
    assert fetch_code(env) is not None
    assert tree(Path(env.paths.code_dir)) == GOOD_TREE


def test_missing_local_source(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tar.gz"
    with pytest.raises(ArchiveError, match=f"{missing}: no such file or directory"):
        fetch_code(job(tmp_path, str(missing)))


def test_not_a_tar(tmp_path: Path) -> None:
    bad = tmp_path / "sourcedir.tar.gz"
    bad.write_bytes(b"this is not gzip")
    env = job(tmp_path, str(bad))
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        fetch_code(env)
    assert os.listdir(env.paths.code_dir) == []


def test_truncated_archive_leaves_nothing_behind(tmp_path: Path) -> None:
    big = [Member(f"f{i}.txt", os.urandom(20_000)) for i in range(20)]
    archive = build_tar(tmp_path / "full.tar", big, "w")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(archive.read_bytes()[:300_000])
    env = job(tmp_path, str(cut))
    with pytest.raises(ArchiveError, match=r"cut\.tar"):
        fetch_code(env)
    assert os.listdir(env.paths.code_dir) == []


def test_member_count_limit(tmp_path: Path) -> None:
    archive = build_tar(tmp_path / "s.tar.gz", [Member(f"f{i}") for i in range(5)])
    env = job(tmp_path, str(archive), SMTK_CODE_MAX_MEMBERS="4")
    with pytest.raises(ArchiveError, match="more than 4 members") as info:
        fetch_code(env)
    assert "SMTK_CODE_MAX_MEMBERS" in str(info.value)
    assert os.listdir(env.paths.code_dir) == []


def test_size_limit_counts_uncompressed_bytes(tmp_path: Path) -> None:
    archive = build_tar(tmp_path / "s.tar.gz", [Member("zeros", bytes(4096))])
    assert archive.stat().st_size < 1024  # compresses well: the limit must look inside
    env = job(tmp_path, str(archive), SMTK_CODE_MAX_BYTES="1000")
    with pytest.raises(ArchiveError, match="unpacks to more than") as info:
        fetch_code(env)
    assert "SMTK_CODE_MAX_BYTES" in str(info.value)
    assert os.listdir(env.paths.code_dir) == []


def test_bad_limit_setting(tmp_path: Path) -> None:
    archive = build_tar(tmp_path / "s.tar.gz", GOOD)
    with pytest.raises(ConfigError, match="SMTK_CODE_MAX_BYTES: expected an integer >= 1, found '10G'"):
        fetch_code(job(tmp_path, str(archive), SMTK_CODE_MAX_BYTES="10G"))


# -- malicious archives ------------------------------------------------------------------

ABSOLUTE = f"/tmp/smtk-abs-{uuid.uuid4().hex}"

MALICIOUS = {
    "traversal": ([Member("ok.py", b"ok"), Member("../x", b"evil")], "'../x'", "'..' segment"),
    "nested-traversal": ([Member("a/../../x", b"evil")], "'a/../../x'", "'..' segment"),
    "absolute": ([Member(ABSOLUTE, b"evil")], repr(ABSOLUTE), "absolute path"),
    "symlink-escape": (
        [Member("link", type=tarfile.SYMTYPE, linkname="../../outside")],
        "'link'",
        "outside the code dir",
    ),
    "symlink-absolute": (
        [Member("etc", type=tarfile.SYMTYPE, linkname="/etc")],
        "'etc'",
        "absolute path '/etc'",
    ),
    "symlink-chain-escape": (
        # lexically "sub/up/.." is "sub", but sub/up is the code dir, so it lands above it
        [
            Member("sub", type=tarfile.DIRTYPE, mode=0o755),
            Member("sub/up", type=tarfile.SYMTYPE, linkname=".."),
            Member("esc", type=tarfile.SYMTYPE, linkname="sub/up/.."),
        ],
        "'esc'",
        "outside the code dir",
    ),
    "symlink-loop": (
        [Member("a", type=tarfile.SYMTYPE, linkname="b"), Member("b", type=tarfile.SYMTYPE, linkname="a")],
        "'a'",
        "outside the code dir",
    ),
    "hardlink-escape": (
        [Member("hl", type=tarfile.LNKTYPE, linkname="../outside.txt")],
        "'hl'",
        "hard-links to '../outside.txt'",
    ),
    "hardlink-absolute": (
        [Member("hl", type=tarfile.LNKTYPE, linkname="/etc/passwd")],
        "'hl'",
        "hard-links to '/etc/passwd'",
    ),
    "hardlink-to-unknown": (
        [Member("hl", type=tarfile.LNKTYPE, linkname="later.txt"), Member("later.txt", b"x")],
        "'hl'",
        "not an earlier regular file",
    ),
    "char-device": ([Member("null", type=tarfile.CHRTYPE)], "'null'", "character device"),
    "block-device": ([Member("sda", type=tarfile.BLKTYPE)], "'sda'", "block device"),
    "fifo": ([Member("ok.py", b"ok"), Member("pipe", type=tarfile.FIFOTYPE)], "'pipe'", "FIFO"),
    "write-through-symlink": (
        # the link itself stays inside; the file after it is written through it
        [
            Member("sub", type=tarfile.DIRTYPE, mode=0o755),
            Member("d", type=tarfile.SYMTYPE, linkname="sub"),
            Member("d/x.py", b"through"),
        ],
        "'d/x.py'",
        "written through the link 'd'",
    ),
    "write-through-escaping-symlink-first": (
        # order independent: the file comes first, the link second
        [Member("d/x.py", b"through"), Member("d", type=tarfile.SYMTYPE, linkname="sub")],
        "'d/x.py'",
        "written through the link 'd'",
    ),
    "replace-symlink-with-file": (
        [Member("a", type=tarfile.SYMTYPE, linkname="b.py"), Member("b.py", b"x"), Member("a", b"over")],
        "'a'",
        "replaces a symbolic link",
    ),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_archive_is_rejected_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    members, named, reason = MALICIOUS[case]
    archive = build_tar(tmp_path / "sourcedir.tar.gz", members)
    (tmp_path / "outside.txt").write_text("keep me\n")
    env = job(tmp_path, str(archive))
    code = Path(env.paths.code_dir)
    before = snapshot(tmp_path, code)
    with pytest.raises(ArchiveError) as info:
        fetch_code(env)
    message = str(info.value)
    assert f"unsafe member {named}" in message, message
    assert reason in message, message
    assert str(archive) in message
    assert info.value.exit_status == 2
    assert os.listdir(code) == []
    assert snapshot(tmp_path, code) == before
    assert not os.path.lexists(ABSOLUTE)
    assert not (tmp_path / "x").exists() and not (tmp_path / "job" / "opt" / "ml" / "x").exists()


# -- S3 ----------------------------------------------------------------------------------


def s3_job(tmp_path: Path, uri: str, s3_env: dict[str, str]) -> Environment:
    return job(tmp_path, uri, **s3_env)


def test_s3_archive_is_downloaded_and_unpacked(
    tmp_path: Path, s3_server: S3Server, s3_env: dict[str, str]
) -> None:
    bucket = s3_server.new_bucket()
    archive = build_tar(tmp_path / "sourcedir.tar.gz", GOOD)
    s3_server.client().upload_file(str(archive), bucket, "job-1/source/sourcedir.tar.gz")
    uri = f"s3://{bucket}/job-1/source/sourcedir.tar.gz"
    env = s3_job(tmp_path, uri, s3_env)
    report = fetch_code(env)
    assert report is not None
    assert (report.kind, report.source, report.downloaded) == ("s3", uri, archive.stat().st_size)
    assert tree(Path(env.paths.code_dir)) == GOOD_TREE


@pytest.mark.parametrize("client", ["crt", "classic"])
def test_s3_download_over_a_slow_link_logs_progress(
    tmp_path: Path,
    s3_server: S3Server,
    s3_env: dict[str, str],
    smtk_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    client: str,
) -> None:
    bucket = s3_server.new_bucket()
    # Several parts over a link of ~3 s (the CRT client reports progress once a second).
    archive = build_tar(tmp_path / "s.tar", [Member("blob.bin", os.urandom(20 * 1024 * 1024))], "w")
    s3_server.client().upload_file(str(archive), bucket, "s.tar")
    with SlowProxy(s3_server.port, bytes_per_second=2_000_000) as proxy:
        monkeypatch.setenv("S3_ENDPOINT_URL", proxy.endpoint)
        env = s3_job(
            tmp_path,
            f"s3://{bucket}/s.tar",
            {
                **s3_env,
                "S3_ENDPOINT_URL": proxy.endpoint,
                "SMTK_TRANSFER_PROGRESS_SECONDS": "0.3",
                "SMTK_S3_CLIENT": client,
            },
        )
        report = fetch_code(env)
    assert report is not None and report.downloaded == archive.stat().st_size
    lines = [
        r.getMessage()
        for r in smtk_log.records
        if r.getMessage().startswith("code: 1 files") or r.getMessage().startswith("code: 0 of 1 files")
    ]
    assert len(lines) >= 2, [r.getMessage() for r in smtk_log.records]
    # Files, bytes of the total, a rate and the time left, and bytes that only grow.
    assert re.fullmatch(
        r"code: [01] of 1 files, [\d.]+ (B|KiB|MiB) of 20\.0 MiB \(\d+%\)"
        r"(, [\d.]+ (B|KiB|MiB)/s(, ~\d+ s left)?)?",
        lines[0],
    ), lines
    percents = [int(re.search(r"\((\d+)%\)", line)[1]) for line in lines]  # type: ignore[index]
    assert percents == sorted(percents) and percents[-1] > percents[0], lines


def test_s3_malicious_archive_is_rejected(
    tmp_path: Path, s3_server: S3Server, s3_env: dict[str, str]
) -> None:
    bucket = s3_server.new_bucket()
    members, named, _ = MALICIOUS["symlink-escape"]
    archive = build_tar(tmp_path / "sourcedir.tar.gz", members)
    s3_server.client().upload_file(str(archive), bucket, "sourcedir.tar.gz")
    env = s3_job(tmp_path, f"s3://{bucket}/sourcedir.tar.gz", s3_env)
    with pytest.raises(ArchiveError, match=f"unsafe member {named}"):
        fetch_code(env)
    assert os.listdir(env.paths.code_dir) == []


def test_s3_missing_object(tmp_path: Path, s3_server: S3Server, s3_env: dict[str, str]) -> None:
    uri = f"s3://{s3_server.new_bucket()}/nope/sourcedir.tar.gz"
    with pytest.raises(ArchiveError) as info:
        fetch_code(s3_job(tmp_path, uri, s3_env))
    assert str(info.value) == f"sagemaker_submit_directory {uri}: cannot download: no such object"


def test_s3_missing_bucket(tmp_path: Path, s3_server: S3Server, s3_env: dict[str, str]) -> None:
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/sourcedir.tar.gz"
    with pytest.raises(ArchiveError, match=f"{uri}: cannot download: no such (bucket|object)"):
        fetch_code(s3_job(tmp_path, uri, s3_env))


def test_s3_uri_without_key(tmp_path: Path, s3_env: dict[str, str]) -> None:
    with pytest.raises(ArchiveError, match="found no object key"):
        fetch_code(s3_job(tmp_path, "s3://bucket/", s3_env))


def test_s3_baked_code_wins_without_downloading(tmp_path: Path, s3_env: dict[str, str]) -> None:
    # the bucket does not exist: a download attempt would fail
    env = s3_job(tmp_path, f"s3://missing-{uuid.uuid4().hex[:8]}/s.tar.gz", s3_env)
    Path(env.paths.code_dir, "train.py").write_text("")
    report = fetch_code(env)
    assert report is not None and report.skipped and report.downloaded == 0
