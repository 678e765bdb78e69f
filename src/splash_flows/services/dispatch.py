"""Input validation for the dispatcher: which of the paths a trigger names may be moved at all.

A trigger (the watcher, an operator, a test) names tier-relative paths on the move source tier (``data733``).
Each is refused, with one clear line recorded in the ledger as a ``refused`` event, when it

- is not a clean relative path inside the tier root (``..``, absolute, or a symlink resolving outside),
- is not a file to move by the one shared rule (``selection.MoveRule``: an ignored name -- temporary, hidden,
  lock file -- or a name that is not valid UTF-8),
- matches one of ``move.export_control_patterns`` (the seed's ``is_export_control``), by its own name or by
  the file a symlink inside the root points to,
- does not exist, or is not a regular file (a folder, a device, a dangling link).

The others go on to the move. Plain functions: the ``dispatcher`` flow calls them, tests call them directly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

from splash_flows.context import Context
from splash_flows.errors import ExportControlledError, NotAFileToMove, SourceMissingError, TierError
from splash_flows.ledger import EventKind
from splash_flows.paths import display_path, normalize_relpath
from splash_flows.selection import MoveRule
from splash_flows.tiers.local import LocalTier

log = logging.getLogger(__name__)


@dataclass
class ValidationReport:
    """The paths that may be moved (canonical, de-duplicated, in input order) and the refused ones with why."""

    valid: list[str] = field(default_factory=list)
    refused: dict[str, TierError] = field(default_factory=dict)

    def refusal_lines(self) -> list[str]:
        """One line per refused path, as recorded in the ledger."""
        return [str(err) for err in self.refused.values()]


def export_control_match(relpath: str, patterns: Sequence[str]) -> str | None:
    """The first pattern that marks ``relpath`` (canonical, tier-relative) export-controlled, else None.

    A pattern is a case-sensitive glob (``fnmatch``: ``*`` also crosses ``/``) matched against the whole path
    and against each of its parent folders, so ``restricted`` or ``*/ITAR`` covers everything beneath them.
    """
    if not patterns:
        return None
    parts = PurePosixPath(relpath).parts
    candidates = ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]
    for pattern in patterns:
        clean = pattern.strip("/")
        if any(fnmatchcase(candidate, clean) for candidate in candidates):
            return pattern
    return None


def is_export_control(relpath: str, patterns: Sequence[str]) -> bool:
    """The seed's ``is_export_control``: whether ``relpath`` matches an export-control pattern."""
    return export_control_match(relpath, patterns) is not None


def _link_target(tier: LocalTier, relpath: str) -> str | None:
    """Where a path inside a local tier really points, relative to the root, when that differs from the name."""
    real_root = os.path.realpath(tier.root)
    real = os.path.realpath(tier.path(relpath))  # tier.path refuses targets outside the root
    target = os.path.relpath(real, real_root).replace(os.sep, "/")
    return None if target == relpath else target


def _check(ctx: Context, raw: str) -> str:
    """The canonical path if ``raw`` may be moved; raises the TierError that refuses it."""
    source_name = ctx.config.move.source
    patterns = ctx.config.move.export_control_patterns
    rule = MoveRule.from_config(ctx.config)
    refusal = rule.refusal(raw, check_path=False)
    if refusal is not None:
        raise NotAFileToMove(f"refused: {refusal.reason}", tier=source_name, path=refusal.path)
    path = normalize_relpath(raw, tier=source_name)
    if rule.ignored(path):
        raise NotAFileToMove("refused: not a file to move (its name matches watcher.ignore_patterns)",
                             tier=source_name, path=path)
    pattern = export_control_match(path, patterns)
    if pattern is not None:
        raise ExportControlledError(f"refused: export-controlled (matches pattern {pattern!r})",
                                    tier=source_name, path=path)
    source = ctx.tier(source_name)
    stat = source.stat(path)  # refuses a symlink resolving outside the root (PathEscapeError)
    if stat is None:
        # name the root looked in: a run given another site's paths (a different configuration) says so at once
        raise SourceMissingError(f"refused: file not found (looked in {ctx.config.tier(source_name).root})",
                                 tier=source_name, path=path)
    if isinstance(source, LocalTier) and patterns:
        target = _link_target(source, path)
        if target is not None and (pattern := export_control_match(target, patterns)) is not None:
            raise ExportControlledError(f"refused: symlink to export-controlled {target} (matches pattern "
                                        f"{pattern!r})", tier=source_name, path=path)
    return path


def validate_batch(ctx: Context, paths: Sequence[str]) -> ValidationReport:
    """Split ``paths`` into those the dispatcher may move and those it refuses.

    Every refusal is recorded in the ledger (event ``refused``, the reason in ``detail.reason``) and logged at
    DEBUG; the caller reports them (the dispatcher flow: one summarised WARNING per run, not one line per path
    and per layer). Duplicates are collapsed. Never raises for a bad path: the rest of the batch goes on.
    """
    report = ValidationReport()
    seen: set[str] = set()
    source_name = ctx.config.move.source
    for raw in dict.fromkeys(paths):
        try:
            path = _check(ctx, raw)
        except TierError as err:  # PathEscapeError, ExportControlledError, SourceMissingError, not a file
            report.refused[raw] = err
            ctx.ledger.record_failed(display_path(raw), source_name, str(err), kind=EventKind.REFUSED)
            log.debug("%s", err)
            continue
        if path not in seen:
            seen.add(path)
            report.valid.append(path)
    return report
