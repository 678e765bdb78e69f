"""The tape archive (seed step 5, flow 2 "Scheduled HPSS Transfer"): plan bundles, write and verify them on the
archive tier, record them in the ledger and the catalogue, restore from them. No Prefect here."""
