"""Judge pip-audit's JSON report on the lock against audit-ignore.toml (scripts/audit runs this).

    python scripts/audit_gate.py --ignore audit-ignore.toml --lock requirements-dev.lock \
        --report report.json --stderr pip-audit.err

Exit status:
  0  every package was audited and none has a known vulnerability with a fix, or each such
     finding is excused by a live entry of the ignore file
  1  a vulnerability with a fix version that no entry excuses; or the ignore file has a
     malformed or an expired entry (that fails whether or not the data could be fetched)
  2  pip-audit failed for some other reason, or skipped packages for a reason of the lock's own
  3  the vulnerability data could not be fetched: packages were not audited, so the gate could
     not run (never a success: "no known vulnerabilities" of a package never looked up is a lie)

A finding without a fix version is printed and does not fail: there is nothing to upgrade to.

The ignore file (TOML) holds `[[ignore]]` tables of exactly three keys:
    id      the advisory's id as pip-audit reports it (PYSEC-…, GHSA-…) or one of its aliases (CVE-…)
    reason  why the finding does not apply or cannot be fixed yet (non-blank)
    expires a date (2027-01-31, bare or quoted): the entry counts through that day and fails the
            run from the day after, when someone must look again
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OK, FINDINGS, BROKEN, UNREACHABLE = 0, 1, 2, 3

KEYS = ("id", "reason", "expires")

# pip-audit's skip reason for a package whose vulnerability data it could not get (the PyPI JSON
# API answered 404: a package that is on the index but whose data is not reachable from here).
UNAUDITED = re.compile(r"could not be audited|not found on PyPI", re.IGNORECASE)

# What pip-audit's traceback says when the vulnerability service cannot be reached at all.
NETWORK = re.compile(
    r"ConnectionError|Could not connect|NameResolutionError|Max retries exceeded|"
    r"Temporary failure in name resolution|Name or service not known|ConnectTimeout|ReadTimeout|"
    r"timed out|HTTPError: (?:429|5\d\d)",
)


@dataclass(frozen=True)
class Ignore:
    id: str
    reason: str
    expires: dt.date


@dataclass
class Verdict:
    status: int = OK
    lines: list[str] = field(default_factory=list)


def load_ignores(text: str, today: dt.date, source: str = "audit-ignore.toml") -> tuple[list[Ignore], list[str]]:
    """The live entries of an ignore file, and one sentence per problem (malformed or expired)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return [], [f"{source} is not valid TOML: {e}"]
    problems: list[str] = [f"{source}: unknown top-level key {key!r} (only [[ignore]] tables)"
                           for key in doc if key != "ignore"]
    entries = doc.get("ignore", [])
    if not isinstance(entries, list):
        return [], [*problems, f"{source}: `ignore` must be an array of tables ([[ignore]])"]
    live: list[Ignore] = []
    seen: set[str] = set()
    for n, entry in enumerate(entries, 1):
        where = f"{source}: entry {n}"
        if not isinstance(entry, dict):
            problems.append(f"{where} is not a table")
            continue
        if isinstance(entry.get("id"), str) and entry["id"].strip():
            where = f"{source}: the entry for {entry['id'].strip()}"
        bad = [f"lacks `{key}`" for key in KEYS if key not in entry]
        bad += [f"has an unknown key `{key}`" for key in entry if key not in KEYS]
        ident, reason, expires = entry.get("id"), entry.get("reason"), entry.get("expires")
        if "id" in entry and not (isinstance(ident, str) and ident.strip() and not re.search(r"\s", ident.strip())):
            bad.append("has an `id` that is not one advisory id")
        if "reason" in entry and not (isinstance(reason, str) and reason.strip()):
            bad.append("has a blank `reason`")
        day = _date(expires) if "expires" in entry else None
        if "expires" in entry and day is None:
            bad.append(f"has an `expires` that is not a date (YYYY-MM-DD): {expires!r}")
        if bad:
            problems.append(f"{where} is malformed: it {', '.join(bad)}")
            continue
        assert isinstance(ident, str) and isinstance(reason, str) and day is not None
        ident = ident.strip()
        if ident in seen:
            problems.append(f"{where} is malformed: {ident} is listed twice")
            continue
        seen.add(ident)
        if today > day:
            problems.append(f"{where} expired on {day.isoformat()} (its reason: {reason.strip()}): "
                            f"upgrade past it, or renew the entry with a fresh reason and date")
            continue
        live.append(Ignore(ident, reason.strip(), day))
    return live, problems


def _date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):  # a date-time is a date to Python: say what is meant
        return None
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def unreachable_line(not_audited: int, total: int) -> str:
    return (f"audit: vulnerability data unreachable from this machine ({not_audited} of {total} "
            f"packages not audited) — the gate could not run")


