"""Archive datablocks in SciCat (the fake server, validated against the scicat-backend 4.5 OpenAPI document):
one Datablock per dataset of a bundle (archiveId unique), the tape location in the dataset's history, and an
outage leaving the archive done and the datablocks pending until the next run."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import SecretStr

from splash_flows.config import (
    CatalogueRetryConfig,
    DatasetConfig,
    SciCatCatalogueConfig,
    default_config_data,
    load_config_file,
)
from splash_flows.context import build_context
from splash_flows.ledger import archive as la
from splash_flows.services.archive import service as svc
from tests.fakes.clock import FakeClock
from tests.fakes.scicat_server import FakeSciCat, iter_violations
from tests.unit.test_archive_local import acquired


def test_datablocks_in_scicat_and_an_outage_leaves_them_pending(tmp_path: Path) -> None:
    data = default_config_data(tmp_path / "site")
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    (tmp_path / "splash.yaml").write_text(yaml.safe_dump(data))
    with FakeSciCat() as fake:
        base = load_config_file(tmp_path / "splash.yaml", {})
        config = base.model_copy(update={
            "catalogue": SciCatCatalogueConfig(kind="scicat", url=fake.url, username="ingestor",
                                               password=SecretStr(fake.users["ingestor"]),
                                               admin_groups=["ingestor"],
                                               retry=CatalogueRetryConfig(max_attempts=2, backoff_base=0.0)),
            "dataset": DatasetConfig(contact_email="bl733@example.org")})
        ctx = build_context(config)
        try:
            acquired(ctx, FakeClock(datetime.now(UTC)), scans=3)
            fake.fail_next(10, 503, method="GET", path=None)
            report = svc.execute_archive(ctx)
            report.raise_for_failures()  # archived and verified; only the catalogue waits
            (bundle,) = la.bundles(ctx.ledger, "hpss")
            assert bundle.state == "verified" and bundle.catalogue_state == "pending" and report.catalogue_pending
            fake._faults.clear()
            again = svc.execute_archive(ctx)
            assert again.catalogued == [bundle.name]
            assert len(fake.datablocks) == len(fake.datasets) == 3
            assert len({b["archiveId"] for b in fake.datablocks}) == 3
            for block in fake.datablocks:
                assert block["packedSize"] == bundle.packed_size and block["chkAlg"] == "xxh3_128"
                assert block["archiveId"].startswith(str(bundle.url))
            catalogue = ctx.catalogue()
            for pid in fake.datasets:
                (doc,) = catalogue.datablocks(pid)
                assert doc.files and {loc.tier: loc.state for loc in catalogue.get(pid).doc.locations}["hpss"] == \
                    "archived"
            la.set_catalogue_state(ctx.ledger, bundle.id, "pending")
            svc.execute_archive(ctx)  # adding again finds them first: nothing duplicated
            assert len(fake.datablocks) == 3
        finally:
            ctx.close()
        assert not fake.violations, "\n".join(iter_violations(fake))
