"""Append-only JSONL: a torn last line is a killed writer's and is skipped; a bad line before it is corruption."""

from __future__ import annotations

import pytest

from hooked_av.data.jsonl import JSONLError, append_rows, iter_rows


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "rows.jsonl"
    append_rows(path, [{"a": 1}, {"a": 2}])
    with path.open("a") as f:
        f.write('{"a": 3, "b')
    assert list(iter_rows(path)) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("bad", ['{"a": 3, "b', "[1, 2]", "not json"])
def test_a_malformed_line_in_the_middle_is_an_error_with_its_line_number(tmp_path, bad):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n' + bad + '\n{"a": 2}\n')
    with pytest.raises(JSONLError, match=r"rows.jsonl:2: "):
        list(iter_rows(path))


def test_a_complete_last_line_that_is_not_an_object_is_an_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n"text"\n')  # ends with a newline: written whole, so not a torn write
    with pytest.raises(JSONLError, match=r"rows.jsonl:2: "):
        list(iter_rows(path))


def test_blank_lines_are_allowed(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert list(iter_rows(path)) == [{"a": 1}, {"a": 2}]
