"""Plan files: the documented reference plan equals the shipped one; bad files name file, key and reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from incentive_engine.core.plan import PlanBook, parse_plan
from incentive_engine.errors import PlanError

from .ledgers import REFERENCE_PLAN

ROOT = Path(__file__).resolve().parents[1]


def test_documented_reference_plan_is_the_shipped_one():
    doc = (ROOT / "docs" / "plan-files.md").read_text()
    block = re.search(r"## The reference plan\n\n```yaml\n(.*?)```", doc, re.S).group(1)
    documented = parse_plan(block, "docs/plan-files.md").model
    shipped = parse_plan(REFERENCE_PLAN.read_text(), "reference.yaml").model
    assert documented.model_dump(exclude={"scorecards", "description"}) == shipped.model_dump(
        exclude={"scorecards", "description"}
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("cap: 1.5", "cap: -1", "release.nrr.cap: Input should be greater than 0"),
        ("count: 4", "count: 3", "vesting_years has 4 entries but count is 3"),
        (
            "upfront_share: 0.50",
            "upfront_share: 1.5",
            "commission.upfront_share: Input should be less than or equal to 1",
        ),
        ("grace_days: 90", "grace_days: soon", "release.lapse.grace_days"),
        ("tranche: [contract_veto", "tranche: [made_up_rule, contract_veto", "release.checks.tranche.0"),
        ("cadence: monthly", "cadence: weekly", "payout.cadence"),
        ("plan_id: reference", "plan_id: reference\nsurprise: 1", "surprise: Extra inputs are not permitted"),
        ("weight: 0.40", "weight: -0.40", "scorecards"),
    ],
)
def test_bad_plan_files_name_the_file_the_key_and_the_reason(old, new, message):
    text = REFERENCE_PLAN.read_text()
    assert old in text
    with pytest.raises(PlanError) as err:
        parse_plan(text.replace(old, new, 1), "rules/bad.yaml")
    assert "rules/bad.yaml" in str(err.value) and message in str(err.value)


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(PlanError) as err:
        parse_plan("plan_id: x\nversion: [1\n", "rules/broken.yaml")
    assert str(err.value).startswith("rules/broken.yaml:")


def test_the_plan_in_force_on_the_signing_date_governs():
    text = REFERENCE_PLAN.read_text()
    p2028 = text.replace('version: "1"', 'version: "2028"').replace(
        "effective_from: 2000-01-01", "effective_from: 2028-01-01"
    )
    book = PlanBook([parse_plan(text, "a.yaml"), parse_plan(p2028, "b.yaml")])
    from datetime import date

    assert book.in_force(date(2027, 12, 31)).version == "1"
    assert book.in_force(date(2028, 1, 1)).version == "2028"
    with pytest.raises(PlanError, match="no plan in force on 1999-12-31"):
        book.in_force(date(1999, 12, 31))
    with pytest.raises(PlanError, match="is also the date of"):
        PlanBook([parse_plan(text, "a.yaml"), parse_plan(text.replace('version: "1"', 'version: "2"'), "c.yaml")])