def judge(report: Any, ignores: list[Ignore], problems: list[str], *,
          total: int | None = None, stderr: str = "") -> Verdict:
    """The verdict on one pip-audit run. `report` is its parsed `-f json` output, or None when it
    wrote none (it crashed: `stderr` then says why); `total` is the number of pins in the lock."""
    v = Verdict()
    v.lines += [f"audit: {p}" for p in problems]
    failing: list[str] = []
    broken: list[str] = []
    not_audited = 0
    deps: list[Any] = []
    used: set[str] = set()

    if report is None:
        said = [line for line in stderr.strip().splitlines() if line.strip()]
        if NETWORK.search(stderr):
            not_audited = total or 0
        else:
            broken.append("pip-audit wrote no report: " + (said[-1].strip() if said else "(it said nothing)"))
    elif not (isinstance(report, dict) and isinstance(report.get("dependencies"), list)):
        broken.append("pip-audit's report has no `dependencies` list: not a shape this script knows")
    else:
        deps = report["dependencies"]

    for dep in deps:
        if not isinstance(dep, dict) or not isinstance(dep.get("name"), str):
            broken.append(f"pip-audit's report lists a dependency this script cannot read: {dep!r}")
            continue
        name = dep["name"]
        if "skip_reason" in dep:
            if UNAUDITED.search(str(dep["skip_reason"])):
                not_audited += 1
            else:
                broken.append(f"{name} was not audited: {dep['skip_reason']}")
            continue
        version = dep.get("version", "?")
        for vuln in dep.get("vulns") or []:
            vid = str(vuln.get("id", "?"))
            aliases = [str(a) for a in vuln.get("aliases") or []]
            fixes = [str(f) for f in vuln.get("fix_versions") or []]
            shown = vid + (f" ({', '.join(aliases)})" if aliases else "")
            excuse = next((i for i in ignores if i.id == vid or i.id in aliases), None)
            if excuse:
                used.add(excuse.id)
            if not fixes:
                v.lines.append(f"audit: note: {name} {version} has {shown}, with no fixed release yet (not failing)")
            elif excuse:
                v.lines.append(f"audit: ignored through {excuse.expires.isoformat()}: {name} {version} {shown} "
                               f"(fixed in {', '.join(fixes)}): {excuse.reason}")
            else:
                failing.append(f"audit: {name} {version} has {shown}, fixed in {', '.join(fixes)}")

    v.lines += failing
    v.lines += [f"audit: {b}" for b in broken]
    counted = total if report is None else len(deps)
    if not_audited:
        v.lines.append(unreachable_line(not_audited, counted or not_audited))
    elif not broken and report is not None:
        v.lines += [f"audit: note: the audit-ignore.toml entry for {i.id} matches no finding any more: "
                    f"delete it" for i in ignores if i.id not in used]

    if problems or failing:
        v.status = FINDINGS
        if failing:
            v.lines.append(f"audit: {len(failing)} known vulnerabilit{'y' if len(failing) == 1 else 'ies'} "
                           f"with a fix: upgrade (./scripts/lock --upgrade-package NAME), or add an "
                           f"[[ignore]] entry with id, reason and expires to audit-ignore.toml")
    elif broken:
        v.status = BROKEN
    elif not_audited:
        v.status = UNREACHABLE
    else:
        v.lines.append(f"audit: {len(deps)} locked packages audited: no known vulnerability with a fix"
                       + (f" ({len(used)} ignored entr{'y' if len(used) == 1 else 'ies'} in use)" if used else ""))
    return v


def count_pins(lock_text: str) -> int:
    return sum(1 for line in lock_text.splitlines() if re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[^]]*\])?==", line))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ignore", type=Path, required=True)
    ap.add_argument("--lock", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--stderr", type=Path)
    ap.add_argument("--today", type=dt.date.fromisoformat, default=dt.date.today())
    args = ap.parse_args(argv)

    text = args.ignore.read_text() if args.ignore.exists() else ""
    ignores, problems = load_ignores(text, args.today, args.ignore.name)
    raw = args.report.read_text() if args.report.exists() else ""
    try:
        report = json.loads(raw) if raw.strip() else None
    except json.JSONDecodeError:
        report = {}  # not JSON: judged as a shape this script does not know
    stderr = args.stderr.read_text(errors="replace") if args.stderr and args.stderr.exists() else ""
    total = count_pins(args.lock.read_text())
    verdict = judge(report, ignores, problems, total=total, stderr=stderr)
    for line in verdict.lines:
        print(line)
    return verdict.status


if __name__ == "__main__":
    sys.exit(main())
