"""What the agent keeps of the rounds its policy refused (agent.round_policy).

A refusal is written to the ledger like a decline (status `declined`, the reason), so that
nothing is ever recorded as spent for it, and `fmtl agent status` shows the latest ones;
it is logged as one `round_refused` line saying why.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from agent.ledger import Ledger, RoundStatus
from agent.logging import event, get_logger

#: The ledger memo holding the latest refusals, newest last.
REFUSALS_MEMO: Final = "policy_refusals"
#: How many refusals `fmtl agent status` keeps and shows.
KEPT: Final = 10

_log = get_logger("policy")


class RoundEnding(Protocol):
    def end_round(
        self,
        federation: str,
        number: int,
        status: RoundStatus | None,
        reason: str | None = None,
        *,
        keep_result: bool = False,
    ) -> None: ...


def record_refusal(
    ledger: Ledger, work: RoundEnding, federation: str, number: int, reason: str
) -> None:
    """Log the refusal (one line) and keep it: a declined round, or a joined one left."""
    event(_log, "round_refused", level=40, round=number, reason=reason)
    entry = ledger.round(federation, number)
    if entry is None or entry.status is RoundStatus.DECLINED:
        ledger.decline(federation, number, reason[:200])
    else:  # joined before the coordinator changed its story: left, its result kept
        work.end_round(federation, number, RoundStatus.DROPPED, reason, keep_result=True)
    kept = (ledger.remembered(REFUSALS_MEMO) or {}).get("latest", [])
    kept.append(
        {
            "federation": federation,
            "round": number,
            "reason": reason,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    ledger.remember(REFUSALS_MEMO, {"latest": kept[-KEPT:]})


def refusals(ledger: Ledger) -> list[dict[str, Any]]:
    """The latest refusals, newest last."""
    latest = (ledger.remembered(REFUSALS_MEMO) or {}).get("latest", [])
    return [item for item in latest if isinstance(item, dict)]


def ended_in(ledger: Ledger) -> Callable[[str, int], bool]:
    """Whether the ledger has this round as completed or failed (a re-offered number)."""

    def ended(federation: str, number: int) -> bool:
        entry = ledger.round(federation, number)
        return entry is not None and entry.status in (RoundStatus.COMPLETED, RoundStatus.FAILED)

    return ended


__all__ = ["KEPT", "REFUSALS_MEMO", "ended_in", "record_refusal", "refusals"]
