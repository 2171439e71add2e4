"""The golden score_published sample parses into the registered payload."""
import json
from pathlib import Path

from services.contracts.events import make_event, parse_event, Producer
from services.contracts.events.scoring import ScorePublished

SAMPLE = Path(__file__).resolve().parents[3] / "services" / "contracts" / "events" / "samples" / "score_published.v1.json"


def test_score_published_sample():
    body = json.loads(SAMPLE.read_text(encoding="utf-8"))
    envelope, payload = parse_event(body, "score_published")
    assert isinstance(payload, ScorePublished)
    assert envelope.producer.service == "scoring"
    assert payload.subject.subject_id == payload.subject.node == "411502008006"  # a child unit's code is its id
    assert payload.vetoed and payload.grade == "合格" and payload.rank == 2 and payload.movement == -1
    assert payload.policy.policy_id == "street-scheme" and payload.revision >= 1
    again = make_event(payload, Producer(node="411502008000", service="scoring"))
    assert parse_event(again.to_message(), "score_published")[1] == payload


def test_score_published_v2_and_ranking_published_samples():
    """The federation contract is versioned: v2 carries a subject's own figure without its
    rank; ranks travel per peer group in ranking_published."""
    from services.contracts.events.scoring import RankingPublished, ScorePublishedV2
    samples = SAMPLE.parent
    envelope, figure = parse_event(json.loads((samples / "score_published.v2.json").read_text(encoding="utf-8")),
                                   "score_published")
    assert envelope.schema_version == 2 and isinstance(figure, ScorePublishedV2)
    assert not hasattr(figure, "rank") and figure.revision == 5 and figure.vetoed
    _, ranking = parse_event(json.loads((samples / "ranking_published.v1.json").read_text(encoding="utf-8")),
                             "ranking_published")
    assert isinstance(ranking, RankingPublished) and ranking.version == 7 and ranking.peers == 3
    assert [(c.subject.subject_id, c.rank, c.ranked) for c in ranking.changes] == [
        ("411502008006", 2, True), ("411502008001", 1, True), ("411502008004", None, False)]
