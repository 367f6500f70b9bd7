"""The log streamer's line splitting: whole lines, \\r progress bars, long lines."""

from __future__ import annotations

from smtk.lines import MAX_LINE_BYTES, LineSplitter


def split(chunks: list[bytes], interval: float = 0.0) -> list[str]:
    lines: list[str] = []
    splitter = LineSplitter(lines.append, interval)
    for chunk in chunks:
        splitter.feed(chunk)
    splitter.close()
    return lines


def test_lines_are_kept_whole_across_chunks() -> None:
    data = b"first line\n" + b"x" * 200_000 + b"\nlast"
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    assert split(chunks) == ["first line", "x" * 200_000, "last"]


def test_multibyte_characters_split_across_chunks() -> None:
    data = "héllo wörld\n".encode()
    assert split([data[:2], data[2:]]) == ["héllo wörld"]


def test_progress_bar_updates_are_throttled_and_final_state_kept() -> None:
    chunks = [f"\r{i}%".encode() for i in range(101)] + [b"\n", b"done\n"]
    lines = split(chunks, interval=3600)
    assert lines[0] == "0%"  # the first update shows at once
    assert "100%" in lines  # the last state is never lost
    assert len(lines) <= 4
    assert lines[-1] == "done"


def test_crlf_is_a_plain_line_ending() -> None:
    assert split([b"a\r\nb\r\n"]) == ["a", "b"]


def test_runaway_line_is_emitted_in_pieces() -> None:
    lines = split([b"y" * (MAX_LINE_BYTES + 10)])
    assert lines[0].endswith("[line continues]")
    assert sum(len(x) for x in lines) >= MAX_LINE_BYTES
