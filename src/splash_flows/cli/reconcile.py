"""``splash-flows reconcile``: re-send every data733 file that is not verified on every target tier.

The recovery after a worker or runner died mid-batch (its Prefect run stays Running; the ledger says what
really happened). Triggers ``run_733_dispatcher`` in batches; ``--dry-run`` only lists what it would send.

The runs carry this command's configuration (``config_path``, the same rule as the watcher's:
``Config.flow_config_path``), so the runner or worker executing them looks at the same tiers and ledger as
this command did, whatever its own ``$SPLASH_FLOWS_CONFIG`` says. The summary names the root looked at.

It also heals the ledger's invariant in place (``services.reconcile.heal``): scans a killed run left out of the
catalogue are catalogued and files left without prune dates get them. Works on any tree: a name that is not a
file to move is refused with one line; a folder that cannot be listed is named and the exit code is 1.

``--verify`` first re-hashes the copies on local tiers (``services.verify``: all, or ``--sample FRACTION`` drawn
by a printed seed; at most ``--max-rate`` MB/s, with progress on stderr), marks a copy that is missing or
different ``at_risk`` (an ``at_risk`` event; alerts fire from the ledger) and re-copies it from a copy that
still holds the recorded bytes (a ``repaired`` event). A copy left ``at_risk`` makes the exit code 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from splash_flows.cli.common import console, err_console, fail_cleanly, print_json, state
from splash_flows.cli.init import API_URL_HELP, resolve_api_url

if TYPE_CHECKING:
    from splash_flows.context import Context
    from splash_flows.services.reconcile import HealReport
    from splash_flows.services.verify import VerifyReport


def _verify(context: Context, *, dry_run: bool, sample: float, seed: int | None, max_rate: float | None,
            tiers: list[str], prefix: str, quiet: bool) -> VerifyReport:
    """Run the verification pass with a progress line on stderr (none with ``--json``)."""
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    from splash_flows.errors import ConfigError
    from splash_flows.services.verify import VerifyProgress, verify_copies

    if sample <= 0:
        raise ConfigError("--sample must be more than 0")
    with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                  disable=quiet, transient=True) as bar:
        task = bar.add_task("verifying", total=None)

        def show(p: VerifyProgress) -> None:
            bar.update(task, description=f"re-hashed {p.checked} cop(ies), {p.bytes_read / 1e6:.1f} MB, "
                                         f"{p.bad} at risk")

        return verify_copies(context, tiers=tiers or None, sample=sample, seed=seed, max_rate_mb=max_rate,
                             prefix=prefix, record=not dry_run, progress=show)


def reconcile(
    ctx: typer.Context,
    api_url: str | None = typer.Option(None, "--api-url", help=API_URL_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the files that need sending; trigger nothing."),
    prefix: str = typer.Option("", "--prefix", help="Only files under this tier-relative folder."),
    min_age: float = typer.Option(60.0, "--min-age", min=0,
                                  help="Leave files modified less than this many seconds ago to the watcher."),
    batch_size: int = typer.Option(200, "--batch-size", min=1, max=10_000, help="Files per dispatcher run."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan (and run ids) as JSON."),
    verify: bool = typer.Option(False, "--verify", help="First re-hash the copies on local tiers against the "
                                "ledger; mark bad ones at_risk and re-copy them from a good copy."),
    sample: float = typer.Option(1.0, "--sample", min=0.0, max=1.0,
                                 help="With --verify: the fraction of copies to re-hash (random, seeded)."),
    seed: int | None = typer.Option(None, "--seed", help="With --verify: the sample's seed (printed when not given)."),
    max_rate: float | None = typer.Option(None, "--max-rate", min=0.001,
                                          help="With --verify: read at most this many MB/s (production disks)."),
    verify_tiers: list[str] = typer.Option([], "--tier", help="With --verify: only this tier (repeatable; "
                                           "default every local tier)."),
) -> None:
    """Find files not verified on every target (ledger vs. the source tier) and send them through the dispatcher."""
    from splash_flows.context import build_context
    from splash_flows.selection import record_refusals
    from splash_flows.services.reconcile import heal, plan_reconcile, unfinished

    with fail_cleanly():
        st = state(ctx)
        config = st.load()
        context = build_context(config)
        healed: HealReport | None = None
        would_heal: tuple[list[str], int] = ([], 0)
        verified: VerifyReport | None = None
        try:
            if verify:
                verified = _verify(context, dry_run=dry_run, sample=sample, seed=seed, max_rate=max_rate,
                                   tiers=verify_tiers, prefix=prefix, quiet=as_json)
            plan = plan_reconcile(context, prefix=prefix, min_age=min_age)
            if dry_run:
                would_heal = unfinished(context)
            else:
                record_refusals(context.ledger, config.move.source, plan.refused)
                context.ledger.mark_source_changed(
                    config.move.source, [(p, st_.size, st_.mtime) for p, st_ in plan.changed_stats.items()],
                    seen_by="reconcile")
                healed = heal(context)
        finally:
            context.close()
        run_ids: list[str] = []
        source = config.move.source
        root = str(config.tier(source).root)
        flow_config = config.flow_config_path()
        if flow_config is None:
            carried = ("the runs use the configuration of the runner or worker executing them (its "
                       f"$SPLASH_FLOWS_CONFIG), which must name this {source} root too")
        else:
            carried = f"the runs carry config_path={flow_config}"
        if plan.to_send and not dry_run:
            url = resolve_api_url(api_url)
            from splash_flows.flows.deploy import trigger_deployment

            run_ids = trigger_deployment(url, plan.batches(batch_size), config_path=flow_config,
                                         tags=["reconcile"])
    if as_json:
        print_json({"source": source, "root": root, "config_path": flow_config, "to_send": plan.to_send,
                    "in_order": plan.in_order, "too_fresh": plan.too_fresh,
                    "export_controlled": plan.export_controlled, "flow_runs": run_ids,
                    "refused": {r.path: r.reason for r in plan.refused},
                    "unreadable": {r.path: r.reason for r in plan.unreadable},
                    "healed": healed.summary() if healed is not None else None,
                    "would_heal": {"uncatalogued_scans": would_heal[0], "unscheduled_files": would_heal[1]}
                    if dry_run else None,
                    "verify": verified.summary() if verified is not None else None})
    else:
        if verified is not None:
            for f in verified.findings:
                fate = (f"repaired from {f.repaired_from}" if f.repaired_from else
                        "would be marked at_risk and repaired" if dry_run else f"NOT repaired: {f.repair_error}")
                console.print(f"at risk {f.reason} -- {fate}", highlight=False, markup=False, soft_wrap=True)
            console.print(("verify (dry run, nothing written): " if dry_run else "verify: ") + verified.describe(),
                          highlight=False, markup=False, soft_wrap=True)
        for r in plan.refused:
            console.print(f"refused {r.path}: {r.reason}", highlight=False, markup=False)
        for path, why in plan.to_send.items():
            console.print(f"{'would send' if dry_run else 'send'} {path}: {why}", highlight=False, markup=False)
        if dry_run and (would_heal[0] or would_heal[1]):
            console.print(f"would catalogue {len(would_heal[0])} scan(s) never catalogued "
                          f"({', '.join(would_heal[0][:5])}) and set prune dates of {would_heal[1]} file(s)",
                          highlight=False, markup=False)
        if healed is not None:
            console.print(f"healed: {healed.describe()}", highlight=False, markup=False)
        console.print(f"looked at {source} root {root}: {len(plan.to_send)} file(s) to send, {plan.in_order} "
                      f"verified everywhere, {len(plan.too_fresh)} too fresh, {len(plan.export_controlled)} "
                      f"export-controlled, {len(plan.refused)} refused"
                      + (f"; triggered {len(run_ids)} dispatcher run(s); {carried}" if run_ids else ""),
                      highlight=False, markup=False, soft_wrap=True)
    for r in plan.unreadable:
        err_console.print(f"[bold red]error:[/] cannot read {source}:{r.path}: {r.reason}",
                          highlight=False, soft_wrap=True)
    if verified is not None and (verified.unrepaired or verified.unchecked):
        for key, why in verified.unchecked.items():
            err_console.print(f"[bold red]error:[/] cannot re-hash {key}: {why}", highlight=False, markup=False)
        if verified.unrepaired and not dry_run:
            err_console.print(f"[bold red]error:[/] {len(verified.unrepaired)} cop(ies) stay at_risk (see "
                              "`splash-flows status`); restore them from another copy by hand", highlight=False,
                              soft_wrap=True)
        raise typer.Exit(1)
    if plan.unreadable:
        err_console.print(f"[bold red]error:[/] the walk of {source} root {root} is incomplete: "
                          f"{len(plan.unreadable)} place(s) could not be read (fix their permissions and run "
                          "reconcile again)", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
