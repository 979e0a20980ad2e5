"""When a round may go on: the threshold rules both the server and every client enforce.

Bonawitz et al. 2017 (Fig. 4) abort whenever fewer than t participants remain at a stage
(|U1|, |U2|, |U3|, |U4|, |U5| >= t). With the neighbour graph (Bell et al. 2020, §4) a
participant's secrets are held only by itself and its neighbours, so in addition every
secret the server will need must still have `share_threshold` holders among the
survivors, and the survivors must stay connected in the graph (otherwise the server would
learn the sums of the separate pieces). The server checks these to fail early and cleanly;
clients check them again because the server is not trusted.
"""

from __future__ import annotations

from collections.abc import Collection

from privacy.secagg.config import RoundConfig
from privacy.secagg.errors import ProtocolViolation, ThresholdNotMet
from privacy.secagg.graph import is_connected


def require_threshold(config: RoundConfig, ids: Collection[int], what: str) -> None:
    """At least t participants in `ids`, else ThresholdNotMet naming the stage."""
    if len(ids) < config.threshold:
        raise ThresholdNotMet(
            f"{len(ids)} participants {what}, the threshold is {config.threshold}"
        )


def require_subset(inner: Collection[int], outer: Collection[int], what: str) -> None:
    extra = sorted(set(inner) - set(outer))
    if extra:
        raise ProtocolViolation(
            f"{what}: participant {extra[0]} is not eligible", participant=extra[0]
        )


def check_survivors(
    config: RoundConfig, share_senders: Collection[int], survivors: Collection[int]
) -> None:
    """U3 (masked inputs received) is a subset of U2 that lets the server unmask the sum.

    Raises ProtocolViolation if a survivor never shared keys; ThresholdNotMet if fewer than
    t survived, if a survivor's self-mask seed or a dropped participant's mask key would
    have fewer than `share_threshold` holders among the survivors, or if the survivors'
    neighbour graph is disconnected.
    """
    require_subset(survivors, share_senders, "survivor set")
    require_threshold(config, survivors, "sent masked inputs")
    if config.graph is None:
        return  # every survivor holds every secret: t survivors suffice
    alive = frozenset(survivors)
    needed = config.share_threshold
    for pid in sorted(share_senders):
        neighbours = config.neighbours(pid)
        if pid not in alive and not neighbours & alive:
            continue  # dropped with no surviving neighbour: nothing to cancel
        holders = len(config.holders(pid) & alive)
        if holders < needed:
            what = "self-mask seed" if pid in alive else "mask key"
            raise ThresholdNotMet(
                f"only {holders} survivors hold shares of participant {pid}'s {what}, "
                f"{needed} needed",
                participant=pid,
            )
    if not is_connected(alive, config.adjacency):
        raise ThresholdNotMet("the survivors' neighbour graph is disconnected")
