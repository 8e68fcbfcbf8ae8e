"""A hand-built outcome table and routing log shared by the cascade evaluation tests.

Pool A, B, C with default costs 0.1 / 0.5 / 0.9. At alpha = 0.5:
  q1 (gsm8k, in):  A answers right, B answers right, C answers right
  q2 (gsm8k, in):  A refuses (forced answer wrong), B answers wrong, C answers right
  q3 (squad, out): A refuses (no forced answer), B refuses (forced right), C answers right
  q4 (squad, out): A refuses (forced wrong), B refuses (forced wrong), C refuses (forced wrong)
At alpha = 0.2 the same, except that on q1 A refuses (forced right).
"""

from disrouter_jax.cascade.log import (ANSWER, IN_DOMAIN, OUT_OF_DOMAIN, REFUSE, AgentOutcome, OutcomeRow,
                                       RoutingRecord, Visit)

POOL = ["A", "B", "C"]
COSTS = {"A": 0.1, "B": 0.5, "C": 0.9}


def _o(agent, decision, correct=False, forced=None):
    return AgentOutcome(agent, decision, correct, forced, response=f"{agent}:{decision}")


def _q1(alpha):
    first = _o("A", REFUSE, forced=True) if alpha == 0.2 else _o("A", ANSWER, True)
    return OutcomeRow("q1", "gsm8k", alpha, (first, _o("B", ANSWER, True), _o("C", ANSWER, True)), IN_DOMAIN)


def outcome_rows(alpha=0.5):
    return [
        _q1(alpha),
        OutcomeRow("q2", "gsm8k", alpha, (_o("A", REFUSE, forced=False), _o("B", ANSWER, False),
                                          _o("C", ANSWER, True)), IN_DOMAIN),
        OutcomeRow("q3", "squad", alpha, (_o("A", REFUSE), _o("B", REFUSE, forced=True),
                                          _o("C", ANSWER, True)), OUT_OF_DOMAIN),
        OutcomeRow("q4", "squad", alpha, (_o("A", REFUSE, forced=False), _o("B", REFUSE, forced=False),
                                          _o("C", REFUSE, forced=False)), OUT_OF_DOMAIN),
    ]


def cascade_log_alpha05():
    """The DiSRouter routing log at alpha = 0.5, written out by hand (not by replay)."""
    return [
        RoutingRecord("q1", "gsm8k", 0.5, (Visit("A", ANSWER, True),), "A", "A:answer", True, 0.1, IN_DOMAIN),
        RoutingRecord("q2", "gsm8k", 0.5, (Visit("A", REFUSE, False), Visit("B", ANSWER, False)), "B", "B:answer",
                      False, 0.5, IN_DOMAIN),
        RoutingRecord("q3", "squad", 0.5, (Visit("A", REFUSE, None), Visit("B", REFUSE, True),
                                           Visit("C", ANSWER, True)), "C", "C:answer", True, 0.9, OUT_OF_DOMAIN),
        RoutingRecord("q4", "squad", 0.5, (Visit("A", REFUSE, False), Visit("B", REFUSE, False),
                                           Visit("C", REFUSE, False)), "C", "C:refuse", False, 0.9, OUT_OF_DOMAIN,
                      forced_refusal=True),
    ]


def oracle_log_alpha05():
    """Oracle by hand: q1 -> A (right), q2 -> C (right), q3 -> C (right), q4 -> nobody right -> A."""
    return [
        RoutingRecord("q1", "gsm8k", 0.5, (Visit("A", ANSWER, True),), "A", "A:answer", True, 0.1, IN_DOMAIN,
                      method="oracle"),
        RoutingRecord("q2", "gsm8k", 0.5, (Visit("C", ANSWER, True),), "C", "C:answer", True, 0.9, IN_DOMAIN,
                      method="oracle"),
        RoutingRecord("q3", "squad", 0.5, (Visit("C", ANSWER, True),), "C", "C:answer", True, 0.9, OUT_OF_DOMAIN,
                      method="oracle"),
        RoutingRecord("q4", "squad", 0.5, (Visit("A", REFUSE, False),), "A", "A:refuse", False, 0.1, OUT_OF_DOMAIN,
                      method="oracle", forced_refusal=True),
    ]
