"""Audit: check that the log holds what it must always hold."""

from __future__ import annotations

from tidings.audit.errors import AuditError
from tidings.audit.report import RULES, AuditReport, Rule, Violation
from tidings.audit.verify import LogAuditor

__all__ = ["RULES", "AuditError", "AuditReport", "LogAuditor", "Rule", "Violation"]
