"""The indicators' rules against hand computations: the four-species rule (三项达标、另一项不超过
3倍) and the Wilson score interval of a satisfaction rate."""
import math

import pytest

from services.indicators import domain
from services.indicators.domain import Item, Method, Reading, Species, Verdict

LEVELS = {m: spec.default_level for m, spec in domain.METHODS.items()}
# powder 3 %, trap 1 %, breteau 5, container 3 %, adult landing 1.5, fly rooms 6 %, cockroach rooms 3 %


def ratios(result):
    return {f.species: (None if f.ratio is None else round(f.ratio, 4)) for f in result.species}


def test_an_area_with_two_species_over_the_level_fails():
    # rat 2.0/3 = 0.667, mosquito 7/5 = 1.4, fly 7.2/6 = 1.2, cockroach 2.4/3 = 0.8:
    # only two of four at the level, three required.
    result = domain.evaluate_vectors([Reading(Method.powder, 2.0), Reading(Method.breteau, 7.0),
                                      Reading(Method.fly_rooms, 7.2), Reading(Method.cockroach_rooms, 2.4)], LEVELS)
    assert result.verdict == Verdict.failed
    assert ratios(result) == {Species.rat: 0.6667, Species.mosquito: 1.4, Species.fly: 1.2, Species.cockroach: 0.8}
    assert result.explanation.startswith("蚊、蝇超过控制水平（蚊为控制水平的 1.40 倍，蝇为控制水平的 1.20 倍），"
                                         "仅 2 项达标，须 3 项达标：未达标")
    assert "2 of 4 at the level, 3 required: fail" in result.explanation


def test_an_area_with_the_fourth_species_at_2_9_times_passes():
    # rat 2.5/3, mosquito 4/5, fly 5.4/6 = 0.9 at the level; cockroach 8.7/3 = 2.9 ≤ 3.
    result = domain.evaluate_vectors([Reading(Method.powder, 2.5), Reading(Method.breteau, 4.0),
                                      Reading(Method.fly_rooms, 5.4), Reading(Method.cockroach_rooms, 8.7)], LEVELS)
    assert result.verdict == Verdict.passed
    assert ratios(result)[Species.cockroach] == 2.9
    assert result.explanation == ("鼠、蚊、蝇达到控制水平，蟑螂为控制水平的 2.90 倍（不超过 3 倍）：达标; "
                                  "rat, mosquito, fly at the control level, cockroach at 2.90× (within 3×): pass")


@pytest.mark.parametrize("cockroach, verdict", [(9.0, Verdict.passed), (9.3, Verdict.failed), (3.0, Verdict.passed)])
def test_the_fourth_species_may_reach_exactly_three_times_its_level(cockroach, verdict):
    # 9.0/3 = 3.0× is "不超过3倍"; 9.3/3 = 3.1× is not; 3.0/3 = 1.0 is at the level.
    result = domain.evaluate_vectors([Reading(Method.powder, 1), Reading(Method.breteau, 1),
                                      Reading(Method.fly_rooms, 1), Reading(Method.cockroach_rooms, cockroach)],
                                     LEVELS)
    assert result.verdict == verdict


def test_one_species_beyond_three_times_fails_even_with_the_others_at_level():
    result = domain.evaluate_vectors([Reading(Method.powder, 1), Reading(Method.breteau, 16),
                                      Reading(Method.fly_rooms, 1), Reading(Method.cockroach_rooms, 1)], LEVELS)
    assert result.verdict == Verdict.failed
    assert result.explanation.startswith("蚊为控制水平的 3.20 倍，超过 3 倍：未达标")


def test_a_species_is_judged_by_its_worst_method_and_readings_are_weighted_by_sample_size():
    # powder: (2×100 + 5×300) / 400 = 4.25 % → 4.25/3 = 1.4167; trap 0.5/1 = 0.5 → rat 1.4167.
    result = domain.evaluate_vectors([Reading(Method.powder, 2, 100), Reading(Method.powder, 5, 300),
                                      Reading(Method.trap, 0.5)], LEVELS)
    rat = result.species[0]
    assert [(m.method, m.value, m.readings) for m in rat.methods] == [(Method.powder, 4.25, 2), (Method.trap, 0.5, 1)]
    assert round(rat.ratio, 4) == 1.4167 and not rat.at_level


def test_missing_species_leave_the_verdict_open_unless_it_has_already_failed():
    open_result = domain.evaluate_vectors([Reading(Method.powder, 1), Reading(Method.breteau, 1)], LEVELS)
    assert open_result.verdict == Verdict.incomplete
    assert open_result.explanation.startswith("缺少蝇、蟑螂的监测数据")
    failed = domain.evaluate_vectors([Reading(Method.breteau, 6), Reading(Method.fly_rooms, 7)], LEVELS)
    assert failed.verdict == Verdict.failed


def test_configured_levels_and_tolerance_apply():
    levels = dict(LEVELS, **{Method.cockroach_rooms: 5.0})
    readings = [Reading(Method.powder, 1), Reading(Method.breteau, 1), Reading(Method.fly_rooms, 1),
                Reading(Method.cockroach_rooms, 12.0)]
    assert domain.evaluate_vectors(readings, levels).verdict == Verdict.passed          # 2.4×
    assert domain.evaluate_vectors(readings, levels, tolerance=2.0).verdict == Verdict.failed


