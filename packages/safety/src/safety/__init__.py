"""lmstack safety: policy-as-code, input/output guardrails with streaming redaction, red-team suites."""

from safety.credentials import find_secrets
from safety.guard import Finding, Guard, Verdict
from safety.judges import GCG_TEST_PREFIXES, REFUSAL_PREFIXES, canary_leak, is_refusal, pii_leak
from safety.pii import find_pii
from safety.policy import Policy, Rule, builtin_policies, load_policy
from safety.redteam import CaseResult, Rate, Report, run_suite, wilson_interval
from safety.stream import Blocked, StreamGuard, guard_stream, guarded
from safety.suite import Case, Suite, builtin_suites, load_suite
from safety.target import HTTPTarget, TargetError

__version__ = "0.2.0"
__all__ = ["GCG_TEST_PREFIXES", "REFUSAL_PREFIXES", "Blocked", "Case", "CaseResult", "Finding", "Guard",
           "HTTPTarget", "Policy", "Rate", "Report", "Rule", "StreamGuard", "Suite", "TargetError", "Verdict",
           "builtin_policies", "builtin_suites", "canary_leak", "find_pii", "find_secrets", "guard_stream",
           "guarded", "is_refusal", "load_policy", "load_suite", "pii_leak", "run_suite", "wilson_interval"]
