"""Routing-log and outcome-table records: validation, JSONL round trips, clear errors."""

import json

import pytest

from disrouter_jax.cascade import log
from disrouter_jax.cascade.log import ANSWER, REFUSE, RecordError, RoutingRecord, Visit
from tests.cascade.hand_tables import cascade_log_alpha05, outcome_rows


def test_routing_log_round_trip_and_append(tmp_path):
    path = tmp_path / "routing_log.jsonl"
    records = cascade_log_alpha05()
    assert log.write_routing_log(path, records[:2]) == 2
    assert log.write_routing_log(path, records[2:]) == 2  # appending keeps earlier lines
    assert log.read_routing_log(path) == records
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) >= {"query_id", "dataset", "alpha", "visited", "final_agent", "response", "correct", "cost"}
    assert first["visited"] == [{"agent": "A", "decision": "answer", "correct": True}]


def test_outcome_table_round_trip(tmp_path):
    path = tmp_path / "outcomes.jsonl"
    rows = outcome_rows(0.5) + outcome_rows(0.2)
    log.write_outcome_table(path, rows)
    assert log.read_outcome_table(path) == rows


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "routing_log.jsonl"
    log.write_routing_log(path, cascade_log_alpha05()[:1])
    with open(path, "a") as handle:
        handle.write("{not json\n")
    with pytest.raises(RecordError, match=r"routing_log\.jsonl:2: not valid JSON"):
        log.read_routing_log(path)


def test_bad_field_names_file_line_and_field(tmp_path):
    path = tmp_path / "routing_log.jsonl"
    data = cascade_log_alpha05()[0].to_json()
    data["visited"][0]["decision"] = "maybe"
    path.write_text(json.dumps(data) + "\n")
    with pytest.raises(RecordError, match=r"routing_log\.jsonl:1.*visited\[0\].*'decision'.*'maybe'"):
        log.read_routing_log(path)
    data = cascade_log_alpha05()[0].to_json()
    data["cots"] = 1.0
    path.write_text(json.dumps(data) + "\n")
    with pytest.raises(RecordError, match=r":1: unknown field\(s\) \['cots'\]"):
        log.read_routing_log(path)


def test_duplicate_record_is_rejected(tmp_path):
    path = tmp_path / "routing_log.jsonl"
    record = cascade_log_alpha05()[0]
    log.write_routing_log(path, [record, record])
    with pytest.raises(RecordError, match=r":2: duplicate .*first at .*:1"):
        log.read_routing_log(path)


def test_incomplete_last_line_blocks_append_and_read(tmp_path):
    path = tmp_path / "routing_log.jsonl"
    log.write_routing_log(path, cascade_log_alpha05()[:1])
    with open(path, "a") as handle:
        handle.write('{"query_id": "q2"')
    with pytest.raises(RecordError, match="incomplete"):
        log.write_routing_log(path, cascade_log_alpha05()[1:2])
    with pytest.raises(RecordError, match=r":2: last line is incomplete"):
        log.read_routing_log(path)


def test_record_validation():
    with pytest.raises(RecordError, match="'final_agent' 'B' must be the last visited agent 'A'"):
        RoutingRecord("q", "d", 0.5, (Visit("A", ANSWER, True),), "B", "", True, 0.1)
    with pytest.raises(RecordError, match="cannot be correct"):
        RoutingRecord("q", "d", 0.5, (Visit("A", REFUSE),), "A", "", True, 0.1, forced_refusal=True)
    with pytest.raises(RecordError, match="'forced_refusal' is False"):
        RoutingRecord("q", "d", 0.5, (Visit("A", REFUSE),), "A", "", False, 0.1)
    with pytest.raises(RecordError, match="'alpha' must lie in"):
        RoutingRecord("q", "d", 1.5, (Visit("A", ANSWER, True),), "A", "", True, 0.1)
    with pytest.raises(RecordError, match="'domain'"):
        RoutingRecord("q", "d", 0.5, (Visit("A", ANSWER, True),), "A", "", True, 0.1, domain="inside")
    with pytest.raises(RecordError, match="a refusal cannot be correct"):
        log.AgentOutcome("A", REFUSE, True)
    with pytest.raises(RecordError, match="'forced_correct' only applies"):
        log.AgentOutcome("A", ANSWER, True, forced_correct=True)


def test_missing_forced_refusal_field_is_derived_from_the_last_decision():
    data = cascade_log_alpha05()[3].to_json()
    del data["forced_refusal"]
    assert RoutingRecord.from_json(data).forced_refusal is True


def test_outcome_lookup_error_names_agent():
    with pytest.raises(KeyError, match="agent 'Z' has no outcome"):
        outcome_rows()[0].outcome("Z")
