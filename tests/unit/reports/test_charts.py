"""Charts are inline SVG a page can hold as it is: well-formed, named, offline, accessible."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from coordinator.reports import charts

NS = {"svg": charts.SVG_NS}


def _series(n: int, rounds: int) -> list[charts.Series]:
    return [
        charts.Series(
            f"inst{i}", [(float(r), r * 0.01 * (1 + i / 10)) for r in range(1, rounds + 1)]
        )
        for i in range(n)
    ]


def test_line_chart_is_one_well_formed_svg_named_for_screen_readers() -> None:
    svg = charts.line_chart("disease: auc", _series(3, 5), y_label="auc")
    root = ET.fromstring(svg)
    assert root.tag == f"{{{charts.SVG_NS}}}svg"
    assert root.get("role") == "img"
    assert root.get("aria-label") == "disease: auc"
    assert root.find("svg:title", NS) is not None
    assert root.find("svg:title", NS).text == "disease: auc"  # type: ignore[union-attr]
    # every series carries its name as a tooltip, and its name is in the legend as text
    tips = {t.text for t in root.iter(f"{{{charts.SVG_NS}}}title")}
    assert {"inst0", "inst1", "inst2"} <= tips
    assert ">inst2<" in svg
    assert "width" not in root.attrib  # scales to its box on the page


def test_charts_reference_nothing_outside_the_page() -> None:
    svg = charts.line_chart("x", _series(2, 3))
    assert not re.search(r"""(href|src)\s*=\s*["']?(https?:|//)""", svg)
    assert "<script" not in svg
    assert "<?xml" not in svg
    assert "<!DOCTYPE" not in svg


def test_labels_from_data_are_escaped_not_markup() -> None:
    svg = charts.line_chart("<b>t</b>", [charts.Series("<script>x</script>", [(1.0, 1.0)])])
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    empty = charts.line_chart("<i>nothing</i>", [])
    assert "<i>" not in empty
    assert "nothing recorded" in empty


def test_a_thousand_rounds_of_a_hundred_institutions_stay_a_small_file() -> None:
    svg = charts.line_chart("ε", _series(100, 1000), y_from_zero=True)
    ET.fromstring(svg)
    # path simplification: far below 100 x 1,000 points of ~12 bytes each (1.2 MB)
    assert len(svg) < 300_000
    assert "<title>inst99</title>" in svg  # every series is still named


def test_the_same_inputs_give_the_same_bytes() -> None:
    first = charts.line_chart("same", _series(2, 4))
    charts._cache.clear()
    assert charts.line_chart("same", _series(2, 4)) == first


def test_timeline_names_each_stage_bar_and_the_dropouts() -> None:
    rows = [
        charts.TimelineRow(
            "round 1",
            [
                charts.StageBar("advertise_keys", 0.0, 1.0, "round 1 advertise_keys: 1.00 s"),
                charts.StageBar("share_keys", 1.0, 2.5, "round 1 share_keys: 1.50 s"),
            ],
            note="va dropped at share_keys",
        ),
        charts.TimelineRow("round 2", [charts.StageBar("advertise_keys", 3.0, 4.0, "r2")]),
    ]
    svg = charts.timeline_chart("Round timeline", rows)
    ET.fromstring(svg)
    assert "<title>round 1 share_keys: 1.50 s</title>" in svg
    assert "va dropped at share_keys" in svg
    assert charts.timeline_chart("Round timeline", []).startswith('<p class="empty">')