@pytest.mark.parametrize("method, species, value, field, reason", [
    (Method.powder, Species.rat, -0.1, "value", "cannot be negative"),
    (Method.powder, Species.rat, math.nan, "value", "finite"),
    (Method.fly_rooms, Species.fly, 100.5, "value", "largest possible"),
    (Method.breteau, Species.mosquito, 1000.1, "value", "largest possible"),
    (Method.powder, Species.fly, 1.0, "method", "measures rat, not fly"),
])
def test_impossible_figures_are_refused(method, species, value, field, reason):
    with pytest.raises(domain.DensityProblem) as caught:
        domain.check_figure(method, species, value)
    assert caught.value.field == field and reason in caught.value.reason


def test_levels_must_be_positive():
    with pytest.raises(domain.DensityProblem):
        domain.check_level(Method.trap, 0)
    domain.check_level(Method.trap, 0.5)


def test_slipping_means_from_pass_to_fail():
    assert domain.slipped(Verdict.passed, Verdict.failed)
    assert domain.slipped("pass", "fail")
    assert not domain.slipped(None, Verdict.failed)
    assert not domain.slipped(Verdict.incomplete, Verdict.failed)
    assert not domain.slipped(Verdict.passed, Verdict.incomplete)


# --- satisfaction ---

@pytest.mark.parametrize("satisfied, n, low, high", [
    # 85/100: p = .85, z² = 3.8415, 1 + z²/n = 1.038415; centre (.85 + .019207)/1.038415 = .83706,
    # half 1.96·√(.001275 + .000096)/1.038415 = .06989 → [.7672, .9069]
    (85, 100, 0.7672, 0.9069),
    # 0/10: centre = half = (z²/20)/(1 + z²/10) = .19207/1.38415 = .13877 → [0, .2775]
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    # 9/10: p = .9; centre (.9 + .19207)/1.38415 = .78898; half 1.96·√(.009 + .0096037)/1.38415 = .19314
    (9, 10, 0.5958, 0.9821),
])
def test_wilson_interval_matches_hand_computation(satisfied, n, low, high):
    interval = domain.wilson_interval(satisfied, n)
    assert (round(interval.low, 4), round(interval.high, 4)) == (low, high)


def test_wilson_interval_of_nothing_is_none():
    assert domain.wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        domain.wilson_interval(11, 10)


def _items():
    scale = frozenset({"5", "3", "1", "0"})
    return {
        "Q1": Item("Q1", "公厕卫生", frozenset({"5", "3"}), frozenset({"0"}), scale, place_type="public_toilet",
                   finding_below=0.6),
        "Q2": Item("Q2", "背街小巷", frozenset({"5", "3"}), frozenset({"0"}), scale, place_type="back_alley",
                   content_area="CITY"),
    }


def test_tally_counts_satisfied_answers_and_leaves_out_excluded_ones():
    responses = [("r1", {"Q1": "5", "Q2": "3"}), ("r2", {"Q1": "1", "Q2": "0"}), ("r3", {"Q1": "1", "Q2": "5"}),
                 ("r4", {"Q1": "3"})]
    area = domain.tally_area(_items(), responses)
    # Q1: 5,1,1,3 → 2/4; Q2: 3,(0 excluded),5 → 2/2; overall 4/6
    assert (area.overall.satisfied, area.overall.answers, len(area.overall.respondents)) == (4, 6, 4)
    assert (area.by_item["Q1"].satisfied, area.by_item["Q1"].answers) == (2, 4)
    assert (area.by_place_type["back_alley"].satisfied, area.by_place_type["back_alley"].answers) == (2, 2)
    assert set(area.by_content_area) == {"CITY"}
    assert domain.flagged(area.overall.rate)                      # 0.667 < 0.9
    assert [item.code for item, _ in domain.low_items(_items(), area)] == ["Q1"]   # 0.5 < 0.6


def test_answers_off_the_scale_are_named():
    assert domain.answer_problem(_items()["Q1"], "4").startswith("'4' is not on the item's answer scale")
    assert domain.answer_problem(_items()["Q1"], "3") is None


def test_flagging_needs_answers():
    assert not domain.flagged(None)
    assert not domain.flagged(0.9)
    assert domain.flagged(0.8999)


def test_the_sample_is_reproducible_from_the_seed_and_differs_by_area():
    frame = [f"{n}号" for n in range(1, 501)]
    first = domain.draw_sample(frame, 20, 20261101, "411502008001")
    assert first == domain.draw_sample(frame, 20, 20261101, "411502008001")
    assert len(set(first)) == 20 and set(first) <= set(frame)
    assert first != domain.draw_sample(frame, 20, 20261101, "411502008002")
    assert first != domain.draw_sample(frame, 20, 7, "411502008001")
    with pytest.raises(ValueError):
        domain.draw_sample(frame, 501, 1, "411502008001")
