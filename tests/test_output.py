"""imagefs.output: tables, records and columns as ``openstack image`` prints them."""

import json

import pytest
import yaml

from imagefs.errors import ConfigError
from imagefs.output import (LIST_COLUMNS, cell, list_columns, print_record, print_records,
                            print_table, record_columns)

RECORD = {"id": "i1", "name": "cirros", "size": 12, "tags": ["a", "b"],
          "properties": {"os_distro": "cirros", "hw": "x"}, "checksum": None}


def test_a_table_is_bordered_and_padded(capsys):
    print_table([("a", 1), ("long value", None)], ("K", "Value"))
    assert capsys.readouterr().out == (
        "+------------+-------+\n"
        "| K          | Value |\n"
        "+------------+-------+\n"
        "| a          | 1     |\n"
        "| long value |       |\n"
        "+------------+-------+\n")


def test_cells():
    assert cell(None) == "" and cell(["a", "b"]) == "a, b" and cell(3) == "3"
    assert cell({"b": 1, "a": [1]}) == '{"a": [1], "b": 1}'


def test_a_record_as_a_table_has_a_row_per_property(capsys):
    print_record(RECORD, "table")
    out = capsys.readouterr().out
    assert "| properties.hw        | x " in out and "| properties.os_distro | cirros " in out
    assert "| tags                 | a, b " in out


def test_a_records_values_one_per_line(capsys):
    print_record(RECORD, "value", record_columns(["id", "Name"]))
    assert capsys.readouterr().out == "i1\ncirros\n"


@pytest.mark.parametrize("fmt, load", [("json", json.loads), ("yaml", yaml.safe_load)])
def test_a_listing_for_programs_has_whole_records_without_c(capsys, fmt, load):
    print_records([RECORD], list_columns(None, False), fmt, whole=True)
    assert load(capsys.readouterr().out) == [RECORD]
    print_records([RECORD], list_columns(["ID", "tags"], False), fmt)
    assert load(capsys.readouterr().out) == [{"id": "i1", "tags": ["a", "b"]}]


def test_columns_by_header_or_key_in_the_order_given():
    assert list_columns(["Size", "id"], False) == [("Size", "size"), ("ID", "id")]
    assert list_columns(None, False) == list(LIST_COLUMNS)
    assert list_columns(["checksum"], False) == [("Checksum", "checksum")]  # a --long one
    assert record_columns(None) is None


def test_an_unknown_column_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown column 'colour'; the columns are: ID, "):
        list_columns(["colour"], False)
    with pytest.raises(ConfigError, match="unknown column 'colour'"):
        record_columns(["colour"])
