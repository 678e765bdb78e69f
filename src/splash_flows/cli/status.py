"""``splash-flows status``: where every file is. Totals first, then a page of files; ``--json`` for programs.

Reads in 80 columns: the totals per tier and state come first, then one row per file whose name is never cut
(when a path is too long, the middle of its folder gives way: ``ALS-00…/20261130/AgBh_0001_2m.edf``). Every
count, filter and page is computed by the database (the SQL of ``ledger/reads.py``), so a ledger of 100,000 files
answers as fast as one of ten. The configuration and the ledger's read path are imported when the command runs
(see ``cli/main.py``); the read path is the Python DB-API (``ledger/dbapi.py``: ``sqlite3`` or ``psycopg``), not
SQLAlchemy, whose import alone would cost most of the half second ``status`` has to answer in. A ledger that
needs creating or upgrading is opened through ``Ledger.open`` as everywhere else, and read with the same SQL.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.text import Text

from splash_flows.cli.common import console, fail_cleanly, human_size, print_json, state

if TYPE_CHECKING:
    from rich.table import Table

    from splash_flows.ledger.reads import FileCatalogueState, FileStatus, Refusal, StatusTotals

STATE_STYLE = {"verified": "green", "pending": "yellow", "failed": "bold red", "stale": "magenta"}
#: catalogue state -> (text, style) of its cell
CATALOGUE_CELL = {"catalogued": ("catalogued", "green"), "pending_catalogue": ("pending", "yellow"),
                  "excluded": ("excluded", "dim"), "failed": ("failed", "bold red")}
CatalogueStates = Mapping[tuple[str, str], "FileCatalogueState"]
# pruning: pruned copies are history (dim), not missing data; claimed ones cyan; at_risk loud
STATE_STYLE.update({"pruning": "cyan", "deleting": "cyan", "pruned": "dim", "at_risk": "bold red reverse"})
#: Copy states ``--state`` accepts (the ledger's ``CopyState`` values; kept here so ``--help`` needs no ledger).
COPY_STATES = ("verified", "pending", "failed", "stale", "pruning", "deleting", "pruned", "at_risk")
#: Files shown by the table when ``--limit`` is not given (``--json`` lists every file unless ``--limit``).
DEFAULT_ROWS = 100
#: ``--late`` default: a file not safe on every target this many minutes after it was detected is late.
LATE_AFTER_MINUTES = 60.0
ELLIPSIS = "…"


def elide_path(path: str, width: int) -> str:
    """``path`` in at most ``width`` characters without ever cutting the file name: the middle of the folder
    gives way to ``…`` (head and tail of the folder kept). A name longer than ``width`` is returned whole."""
    if len(path) <= width:
        return path
    folder, _, name = path.rpartition("/")
    room = width - len(name) - 2  # "…" and "/"
    if not folder or room < 4:  # fewer than two characters each side of "…" say nothing: just "…/name"
        return name if not folder or room < 0 else f"{ELLIPSIS}/{name}"
    head = (room + 1) // 2
    tail = room - head
    return f"{folder[:head]}{ELLIPSIS}{folder[len(folder) - tail:] if tail else ''}/{name}"


def parse_state(text: str) -> tuple[str | None, str]:
    """``STATE`` (on any tier) or ``TIER:STATE`` for ``--state``."""
    tier, _, st = text.rpartition(":")
    if st not in COPY_STATES:
        raise typer.BadParameter(f"{text!r}: the state must be one of {', '.join(COPY_STATES)} "
                                 "(optionally TIER:STATE)", param_hint="--state")
    return (tier or None), st


def catalogue_json(state: FileCatalogueState | None) -> dict[str, Any]:
    """``{"state", "pid", "error"}``; state is catalogued, pending_catalogue, excluded, failed or null (not seen
    by the catalogue step yet)."""
    if state is None:
        return {"state": None, "pid": None, "error": None}
    return {"state": state.state, "pid": state.pid, "error": state.error}


def status_json(rows: Sequence[FileStatus], catalogue: CatalogueStates | None = None) -> list[dict[str, Any]]:
    """The documented, stable JSON shape of ``status --json`` (see README)."""
    cat = catalogue or {}
    return [
        {
            "path": r.path,
            "source_tier": r.source_tier,
            "size": r.size,
            "checksum_alg": r.checksum_alg,
            "checksum": r.checksum,
            "detected_at": r.detected_at,
            "copies": {
                tier: {"state": c.state, "checksum": c.checksum, "verified_at": c.verified_at, "error": c.error}
                for tier, c in r.copies.items()
            },
            "catalogue": catalogue_json(cat.get((r.source_tier, r.path))),
        }
        for r in rows
    ]


def _cell(state: str | None) -> tuple[str, str]:
    """(text, style) of one state cell."""
    if state is None:
        return "-", "dim"
    return state, STATE_STYLE.get(state, "white")


def status_table(rows: Sequence[FileStatus], tiers: Sequence[str], catalogue: CatalogueStates | None = None,
                 *, width: int = 80, title: str | None = None) -> Table:
    """One row per file: path (elided in the folder, never in the name), size, the state on each tier, the
    catalogue state; sized to fit ``width`` columns. The source tier's column is left out when every row is
    verified there and the paths would not fit otherwise (the totals above the table still count it)."""
    from rich import box
    from rich.table import Table

    cat = catalogue or {}
    sizes = [human_size(r.size) for r in rows]
    columns: list[tuple[str, list[tuple[str, str]]]] = []
    for tier in tiers:
        columns.append((tier, [_cell(c.state if (c := r.copies.get(tier)) else None) for r in rows]))
    if catalogue is not None:
        columns.append(("catalogue", [(("-", "dim") if (s := cat.get((r.source_tier, r.path))) is None
                                       else CATALOGUE_CELL.get(s.state, (s.state, ""))) for r in rows]))

    def fixed(cols: list[tuple[str, list[tuple[str, str]]]]) -> int:
        widths = [max([len("size"), *map(len, sizes)])]
        widths += [max([len(h), *(len(plain) for plain, _style in cells)]) for h, cells in cols]
        return sum(widths) + 2 * len(widths)  # one gap of two spaces before each column

    longest = max((len(r.path) for r in rows), default=4)
    # the source tier's column says little while every copy there is verified: leave it out when paths would
    # otherwise be squeezed (the totals above the table still count it)
    source = tiers[0] if tiers else None
    if (source is not None and width - fixed(columns) < min(longest, 48)
            and all((c := r.copies.get(source)) is not None and c.state == "verified" for r in rows)):
        columns = [col for col in columns if col[0] != source]
    path_width = max(16, min(longest, width - fixed(columns)))
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  padding=(0, 1), collapse_padding=True, header_style="bold")
    table.add_column("path", no_wrap=True, overflow="fold", min_width=min(path_width, longest))
    table.add_column("size", justify="right", no_wrap=True)
    for header, _cells in columns:
        table.add_column(header, no_wrap=True)
    # Text cells, not markup: a file name is shown as it is ("scan[1].edf", ":smile:" in a name), and rich
    # parses no markup per cell (most of the time of drawing 100 rows)
    for i, r in enumerate(rows):
        table.add_row(Text(elide_path(r.path, path_width)), Text(sizes[i]),
                      *(Text(*cells[i]) for _h, cells in columns))
    return table


def totals_table(totals: StatusTotals, tiers: Sequence[str]) -> Table:
    """Copies per tier (rows) and state (columns), with how many files have no copy on the tier yet."""
    from rich import box
    from rich.table import Table

    present = [s for s in COPY_STATES if any(t.get(s) for t in totals.tiers.values())]
    present += sorted({s for t in totals.tiers.values() for s in t} - set(present))
    missing = {t: totals.files - totals.copies_on(t) for t in tiers}
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("tier", no_wrap=True)
    for s in present:
        table.add_column(s, justify="right", no_wrap=True)
    if any(missing.values()):
        table.add_column("no copy", justify="right", no_wrap=True)
    for tier in [*tiers, *sorted(set(totals.tiers) - set(tiers))]:
        t = totals.tiers.get(tier, {})
        cells = [_count(t.get(s, 0), s) for s in present]
        if any(missing.values()):
            cells.append(_count(missing.get(tier, 0), "pending"))
        table.add_row(Text(tier), *cells)
    return table


def _count(n: int, st: str) -> Text:
    return Text("0", "dim") if n == 0 else Text(f"{n:,}", STATE_STYLE.get(st, "white"))


def refusals_table(refused: Sequence[Refusal], *, width: int = 80) -> Table:
    """Refused paths (never registered): path and the reason of the latest refusal, folded to fit."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"{len(refused)} refused path(s), newest first", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, show_edge=False, header_style="bold")
    path_width = max(20, min(max((len(r.path) for r in refused), default=4), width // 2))
    table.add_column("path", no_wrap=True, min_width=path_width)
    table.add_column("times", justify="right", no_wrap=True)
    table.add_column("reason", overflow="fold")
    for r in refused:
        table.add_row(Text(elide_path(r.path, path_width)), Text(str(r.times)), Text(r.reason))
    return table


def parse_cursor(after: str, source: str, tiers: Sequence[str]) -> tuple[str, str] | None:
    """``--after``: a path of the source tier, or ``TIER:PATH`` for another tier the ledger knows."""
    if not after:
        return None
    tier, sep, rest = after.partition(":")
    if sep and tier in tiers and tier != source:
        return tier, rest
    return source, after


def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of files (keys documented in the "
                                 "README); every matching file unless --limit is given."),
    prefix: str = typer.Option("", "--prefix", help="Only files whose path starts with this."),
    states: list[str] = typer.Option([], "--state", metavar="[TIER:]STATE",
                                     help=f"Only files with a copy in this state (on TIER, or on any tier); "
                                          f"repeatable. States: {', '.join(COPY_STATES)}."),
    late: bool = typer.Option(False, "--late", help="Only files not verified on every target tier "
                              "--late-after minutes after they were detected."),
    late_after: float = typer.Option(LATE_AFTER_MINUTES, "--late-after", min=0, metavar="MINUTES",
                                     help="When a file counts as late."),
    show_all: bool = typer.Option(False, "--all", help="Also list the refused paths (outside the root, missing, "
                                  "export-controlled...) with the reason."),
    limit: int | None = typer.Option(None, "--limit", min=0,
                                     help=f"Files per page (table default {DEFAULT_ROWS}; 0: all)."),
    after: str = typer.Option("", "--after", metavar="PATH",
                              help="Start after this path (the next page: status prints the option to use); "
                                   "TIER:PATH for a file of another source tier."),
    transfers: bool = typer.Option(False, "--transfers", help="Show the Globus tasks instead: files, bytes, "
                                   "effective rate, task id and status of each (newest first)."),
    analysis: bool = typer.Option(False, "--analysis", help="Show the scans instead: reduced or not, where the "
                                  "results are, their derived dataset."),
) -> None:
    """Where every file is: totals per tier and state, then one row per file.

    Each row gives the state of the file's copy on each tier and its catalogue state (catalogued / pending /
    excluded / failed); late and refused files are counted above the rows."""
    parsed = [parse_state(s) for s in states]
    with fail_cleanly():
        config = state(ctx).load()
        if transfers:
            from splash_flows.cli.transfers import show_transfers

            show_transfers(config.ledger.url_value(), as_json=as_json)
            return
        if analysis:
            from splash_flows.cli.analysis import show_analysis

            show_analysis(config, as_json=as_json, prefix=prefix or None)
            return
        from splash_flows.ledger import reads
        from splash_flows.ledger.dbapi import status_reader

        targets = tuple(config.move.targets)
        late_before = datetime.now(UTC) - timedelta(minutes=late_after)
        cursor = parse_cursor(after, config.move.source, list(config.tiers))
        flt = reads.StatusFilter(prefix=prefix or None, states=tuple(parsed),
                                 late_before=late_before if late else None, targets=targets)
        # the ledger's own DB-API driver, without SQLAlchemy when it can (ledger.dbapi): the same SQL either way
        with status_reader(config.ledger.url_value()) as (reader, where):
            if as_json:
                if limit is None:
                    rows = [item for page in reads.iter_status(reader, flt)
                            for item in status_json(page.rows, page.catalogue)]
                else:
                    page = reads.status_page(reader, flt, limit=limit or None, after=cursor)
                    rows = status_json(page.rows, page.catalogue)
                print_json(rows)
                return
            rows_wanted = DEFAULT_ROWS if limit is None else (limit or None)
            reads.fold_if_many(reader)  # PostgreSQL's counter shards, as every reader of the totals does
            totals = reads.totals(reader, flt)
            page = reads.status_page(reader, flt, limit=rows_wanted, after=cursor)
            whole = totals if flt == reads.StatusFilter(targets=targets) else reads.totals(reader)
            n_late = reads.count_late(reader, late_before, targets, whole=whole)
            n_refused = reads.count_refused(reader)
            refused = reads.refusals(reader) if show_all else []
            scans = reads.scan_counts(reader)
            drill = reads.last_drill(reader)
            analysed = reads.analysis_counts(reader)
    tiers = [config.move.source, *targets]
    tiers += sorted({t for r in page.rows for t in r.copies} - set(tiers))
    width = console.width
    filters = [f for f in (f"prefix {prefix!r}" if prefix else "", " or ".join(states),
                           f"late (> {late_after:g} min)" if late else "") if f]
    console.print(f"[dim]ledger {escape(where)}[/]", highlight=False, soft_wrap=True)  # whole: it may be copied
    console.print(f"[bold]{totals.files:,} file(s)[/], {human_size(totals.bytes)}"
                  + (f" matching {'; '.join(filters)}" if filters else ""), highlight=False)
    if totals.files:
        console.print(totals_table(totals, tiers))
    lines = []
    if scans:
        lines.append("catalogue: " + ", ".join(f"{n:,} {s}" for s, n in sorted(scans.items())) + " scan(s)")
    late_style = "bold red" if n_late else "green"
    lines.append(f"late: [{late_style}]{n_late:,}[/] file(s) not on every target ({', '.join(targets)}) "
                 f"{late_after:g} min after detection" + ("" if late or not n_late else " (--late lists them)"))
    if n_refused:
        lines.append(f"refused: [yellow]{n_refused:,}[/] path(s)" + ("" if show_all else " (--all lists them)"))
    for line in lines:
        console.print(line, highlight=False)
    if page.rows:
        shown = len(page.rows)
        title = (f"files 1-{shown:,} of {totals.files:,}" if cursor is None
                 else f"{shown:,} file(s) after {escape(elide_path(after, 40))}, of {totals.files:,}")
        console.print()
        console.print(status_table(page.rows, tiers, page.catalogue, width=width, title=title))
        last = page.rows[-1]
        if rows_wanted is not None and shown == rows_wanted and (cursor is not None or shown < totals.files):
            nxt = last.path if last.source_tier == config.move.source else f"{last.source_tier}:{last.path}"
            console.print(f"[dim]next page: --after {escape(shlex.quote(nxt))}[/]", highlight=False,
                          soft_wrap=True)  # whole, to be copied
            console.print("[dim]all: --limit 0; one folder: --prefix; only problems: --state failed, --late[/]",
                          highlight=False)
    if refused:
        console.print()
        console.print(refusals_table(refused, width=width))
    if drill is not None:
        console.print(drill_line(drill.at, drill.path, drill.detail), highlight=False)
    from splash_flows.cli.analysis import analysis_summary

    if summary := analysis_summary(analysed):
        console.print(summary, highlight=False)


def drill_line(at: datetime, path: str | None, detail: Mapping[str, Any]) -> str:
    """One line on the last restore drill (``restore_drill_733``): when, which file, from which bundle, result."""
    when = at.isoformat(timespec="seconds")
    if detail.get("ok"):
        bundle = escape(str(detail.get("bundle")))
        return f"last restore drill: [green]ok[/] {when}: {escape(str(path))} from {bundle} restored identical"
    return f"last restore drill: [bold red]FAILED[/] {when}: {escape(path or '-')}: {escape(str(detail.get('reason')))}"
