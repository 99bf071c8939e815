from persona_interp.report.markdown import markdown_table


def test_markdown_table_formats_intervals_and_keeps_each_cell_on_one_row():
    rows = [{"condition": "base", "shift": 0.5, "shift_low": 0.25, "shift_high": 0.75},
            {"condition": "a|b", "shift": "Line one.\n\nLine two."}]
    lines = markdown_table(rows).splitlines()
    assert lines[:2] == ["| condition | shift |", "|---|---|"]
    assert lines[2] == "| base | 0.500 [0.250, 0.750] |"
    assert lines[3] == "| a\\|b | Line one.<br><br>Line two. |" and len(lines) == 4


def test_markdown_table_without_rows():
    assert markdown_table([]) == "(no rows)\n"


def test_markdown_table_of_typed_rows_leaves_a_field_a_row_lacks_empty():
    from conftest import condition_row

    from persona_interp.evaluation.rows import ConditionRow

    rows = [ConditionRow.model_validate(condition_row(kl=0.25)), ConditionRow.model_validate(condition_row(condition="p"))]
    lines = markdown_table(rows, ["condition", "shift", "kl"]).splitlines()
    assert lines[2:] == ["| base | 0.000 [0.000, 0.000] | 0.250 |", "| p | 0.000 [0.000, 0.000] |  |"]
