"""Reduction of 7.3.3 frames to I(q) and q_ip/q_oop maps (issue 11): ``reduce`` (pyFAI per frame), ``outputs``
(NXcanSAS, .dat, PNGs), ``job`` (the one entry point, local or at NERSC), ``backends`` (where it runs) and
``service`` (which scans, which calibration, ledger, delivery and catalogue). Nothing here knows Prefect."""
