"""What the console's pages read: paged, aggregated in SQL, one query per table per page.

The REST API's reads return whole lists (a federation's rounds, its ledger); the console
must stay fast with 1,000 rounds and 100 institutions, so its pages read pages: rounds by
number range, audit entries by `seq` (keyset paging on the primary key), the ledger for a
page of institutions, counts grouped in the database. Every query runs on an index that
the schema already has (the unique constraints lead with `round_id`/`federation_id`).

These are reads only; nothing here changes state or decides anything.
"""

from coordinator.console.queries.audit import AuditFilter, AuditLine, AuditPage, audit_page
from coordinator.console.queries.federations import (
    FederationLine,
    Holding,
    InstitutionLine,
    Spend,
    federation_lines,
    holdings,
    institution_lines,
    latest_spend,
)
from coordinator.console.queries.ledger import (
    LedgerPoint,
    ledger_mismatches,
    ledger_points,
    ledger_version,
)
from coordinator.console.queries.paging import (
    AUDIT_PER_PAGE,
    INSTITUTIONS_PER_PAGE,
    LEDGER_INSTITUTIONS_PER_CHART,
    MAX_LISTED_MISMATCHES,
    ROUNDS_PER_PAGE,
    Page,
    page_of,
)
from coordinator.console.queries.results import ResultPoint, result_points, results_version
from coordinator.console.queries.rounds import (
    ParticipantLine,
    RoundLine,
    StageLine,
    participant_lines,
    round_line,
    round_lines,
)

__all__ = [
    "AUDIT_PER_PAGE",
    "INSTITUTIONS_PER_PAGE",
    "LEDGER_INSTITUTIONS_PER_CHART",
    "MAX_LISTED_MISMATCHES",
    "ROUNDS_PER_PAGE",
    "AuditFilter",
    "AuditLine",
    "AuditPage",
    "FederationLine",
    "Holding",
    "InstitutionLine",
    "LedgerPoint",
    "Page",
    "ParticipantLine",
    "ResultPoint",
    "RoundLine",
    "Spend",
    "StageLine",
    "audit_page",
    "federation_lines",
    "holdings",
    "institution_lines",
    "latest_spend",
    "ledger_mismatches",
    "ledger_points",
    "ledger_version",
    "page_of",
    "participant_lines",
    "result_points",
    "results_version",
    "round_line",
    "round_lines",
]
