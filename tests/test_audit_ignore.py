"""scripts/audit_gate.py: the verdict on pip-audit's JSON report and the ignore list's rules.

The reports are the shapes pip-audit 2.10 writes with `-f json --aliases on`: a skipped package
(what every package gets on a machine that cannot reach the vulnerability data), an audited one
without findings, and findings with and without fix versions.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("audit_gate", ROOT / "scripts" / "audit_gate.py")
assert _spec and _spec.loader
gate = importlib.util.module_from_spec(_spec)
sys.modules["audit_gate"] = gate  # dataclasses look their module up by name
_spec.loader.exec_module(gate)

TODAY = dt.date(2026, 12, 2)

CLEAN = {"name": "yarl", "version": "1.25.1", "vulns": []}
FIXABLE = {"name": "aiohttp", "version": "3.14.5", "vulns": [
    {"id": "GHSA-aaaa-bbbb-cccc", "fix_versions": ["3.14.6", "3.15.1"], "aliases": ["CVE-2026-11111", "PYSEC-2026-7"]},
]}
UNFIXED = {"name": "orjson", "version": "3.13.0", "vulns": [
    {"id": "GHSA-dddd-eeee-ffff", "fix_versions": [], "aliases": ["CVE-2026-22222"]},
]}
SKIPPED = {"name": "aiodns", "skip_reason": "Dependency not found on PyPI and could not be audited: aiodns (4.0.4)"}
OSV_DOWN = """Traceback (most recent call last):
  File "/x/requests/adapters.py", line 729, in send
    raise ConnectionError(e, request=request)
