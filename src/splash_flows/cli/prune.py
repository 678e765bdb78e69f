"""``splash-flows prune``: see what pruning will delete, and when (``--plan``), then do what is due (``--execute``).

``--plan [--tier T] [--until WHEN] [--json]`` lists every copy that would be deleted by ``WHEN`` (default: now),
its due date and why (the rule and the copies it relies on), the copies that are due but blocked (and by what),
claims in progress, and totals per tier. It reads the ledger only; the re-checks on the tiers happen at
execution, so ``--execute`` at that moment may refuse (loudly) an item the plan listed, but deletes nothing
the plan did not list (unless the ledger changed in between).

``--execute [--tier T] [--limit N] [--json]`` deletes what is due now, re-verifying first (the same code the
``prune_733`` flow runs), with a progress bar; exit status 1 if any due copy was refused or found at risk.

``--schedule`` re-computes every file's due dates from the current retention rules (after changing them, or
for files moved before scheduling existed). ``WHEN`` is an ISO date (end of that day, in the configured
timezone), an ISO date-time (configured timezone unless it carries an offset), or ``+N`` followed by ``d``
or ``h`` (from now).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.table import Table

from splash_flows.cli.common import console, err_console, fail_cleanly, human_size, print_json, state
from splash_flows.errors import ConfigError

if TYPE_CHECKING:  # imported when a command runs (cli/main.py: the CLI starts without them)
    from splash_flows.config import Config
    from splash_flows.services import prune as svc

_RELATIVE = re.compile(r"\+(\d+(?:\.\d+)?)([dh])")


def zone(config: Config) -> ZoneInfo:
    try:
        return ZoneInfo(config.timezone)
    except ZoneInfoNotFoundError:
        raise ConfigError(f"timezone {config.timezone!r} is not a known IANA time zone") from None


def parse_until(text: str, tz: ZoneInfo, now: datetime) -> datetime:
    """``WHEN`` of ``--until`` as an aware UTC datetime (see the module docstring for the accepted forms)."""
    rel = _RELATIVE.fullmatch(text.strip())
    if rel:
        n = float(rel.group(1))
        return now + (timedelta(days=n) if rel.group(2) == "d" else timedelta(hours=n))
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
            day = datetime.fromisoformat(text.strip()).date()
            return datetime.combine(day, time.max, tz).astimezone(UTC)
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date (2027-05-01), a date-time (2027-05-01T12:00) "
                                 f"or a relative time (+181d, +12h)", param_hint="--until") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return when.astimezone(UTC)


def _local(when: datetime, tz: ZoneInfo) -> str:
    return when.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def plan_tables(plan: svc.PrunePlan, tz: ZoneInfo, max_rows: int) -> list[Table]:
    """The plan as rich tables: what would be deleted, what is blocked, totals per tier."""
    out: list[Table] = []
    title = f"{len(plan.due)} copies would be deleted by {_local(plan.until, tz)} ({tz.key})"
    due = Table(title=title, title_justify="left")
    for col in ("tier", "path", "size", "due", "why"):
        due.add_column(col, overflow="fold", justify="right" if col == "size" else "left")
    for item in plan.due[:max_rows]:
        due.add_row(item.tier, item.path, human_size(item.size), _local(item.due_at, tz), item.why)
    if len(plan.due) > max_rows:
        due.add_row("...", f"{len(plan.due) - max_rows} more (use --json for all)", "", "", "")
    out.append(due)
    if plan.blocked or plan.in_progress:
        blocked = Table(title=f"{len(plan.blocked)} blocked, {len(plan.in_progress)} in progress "
                              "(due by then, but not allowed now)", title_justify="left")
        for col in ("tier", "path", "due", "why not"):
            blocked.add_column(col, overflow="fold")
        rows = [*plan.in_progress, *plan.blocked]
        for item in rows[:max_rows]:
            blocked.add_row(item.tier, item.path, _local(item.due_at, tz), f"[yellow]{item.why}[/]")
        if len(rows) > max_rows:
            blocked.add_row("...", f"{len(rows) - max_rows} more (use --json for all)", "", "")
        out.append(blocked)
    totals = Table(title="totals per tier", title_justify="left")
    for col in ("tier", "would delete", "size", "blocked", "in progress", "unscheduled"):
        totals.add_column(col, justify="left" if col == "tier" else "right")
    for tier, t in plan.totals().items():
        totals.add_row(tier, str(t["files"]), human_size(t["bytes"]), str(t["blocked"]), str(t["in_progress"]),
                       str(plan.unscheduled.get(tier, 0)))
    out.append(totals)
    return out


def _do_plan(config: Config, tier: str | None, until_text: str | None, as_json: bool, max_rows: int) -> None:
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from splash_flows.context import build_context
    from splash_flows.services import prune as svc

    tz = zone(config)
    now = svc.system_clock()
    until = parse_until(until_text, tz, now) if until_text else now
    context = build_context(config)
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err_console,
                      transient=True) as progress:
            bar = progress.add_task("reading the ledger", total=None)
            plan = svc.plan_prune(context, until=until, tier=tier, clock=lambda: now,
                                  progress=lambda n: progress.update(bar, description=f"{n} file(s) examined"))
    finally:
        context.close()
    if as_json:
        print_json(plan.as_dict())
        return
    for table in plan_tables(plan, tz, max_rows):
        console.print(table)
    if any(plan.unscheduled.values()):
        console.print("[yellow]some verified copies have no due date; run `splash-flows prune --schedule`[/]")


def _do_execute(config: Config, tier: str | None, limit: int, as_json: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from splash_flows.context import build_context
    from splash_flows.ledger import prune as ledger_prune
    from splash_flows.services import prune as svc

    context = build_context(config)
    try:
        tiers = svc.rule_tiers(config, tier)
        total = ledger_prune.count_due(context.ledger, tiers=tiers, until=svc.system_clock())
        with Progress(TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[last]}"), console=err_console, transient=as_json) as progress:
            bar = progress.add_task("prune", total=total, last="")

            def tick(kind: str, tier_name: str, path: str) -> None:
                progress.update(bar, advance=1, last=f"{kind} {tier_name}:{path}")

            report = svc.execute_prune(context, tier=tier, limit=limit, progress=tick, check_clock=True)
    finally:
        context.close()
    if as_json:
        print_json(report.as_dict())
    else:
        _print_report(report)
    if report.refused:
        raise typer.Exit(1)


def _print_report(report: svc.PruneReport) -> None:
    per: dict[str, dict[str, Any]] = {}
    for p in report.pruned:
        row = per.setdefault(p.tier, {"pruned": 0, "bytes": 0, "refused": 0})
        row["pruned"] += 1
        row["bytes"] += p.size
    for key in report.refused:
        per.setdefault(key.split(":", 1)[0], {"pruned": 0, "bytes": 0, "refused": 0})["refused"] += 1
    table = Table(title=f"{report.examined} copies examined", caption=f"prune run {report.owner}",
                  title_justify="left", caption_justify="left")
    for col in ("tier", "pruned", "freed", "refused"):
        table.add_column(col, justify="left" if col == "tier" else "right")
    for tier, row in sorted(per.items()):
        table.add_row(tier, str(row["pruned"]), human_size(row["bytes"]),
                      f"[bold red]{row['refused']}[/]" if row["refused"] else "0")
    console.print(table)
    for err in report.refused.values():
        err_console.print(f"[bold red]refused:[/] {err}", highlight=False, soft_wrap=True)
    for check in report.at_risk:
        err_console.print(f"[bold red reverse]AT RISK[/] {check.reason}", highlight=False, soft_wrap=True)


def prune(
    ctx: typer.Context,
    plan: bool = typer.Option(False, "--plan", help="List what would be deleted, when and why (changes nothing)."),
    execute: bool = typer.Option(False, "--execute", help="Delete what is due now, re-verifying every copy first."),
    schedule: bool = typer.Option(False, "--schedule", help="Re-compute every copy's due date from the rules."),
    tier: str | None = typer.Option(None, "--tier", help="Only this tier (it must have a retention rule)."),
    until: str | None = typer.Option(None, "--until", help="With --plan: due by WHEN (2027-05-01, "
                                                           "2027-05-01T12:00, +181d). Default: now."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the plan, or the run's report)."),
    limit: int = typer.Option(1000, "--limit", min=1, help="With --execute: at most this many files."),
    max_rows: int = typer.Option(200, "--max-rows", min=1, help="Rows shown per table (--json shows all)."),
) -> None:
    """Prune by the retention policy: [bold]--plan[/] first, then [bold]--execute[/]."""
    if sum((plan, execute, schedule)) != 1:
        raise typer.BadParameter("give exactly one of --plan, --execute or --schedule")
    if until is not None and not plan:
        raise typer.BadParameter("--until goes with --plan (--execute always does what is due now)")
    with fail_cleanly():
        config = state(ctx).load()
        if plan:
            _do_plan(config, tier, until, as_json, max_rows)
        elif execute:
            _do_execute(config, tier, limit, as_json)
        else:
            from splash_flows.context import build_context
            from splash_flows.services import prune as svc

            context = build_context(config)
            try:
                report = svc.schedule_all(context)
            finally:
                context.close()
            if as_json:
                print_json({"files": report.files, "changed": [
                    {"tier": t, "path": p, "due_at": d} for t, p, d in report.changed]})
            else:
                console.print(report.summary())
