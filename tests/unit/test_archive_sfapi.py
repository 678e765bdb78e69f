"""The sfapi archive tier against a fake Superfacility API at the transport level (respx): the job script, the
polling, and every way a tape job fails without saying so."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from splash_flows.config import Config, SfapiCredentialsConfig, SfapiTierConfig, default_config_data, parse_config
from splash_flows.context import Context, build_context
from splash_flows.errors import ArchiveJobError, ConfigError, SfapiAuthError
from splash_flows.ledger import archive as la
from splash_flows.ledger.models import BundleState
from splash_flows.services.archive import service as svc
from splash_flows.services.move import move_files
from splash_flows.tiers.archive_sfapi import SfapiArchiveTier, log_failures, parse_htar_listing
from tests.fakes.sfapi import FakeSfapi

PATHS = [f"ALS-00622/20260110/scan_{i}.edf" for i in range(3)]


def _key(tmp_path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path = tmp_path / "sfapi.pem"
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Context]:
    data = default_config_data(tmp_path / "site")
    data["sfapi"] = {"client_id": "abcdefghijklm", "key_file": str(_key(tmp_path))}
    data["tiers"]["hpss"] = {"kind": "sfapi", "root": "/home/a/alsuser/bl733", "account": "alsuser",
                             "account_type": "service", "source_root": "/global/cfs/cdirs/als/733",
                             "log_dir": "/global/homes/a/alsuser/logs",
                             "poll_initial_s": 0.01, "poll_max_s": 0.05}
    config: Config = parse_config(data, source="t", base=tmp_path, environ={})
    for name, tier in config.tiers.items():
        if name != "hpss":
            Path(tier.root).mkdir(parents=True, exist_ok=True)
    ctx = build_context(config)
    for p in PATHS:
        full = Path(config.tiers["data733"].root) / p
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(os.urandom(1000))
        t = datetime(2026, 1, 10, 20, tzinfo=UTC).timestamp()
        os.utime(full, (t, t))
    move_files(ctx, PATHS).raise_for_failures()
    tier = ctx.tier("hpss")
    assert isinstance(tier, SfapiArchiveTier)
    tier._sleep = lambda _s: None
    yield ctx
    ctx.close()


def run(ctx: Context, fake: FakeSfapi) -> svc.ArchiveReport:
    with respx.mock(assert_all_called=False) as router:
        fake.install(router)
        return svc.execute_archive(ctx)


def test_completed_job_with_a_matching_listing_verifies_the_bundle(site: Context) -> None:
    fake = FakeSfapi()
    report = run(site, fake)
    report.raise_for_failures()
    (bundle,) = la.bundles(site.ledger, "hpss")
    assert bundle.state == BundleState.VERIFIED and bundle.job_id == "4242"
    assert bundle.job_log == "/global/homes/a/alsuser/logs/splash-1-a1.log"
    script = bundle.job_script or ""
    assert script.startswith("#!/bin/bash\n") and "#SBATCH -q xfer" in script and "set -euo pipefail" in script
    assert "-Hverify=all -L \"$LIST\"" in script and "htar -tvf" in script and "-Hnostage" in script
    assert "cd /global/cfs/cdirs/als/733" in script and all(p in script.splitlines() for p in PATHS)
    tmp = f"/home/a/alsuser/bl733/{bundle.name}.part-splash-1-a1"
    assert fake.commands == [f"hsi -q mv {tmp} /home/a/alsuser/bl733/{bundle.name} && "
                             f"hsi -q mv {tmp}.idx /home/a/alsuser/bl733/{bundle.name}.idx"]
    assert bundle.url == f"hpss:/home/a/alsuser/bl733/{bundle.name}"
    rows = {r.path: r for r in site.ledger.status()}
    assert all(rows[p].copies["hpss"].state == "verified" for p in PATHS)
    assert fake.submissions == 1


@pytest.mark.parametrize("end", ["FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL"])
def test_every_end_but_completed_is_a_failure(site: Context, end: str) -> None:
    report = run(site, FakeSfapi(end_state=end))
    (bundle,) = la.bundles(site.ledger, "hpss")
    assert bundle.state == BundleState.FAILED and f"ended {end}" in str(bundle.error)
    assert bundle.name in str(report.failed[bundle.name]) and "4242" in str(report.failed[bundle.name])
    assert all("hpss" not in r.copies for r in site.ledger.status())


def test_job_not_found_is_a_failure_naming_the_job(site: Context) -> None:
    report = run(site, FakeSfapi(forget_jobs=True))
    (err,) = report.failed.values()
    assert isinstance(err, ArchiveJobError) and "job 4242 not found" in str(err)


def test_listing_missing_a_member_names_bundle_and_member(site: Context) -> None:
    report = run(site, FakeSfapi(drop_member=PATHS[1]))
    (bundle,) = la.bundles(site.ledger, "hpss")
    err = str(report.failed[bundle.name])
    assert bundle.name in err and PATHS[1] in err and "missing from the listing" in err
    assert bundle.state == BundleState.FAILED


def test_size_mismatch_and_zero_matches_fail(site: Context) -> None:
    report = run(site, FakeSfapi(size_delta={PATHS[0]: 1}))
    assert "size differs" in str(next(iter(report.failed.values())))
    report = run(site, FakeSfapi(zero_listing=True))
    assert "matches none" in str(next(iter(report.failed.values())))


def test_exit_70_in_the_log_is_a_failure_even_when_the_job_completed(site: Context) -> None:
    report = run(site, FakeSfapi(exit70_only=True))
    (err,) = report.failed.values()
    assert "exit 70" in str(err) and "COMPLETED" in str(err)


def test_transient_5xx_on_submit_is_retried_without_a_second_job(site: Context) -> None:
    fake = FakeSfapi(submit_5xx=1)
    run(site, fake).raise_for_failures()
    assert fake.submissions == 2 and len(fake.jobs) == 1
    (bundle,) = la.bundles(site.ledger, "hpss")
    assert bundle.state == BundleState.VERIFIED


def test_a_lost_answer_to_a_submission_adopts_the_job_it_created(site: Context) -> None:
    fake = FakeSfapi(submit_5xx=1, submit_5xx_creates=True)
    run(site, fake).raise_for_failures()
    assert fake.submissions == 1 and len(fake.jobs) == 1  # found by its name, never submitted again


def test_expired_key_is_an_auth_error_and_nothing_is_marked_verified(site: Context) -> None:
    report = run(site, FakeSfapi(token_refused=True))
    (err,) = report.failed.values()
    assert isinstance(err, SfapiAuthError) and "renew the key" in str(err)
    assert all("hpss" not in r.copies for r in site.ledger.status())


def test_a_restarted_run_polls_the_recorded_job_instead_of_submitting(site: Context) -> None:
    fake = FakeSfapi()
    with respx.mock(assert_all_called=False) as router:
        fake.install(router)
        svc.record_new_bundles(site)
        (bundle,) = la.bundles(site.ledger, "hpss")
        tier = site.tier("hpss")
        assert isinstance(tier, SfapiArchiveTier)
        job_name = f"splash-{bundle.id}-a0"
        script = tier.render_write_script(bundle, job_name, f"{tier.final_path(bundle.name)}.part-{job_name}",
                                          f"/global/homes/a/alsuser/logs/{job_name}.log")
        job_id = tier._submit(script, job_name)
        la.record_job(site.ledger, bundle.id, job_id=job_id, script=script,
                      log=f"/global/homes/a/alsuser/logs/{job_name}.log")
        svc.execute_archive(site).raise_for_failures()
    assert fake.submissions == 1
    (bundle,) = la.bundles(site.ledger, "hpss")
    assert bundle.state == BundleState.VERIFIED and bundle.job_id == job_id


def test_listing_and_log_parsers() -> None:
    text = ("HTAR: -rw-r--r--  u/g       12 2026-01-10 12:00  a/b c.edf\n"
            "HTAR: drwxr-xr-x  u/g        0 2026-01-10 12:00  a/\n"
            "HTAR: -rw-------  u/g      256 2026-01-10 12:00  /tmp/HTAR_CF_CHK_1_2\nHTAR: HTAR SUCCESSFUL\n")
    assert [(m.name, m.size) for m in parse_htar_listing(text)] == [("a/b c.edf", 12)]
    assert log_failures("SPLASH_HTAR_CREATE_EXIT=70\n") == ["htar_create exited 70"]
    assert log_failures("all good\nSPLASH_HTAR_LIST_EXIT=0\n") == []
    assert log_failures("htar: exit status 70\n") and log_failures("HTAR: HTAR FAILED\n")


def test_config_names_the_account_and_refuses_a_key_readable_by_others(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="account_type"):
        SfapiTierConfig(root="/h", account="a", source_root="/s", log_dir="/l")  # type: ignore[call-arg]
    key = _key(tmp_path)
    key.chmod(0o644)
    cfg = SfapiTierConfig(root="/h", account="a", account_type="personal", source_root="/s", log_dir="/l")
    creds = SfapiCredentialsConfig(client_id="abcdefghijklm", key_file=key)
    with pytest.raises(SfapiAuthError, match="chmod 600"):
        SfapiArchiveTier("hpss", cfg, "xxh3_128", ledger=None, credentials=creds)._compute()
    with pytest.raises(SfapiAuthError, match="top-level sfapi"):
        SfapiArchiveTier("hpss", cfg, "xxh3_128", ledger=None)._compute()


def test_an_sfapi_tier_needs_the_one_sfapi_section_and_old_keys_say_where_they_went(tmp_path: Path) -> None:
    data = default_config_data(tmp_path / "site")
    data["tiers"]["hpss"] = {"kind": "sfapi", "root": "/h", "account": "a", "account_type": "service",
                             "source_root": "/s", "log_dir": "/l"}
    with pytest.raises(ConfigError, match="need the top-level sfapi: section"):
        parse_config(data, source="t.yaml", base=tmp_path, environ={})
    data["tiers"]["hpss"]["key_path"] = "k.pem"
    with pytest.raises(ConfigError, match=r"t.yaml: tiers.hpss.key_path: .*moved to the top-level sfapi: section "
                                          r"\(sfapi.key_file\)"):
        parse_config(data, source="t.yaml", base=tmp_path, environ={})


def test_prune_recheck_and_restore_go_through_listing_and_extraction_jobs(site: Context, tmp_path: Path) -> None:
    from datetime import timedelta

    from splash_flows.services import prune
    from tests.fakes.clock import FakeClock

    cfs = Path(site.config.tiers["cfs"].root)
    fake = FakeSfapi(contents={p: (cfs / p).read_bytes() for p in PATHS})
    with respx.mock(assert_all_called=False) as router:
        fake.install(router)
        svc.execute_archive(site).raise_for_failures()
        tier = site.tier("hpss")
        assert isinstance(tier, SfapiArchiveTier)
        st = tier.stat(PATHS[0])
        assert st is not None and st.size == 1000
        assert tier.checksum(PATHS[0]) == site.ledger.get_source("data733", PATHS[0]).checksum  # type: ignore[union-attr]
        jobs_before = len(fake.jobs)
        tier.stat(PATHS[1])
        assert len(fake.jobs) == jobs_before  # one listing job per bundle and run
        prune.schedule_all(site, clock=FakeClock(datetime(2026, 1, 11, tzinfo=UTC)))
        report = prune.execute_prune(site, tier="lamarr", clock=FakeClock(datetime(2026, 1, 10, 20, tzinfo=UTC)
                                                                          + timedelta(days=40)))
        report.raise_for_failures()
        assert sorted(p.path for p in report.pruned) == PATHS
        hpss_ev = report.pruned[0].evidence["required"]
        assert any(r["tier"] == "hpss" and r["ok"] for r in hpss_ev)
        out = svc.restore(site, [PATHS[2]], tmp_path / "back")
        out.raise_for_failures()
        assert (tmp_path / "back" / PATHS[2]).read_bytes() == fake.contents[PATHS[2]]
        fake.corrupt_restore = True
        bad = svc.restore(site, [PATHS[1]], tmp_path / "bad")
        assert PATHS[1] in bad.failed and "not restored" in str(bad.failed[PATHS[1]])
