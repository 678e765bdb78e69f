"""``splash-flows reconcile``: re-send every data733 file that is not verified on every target tier.

The recovery after a worker or runner died mid-batch (its Prefect run stays Running; the ledger says what
really happened). Triggers ``run_733_dispatcher`` in batches; ``--dry-run`` only lists what it would send.
"""

from __future__ import annotations

import typer

from splash_flows.cli.common import console, fail_cleanly, print_json, state
from splash_flows.cli.init import API_URL_HELP, resolve_api_url


def reconcile(
    ctx: typer.Context,
    api_url: str | None = typer.Option(None, "--api-url", help=API_URL_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the files that need sending; trigger nothing."),
    prefix: str = typer.Option("", "--prefix", help="Only files under this tier-relative folder."),
    min_age: float = typer.Option(60.0, "--min-age", min=0,
                                  help="Leave files modified less than this many seconds ago to the watcher."),
    batch_size: int = typer.Option(200, "--batch-size", min=1, max=10_000, help="Files per dispatcher run."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan (and run ids) as JSON."),
) -> None:
    """Find files not verified on every target (ledger vs. the source tier) and send them through the dispatcher."""
    from splash_flows.context import build_context
    from splash_flows.services.reconcile import plan_reconcile

    with fail_cleanly():
        st = state(ctx)
        config = st.load()
        context = build_context(config)
        try:
            plan = plan_reconcile(context, prefix=prefix, min_age=min_age)
        finally:
            context.close()
        run_ids: list[str] = []
        if plan.to_send and not dry_run:
            url = resolve_api_url(api_url)
            from splash_flows.flows.deploy import trigger_deployment

            # No config_path: the runs use the configuration of whoever executes them (the workers' own
            # $SPLASH_FLOWS_CONFIG), which must name the same ledger and tiers as this one.
            run_ids = trigger_deployment(url, plan.batches(batch_size), tags=["reconcile"])
    if as_json:
        print_json({"to_send": plan.to_send, "in_order": plan.in_order, "too_fresh": plan.too_fresh,
                    "export_controlled": plan.export_controlled, "flow_runs": run_ids})
        return
    for path, why in plan.to_send.items():
        console.print(f"{'would send' if dry_run else 'send'} {path}: {why}", highlight=False, markup=False)
    console.print(f"{len(plan.to_send)} file(s) to send, {plan.in_order} verified everywhere, "
                  f"{len(plan.too_fresh)} too fresh, {len(plan.export_controlled)} export-controlled"
                  + (f"; triggered {len(run_ids)} dispatcher run(s)" if run_ids else ""), highlight=False)
