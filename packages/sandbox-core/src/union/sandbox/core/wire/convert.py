"""Conversions between the session contract's objects and their wire messages, in one place
for the server (to the wire) and the client (from it)."""

from __future__ import annotations

from collections.abc import Iterable

from ..netproxy.log import NetworkDecision
from ..process import IsolationReport
from . import messages as pb

__all__ = [
    "decisions_from_wire",
    "decisions_to_wire",
    "isolation_from_wire",
    "isolation_to_wire",
]


def isolation_to_wire(report: IsolationReport | None) -> pb.IsolationReport | None:
    if report is None:
        return None
    return pb.IsolationReport(
        backend=report.backend,
        namespaces=list(report.namespaces),
        landlock_abi=report.landlock_abi,
        seccomp=report.seccomp,
        no_new_privs=report.no_new_privs,
        capabilities_dropped=report.capabilities_dropped,
        uid=report.uid,
        limits=dict(report.limits),
        fresh_tmp=report.fresh_tmp,
        network=report.network,
        gpus=report.gpus,
    )


def isolation_from_wire(message: pb.IsolationReport | None) -> IsolationReport | None:
    if message is None:
        return None
    return IsolationReport(
        backend=message.backend,
        namespaces=tuple(message.namespaces),
        landlock_abi=message.landlock_abi,
        seccomp=message.seccomp,
        no_new_privs=message.no_new_privs,
        capabilities_dropped=message.capabilities_dropped,
        uid=message.uid,
        limits=dict(message.limits),
        fresh_tmp=message.fresh_tmp,
        network=message.network,
        gpus=message.gpus,
    )


def decisions_to_wire(decisions: Iterable[NetworkDecision]) -> list[pb.NetworkDecision]:
    return [
        pb.NetworkDecision(
            host=d.host,
            port=d.port,
            allowed=d.allowed,
            rule=d.rule or "",
            reason=d.reason,
            protocol=d.protocol,
            bytes_up=d.bytes_up,
            bytes_down=d.bytes_down,
        )
        for d in decisions
    ]


def decisions_from_wire(messages: Iterable[pb.NetworkDecision]) -> list[NetworkDecision]:
    """The time of a remote decision is not on the wire: ``timestamp`` is 0."""
    return [
        NetworkDecision(
            host=m.host,
            port=m.port,
            allowed=m.allowed,
            rule=m.rule or None,
            reason=m.reason,
            protocol=m.protocol,  # type: ignore[arg-type]
            timestamp=0.0,
            bytes_up=m.bytes_up,
            bytes_down=m.bytes_down,
        )
        for m in messages
    ]
