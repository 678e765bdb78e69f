"""Beamline 7.3.3 (SAXS/WAXS/GISAXS): the only package that knows EDF images, ``.txt`` sidecars, hi/lo
exposure pairs with their ``.gb`` merge, and ALS proposals.

Modules: ``sidecar`` (parse ``.txt``), ``edf`` (EDF header/image, ``.gb``), ``scans`` (group files
into scans), ``metadata`` (read one scan), ``dataset`` (scan -> ``DatasetDoc``), ``thumbnail`` (PNG preview),
``simulator`` (write realistic acquisitions for demos and tests). Importing does no I/O.
"""
