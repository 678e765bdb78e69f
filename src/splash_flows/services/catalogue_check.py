"""What ``splash-flows config check`` asks of the configured catalogue before the first ingest relies on it.

For SciCat (issue 9 items 12 and 14): the functional account can log in, may create datasets, and may attach
file lists (origdatablocks) to the datasets it will create. A real scicat-backend 4.27 lets an account create a
dataset and then refuses its file list unless the account is in one of the server's ADMIN_GROUPS or in the
dataset's ownerGroup (the proposal); an account set up that way leaves empty datasets behind. The check says so
before any of that happens, in one line naming the missing permission.

Plain functions over a ``Config``: no Prefect, nothing written anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from splash_flows.config import Config, SciCatCatalogueConfig
from splash_flows.errors import CatalogueError


@dataclass(frozen=True)
class Check:
    """One line of ``config check``: what was checked, whether it holds, and the detail an operator needs."""

    name: str
    ok: bool
    detail: str


def check_catalogue(config: Config) -> list[Check]:
    """Check the catalogue the configuration names; only SciCat has anything to ask (an embedded catalogue is
    a local file made on first use, and ``none`` has nothing to check)."""
    if isinstance(config.catalogue, SciCatCatalogueConfig):
        return check_scicat(config)
    return []


def check_scicat(config: Config) -> list[Check]:
    """Log in as the functional account, then ask the server what it may do (nothing is created)."""
    from splash_flows.catalogue.scicat import ORIGDATABLOCKS_ROUTE, SciCatCatalogue
    from splash_flows.context import build_catalogue

    cfg = config.catalogue
    assert isinstance(cfg, SciCatCatalogueConfig)
    catalogue = build_catalogue(config)
    assert isinstance(catalogue, SciCatCatalogue)
    checks: list[Check] = []
    with catalogue:
        try:
            account = catalogue.account()
        except CatalogueError as err:
            return [Check("scicat login", False, str(err))]
        groups = ", ".join(account.groups) or "no group"
        checks.append(Check("scicat login", True, f"logged in to {cfg.url} as {cfg.username!r} (groups: {groups})"))
        try:
            may_create = catalogue.can_create_datasets(account)
        except CatalogueError as err:
            checks.append(Check("scicat create datasets", False, str(err)))
        else:
            checks.append(Check(
                "scicat create datasets", may_create,
                "the server allows the account to create datasets" if may_create else
                f"the server does not let {cfg.username!r} create datasets: add it to one of CREATE_DATASET_GROUPS"))
        admin = [g for g in cfg.admin_groups if g in account.groups]
        if admin:
            checks.append(Check(
                "scicat attach files", True,
                f"in admin group {', '.join(admin)}: may attach files (POST {ORIGDATABLOCKS_ROUTE}) to the datasets "
                "of every proposal"))
        else:
            configured = ", ".join(cfg.admin_groups) or "none"
            checks.append(Check(
                "scicat attach files", False,
                f"{cfg.username!r} is in none of catalogue.admin_groups (configured: {configured}), so SciCat lets "
                f"it attach files (POST {ORIGDATABLOCKS_ROUTE}) only to datasets of its own groups ({groups}) and "
                "the datasets of every other proposal would be refused: add it to one of the server's ADMIN_GROUPS "
                "and list that group in catalogue.admin_groups"))
        fallback = config.dataset.default_owner_group
        refusal = catalogue.attach_refusal(fallback, account)
        checks.append(Check(
            "scicat attach files (no proposal)", refusal is None,
            refusal or f"may attach files to datasets of dataset.default_owner_group {fallback!r}"))
    return checks