requests.exceptions.ConnectionError: HTTPSConnectionPool(host='api.osv.dev', port=443): Max retries exceeded \
with url: /v1/query (Caused by NameResolutionError("HTTPSConnection(host='api.osv.dev', port=443): Failed to \
resolve 'api.osv.dev' ([Errno -2] Name or service not known)"))
"""


def report(*deps: dict[str, Any]) -> dict[str, Any]:
    return {"dependencies": list(deps), "fixes": []}


def ignores(text: str) -> tuple[list[Any], list[str]]:
    live, problems = gate.load_ignores(text, TODAY)
    return list(live), list(problems)


def entry(id: str = "GHSA-aaaa-bbbb-cccc", reason: str = "the multipart parser is not used",
          expires: str = "2027-01-31") -> str:
    return f'[[ignore]]\nid = "{id}"\nreason = "{reason}"\nexpires = {expires}\n'


# --- findings ---------------------------------------------------------------------------------

def test_a_finding_with_a_fix_fails_and_names_package_advisory_and_fix() -> None:
    v = gate.judge(report(CLEAN, FIXABLE), [], [])
    assert v.status == gate.FINDINGS
    text = "\n".join(v.lines)
    assert "aiohttp 3.14.5 has GHSA-aaaa-bbbb-cccc (CVE-2026-11111, PYSEC-2026-7), fixed in 3.14.6, 3.15.1" in text


def test_a_finding_without_a_fix_does_not_fail_but_is_shown() -> None:
    v = gate.judge(report(CLEAN, UNFIXED), [], [])
    assert v.status == gate.OK
    assert any("orjson 3.13.0 has GHSA-dddd-eeee-ffff" in line and "no fixed release" in line for line in v.lines)


def test_all_audited_and_clean_passes() -> None:
    v = gate.judge(report(CLEAN, {"name": "gunicorn", "version": "27.0.1", "vulns": []}), [], [])
    assert v.status == gate.OK
    assert v.lines[-1] == "audit: 2 locked packages audited: no known vulnerability with a fix"


# --- the ignore list --------------------------------------------------------------------------

def test_a_reasoned_live_entry_excuses_the_finding_by_id() -> None:
    live, problems = ignores(entry())
    assert problems == []
    v = gate.judge(report(CLEAN, FIXABLE), live, problems)
    assert v.status == gate.OK
    assert any("ignored through 2027-01-31" in line and "the multipart parser is not used" in line for line in v.lines)


def test_an_entry_may_name_an_alias_and_a_quoted_date() -> None:
    live, problems = ignores(entry(id="CVE-2026-11111", expires='"2027-01-31"'))
    assert problems == [] and live[0].expires == dt.date(2027, 1, 31)
    assert gate.judge(report(FIXABLE), live, problems).status == gate.OK


def test_an_entry_for_another_advisory_excuses_nothing_and_is_reported_unused() -> None:
    live, problems = ignores(entry(id="GHSA-zzzz-zzzz-zzzz"))
    v = gate.judge(report(FIXABLE), live, problems)
    assert v.status == gate.FINDINGS
    assert gate.judge(report(CLEAN), live, problems).lines[0] == (
        "audit: note: the audit-ignore.toml entry for GHSA-zzzz-zzzz-zzzz matches no finding any more: delete it")


def test_an_expired_entry_fails_the_run_with_a_sentence_naming_it() -> None:
    live, problems = ignores(entry(expires="2026-12-01"))
    assert live == []
    assert problems == ["audit-ignore.toml: the entry for GHSA-aaaa-bbbb-cccc expired on 2026-12-01 (its reason: "
                        "the multipart parser is not used): upgrade past it, or renew the entry with a fresh "
                        "reason and date"]
    v = gate.judge(report(CLEAN), live, problems)  # even with nothing left for it to excuse
    assert v.status == gate.FINDINGS
    assert "expired on 2026-12-01" in v.lines[0]


def test_an_entry_counts_through_its_expiry_day() -> None:
    live, problems = ignores(entry(expires=TODAY.isoformat()))
    assert problems == [] and len(live) == 1


@pytest.mark.parametrize(("text", "said"), [
    ('[[ignore]]\nid = "GHSA-aaaa-bbbb-cccc"\nexpires = 2027-01-31\n', "lacks `reason`"),
    ('[[ignore]]\nid = "GHSA-aaaa-bbbb-cccc"\nreason = "x"\n', "lacks `expires`"),
    ('[[ignore]]\nreason = "x"\nexpires = 2027-01-31\n', "lacks `id`"),
    (entry(reason="   "), "blank `reason`"),
    (entry(expires='"next spring"'), "not a date"),
    (entry(expires='"2027-02-30"'), "not a date"),
    (entry(expires="2027-01-31T00:00:00"), "not a date"),
    (entry(id="GHSA-a GHSA-b"), "not one advisory id"),
    (entry() + 'expiry = 2027-01-31\n', "unknown key `expiry`"),
    (entry() + entry(), "listed twice"),
    ('ignore = "GHSA-aaaa-bbbb-cccc"\n', "array of tables"),
    ('[[ignores]]\nid = "x"\n', "unknown top-level key 'ignores'"),
    ('[[ignore]\nid = "x"\n', "not valid TOML"),
])
def test_a_malformed_entry_fails_the_run(text: str, said: str) -> None:
    live, problems = ignores(text)
    assert len(problems) == 1 and said in problems[0], problems
    assert gate.judge(report(CLEAN), live, problems).status == gate.FINDINGS


def test_a_malformed_entry_excuses_nothing() -> None:
    live, problems = ignores('[[ignore]]\nid = "GHSA-aaaa-bbbb-cccc"\nexpires = 2027-01-31\n')
    assert live == []
    assert any("fixed in 3.14.6" in line for line in gate.judge(report(FIXABLE), live, problems).lines)


def test_the_shipped_ignore_file_is_well_formed() -> None:
    _, problems = gate.load_ignores((ROOT / "audit-ignore.toml").read_text(), dt.date.today())
    assert problems == []


# --- when nothing could be audited ------------------------------------------------------------

def test_skipped_packages_are_never_a_success() -> None:
    v = gate.judge(report(SKIPPED, dict(SKIPPED, name="aiohttp")), [], [])
    assert v.status == gate.UNREACHABLE
    assert v.lines == ["audit: vulnerability data unreachable from this machine (2 of 2 packages not audited) "
                       "— the gate could not run"]


def test_some_skipped_counts_them_and_a_fixable_finding_still_fails() -> None:
    v = gate.judge(report(SKIPPED, CLEAN), [], [])
    assert (v.status, v.lines[-1]) == (gate.UNREACHABLE, gate.unreachable_line(1, 2))
    assert gate.judge(report(SKIPPED, FIXABLE), [], []).status == gate.FINDINGS


def test_an_unreachable_service_is_unreachable_not_a_crash() -> None:
    v = gate.judge(None, [], [], total=59, stderr=OSV_DOWN)
    assert (v.status, v.lines) == (gate.UNREACHABLE, [gate.unreachable_line(59, 59)])


def test_an_expired_entry_fails_even_when_the_data_is_unreachable() -> None:
    live, problems = ignores(entry(expires="2026-01-01"))
    assert gate.judge(report(SKIPPED), live, problems).status == gate.FINDINGS


def test_another_crash_or_skip_is_a_failure_of_its_own() -> None:
    assert gate.judge(None, [], [], total=3, stderr="Traceback ...\nValueError: boom\n").status == gate.BROKEN
    assert gate.judge({"something": "else"}, [], []).status == gate.BROKEN
    editable = {"name": "plugin-gateway", "skip_reason": "requirement marked as editable"}
    v = gate.judge(report(editable, CLEAN), [], [])
    assert v.status == gate.BROKEN and "plugin-gateway was not audited: requirement marked as editable" in v.lines[0]


def test_main_reads_the_files_scripts_audit_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ignore.toml").write_text(entry())
    (tmp_path / "lock").write_text("aiohttp==3.14.5 \\\n    --hash=sha256:00\n    # via x\nyarl==1.25.1\n")
    (tmp_path / "report.json").write_text(json.dumps(report(CLEAN, FIXABLE)))
    args = ["--ignore", str(tmp_path / "ignore.toml"), "--lock", str(tmp_path / "lock"),
            "--report", str(tmp_path / "report.json"), "--today", TODAY.isoformat()]
    assert gate.main(args) == gate.OK
    (tmp_path / "report.json").write_text("")
    (tmp_path / "err").write_text(OSV_DOWN)
    assert gate.main([*args, "--stderr", str(tmp_path / "err")]) == gate.UNREACHABLE
    assert capsys.readouterr().out.splitlines()[-1] == gate.unreachable_line(2, 2)
