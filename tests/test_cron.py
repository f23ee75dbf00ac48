"""Cron expressions, parsed by litejobs itself (`_Cron`): their syntax, their
errors, and their ticks in time zones, daylight saving included, checked
against brute force over random expressions.  (Their speed: bench/.)"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest

from litejobs import CronError, _Cron

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")


def at(tz: tzinfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0,
       second: int = 0, fold: int = 0) -> float:
    """Unix seconds of a local wall time in tz."""
    return datetime(year, month, day, hour, minute, second, tzinfo=tz, fold=fold).timestamp()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> float:
    return at(UTC, year, month, day, hour, minute, second)


def ticks(expr: str, start: float, end: float, tz: tzinfo = UTC, limit: int = 10_000) -> list[float]:
    return _Cron.parse(expr).ticks_between(start, end, tz, limit)


def nxt(expr: str, after: float, tz: tzinfo = UTC) -> float | None:
    return _Cron.parse(expr).next_after(after, tz)


def error_of(expr: object) -> str:
    with pytest.raises(CronError) as caught:
        _Cron.parse(expr)  # type: ignore[arg-type]
    return str(caught.value)


# ---------------------------------------------------------------- syntax


def test_a_star_expression_fires_every_minute_at_second_zero() -> None:
    # From 10:00:30 the next minutes are 10:01:00, 10:02:00, 10:03:00.
    assert ticks("* * * * *", utc(2026, 5, 4, 10, 0, 30), utc(2026, 5, 4, 10, 3)) == [
        utc(2026, 5, 4, 10, 1), utc(2026, 5, 4, 10, 2), utc(2026, 5, 4, 10, 3)]


def test_the_text_is_kept_stripped() -> None:
    assert _Cron.parse("  5 4 * * *\n").text == "5 4 * * *"
    assert _Cron.parse(" @Daily ").text == "@Daily"


def test_a_single_number_fixes_a_field() -> None:
    # 04:05 every day: from 2026-05-04 12:00 the next are 05-05 and 05-06 04:05.
    assert ticks("5 4 * * *", utc(2026, 5, 4, 12), utc(2026, 5, 6, 12)) == [
        utc(2026, 5, 5, 4, 5), utc(2026, 5, 6, 4, 5)]


def test_a_range_covers_both_ends() -> None:
    # Minutes 10-12 of hour 3.
    assert ticks("10-12 3 * * *", utc(2026, 5, 4), utc(2026, 5, 4, 4)) == [
        utc(2026, 5, 4, 3, 10), utc(2026, 5, 4, 3, 11), utc(2026, 5, 4, 3, 12)]


def test_a_star_step_counts_from_the_field_minimum() -> None:
    # */20 minutes: 00, 20, 40; day-of-month */10: 1, 11, 21, 31.
    assert ticks("*/20 0 * * *", utc(2026, 5, 3, 23), utc(2026, 5, 4, 1)) == [
        utc(2026, 5, 4, 0, 0), utc(2026, 5, 4, 0, 20), utc(2026, 5, 4, 0, 40)]
    assert ticks("0 0 */10 5 *", utc(2026, 4, 30), utc(2026, 6, 30)) == [
        utc(2026, 5, 1), utc(2026, 5, 11), utc(2026, 5, 21), utc(2026, 5, 31)]


def test_a_range_with_a_step() -> None:
    # 10-30/7 -> minutes 10, 17, 24 (31 is past the end).
    assert ticks("10-30/7 6 * * *", utc(2026, 5, 4), utc(2026, 5, 4, 7)) == [
        utc(2026, 5, 4, 6, 10), utc(2026, 5, 4, 6, 17), utc(2026, 5, 4, 6, 24)]


def test_a_start_with_a_step_runs_to_the_field_maximum() -> None:
    # Minutes 10/20 -> 10, 30, 50; hours 20/2 -> 20, 22.
    assert ticks("10/20 20/2 * * *", utc(2026, 5, 4), utc(2026, 5, 5)) == [
        utc(2026, 5, 4, 20, 10), utc(2026, 5, 4, 20, 30), utc(2026, 5, 4, 20, 50),
        utc(2026, 5, 4, 22, 10), utc(2026, 5, 4, 22, 30), utc(2026, 5, 4, 22, 50)]
    # Months 11/1 -> 11, 12: from mid 2026 the next 1sts are Nov 1 and Dec 1.
    assert ticks("0 0 1 11/1 *", utc(2026, 6, 1), utc(2027, 6, 1)) == [
        utc(2026, 11, 1), utc(2026, 12, 1)]


def test_a_comma_list_mixes_every_form() -> None:
    # 1, 5-7, */20, 50/5 -> {0, 1, 5, 6, 7, 20, 40, 50, 55}.
    cron = _Cron.parse("1,5-7,*/20,50/5 * * * *")
    got = {m for m in range(60) if cron.matches(datetime(2026, 5, 4, 9, m))}
    assert got == {0, 1, 5, 6, 7, 20, 40, 50, 55}


def test_month_names_are_case_insensitive_and_work_in_ranges() -> None:
    # MAR-may -> March to May; from 2026-01-01 the 1sts: Mar 1, Apr 1, May 1, then 2027-03-01.
    assert ticks("0 0 1 MAR-may *", utc(2026, 1, 1), utc(2027, 3, 1)) == [
        utc(2026, 3, 1), utc(2026, 4, 1), utc(2026, 5, 1), utc(2027, 3, 1)]
    assert nxt("0 0 1 Jan,jUL *", utc(2026, 2, 1)) == utc(2026, 7, 1)


def test_weekday_names_are_case_insensitive_and_work_in_ranges() -> None:
    # Week of Mon 2026-05-04: mon-FRI at 09:00 -> 4th to 8th, not Sat 9/Sun 10.
    assert ticks("0 9 * * mon-FRI", utc(2026, 5, 4), utc(2026, 5, 11)) == [
        utc(2026, 5, d, 9) for d in (4, 5, 6, 7, 8)]
    assert ticks("0 9 * * Sat,SUN", utc(2026, 5, 4), utc(2026, 5, 11)) == [
        utc(2026, 5, 9, 9), utc(2026, 5, 10, 9)]


def test_zero_and_seven_both_mean_sunday() -> None:
    # Sundays after 2026-05-04: May 10, May 17.
    expected = [utc(2026, 5, 10), utc(2026, 5, 17)]
    assert ticks("0 0 * * 0", utc(2026, 5, 4), utc(2026, 5, 18)) == expected
    assert ticks("0 0 * * 7", utc(2026, 5, 4), utc(2026, 5, 18)) == expected
    # 5-7 -> Fri, Sat, Sun: May 8, 9, 10.
    assert ticks("0 0 * * 5-7", utc(2026, 5, 4), utc(2026, 5, 11)) == [
        utc(2026, 5, 8), utc(2026, 5, 9), utc(2026, 5, 10)]


def test_weekday_open_steps_stop_at_saturday() -> None:
    # 1/2 -> Mon, Wed, Fri (not Sunday as 7); */3 -> Sun, Wed, Sat.
    assert ticks("0 0 * * 1/2", utc(2026, 5, 3, 12), utc(2026, 5, 10, 12)) == [
        utc(2026, 5, 4), utc(2026, 5, 6), utc(2026, 5, 8)]
    assert ticks("0 0 * * */3", utc(2026, 5, 3, 12), utc(2026, 5, 10)) == [
        utc(2026, 5, 6), utc(2026, 5, 9), utc(2026, 5, 10)]


def test_day_of_month_or_weekday_when_both_are_restricted() -> None:
    # Jan 2026: Fridays 2, 9, 16, 23, 30 plus Tue 13; Feb: Fri 6, Fri 13 (once).
    assert ticks("0 0 13 * fri", utc(2026, 1, 1), utc(2026, 2, 14)) == [
        utc(2026, 1, d) for d in (2, 9, 13, 16, 23, 30)] + [utc(2026, 2, 6), utc(2026, 2, 13)]


def test_day_fields_combine_with_and_when_one_is_a_star() -> None:
    # Only the 13th (Jan 13, Feb 13) / only Fridays (Jan 2, 9).
    assert ticks("0 0 13 * *", utc(2026, 1, 1), utc(2026, 2, 14)) == [
        utc(2026, 1, 13), utc(2026, 2, 13)]
    assert ticks("0 0 * * fri", utc(2026, 1, 1), utc(2026, 1, 10)) == [
        utc(2026, 1, 2), utc(2026, 1, 9)]


def test_a_starred_step_counts_as_unrestricted_for_the_day_rule() -> None:
    # */2 starts with '*', so AND: odd days that are Fridays.
    # Jan 2026 Fridays 2, 9, 16, 23, 30 -> 9, 23; Feb 6, 13, 20, 27 -> 13, 27.
    assert ticks("0 0 */2 * fri", utc(2026, 1, 1), utc(2026, 3, 1)) == [
        utc(2026, 1, 9), utc(2026, 1, 23), utc(2026, 2, 13), utc(2026, 2, 27)]


def test_a_sixth_field_gives_seconds() -> None:
    # Every 20 s: from 10:00:05 -> :20, :40, 10:01:00.
    assert ticks("* * * * * */20", utc(2026, 5, 4, 10, 0, 5), utc(2026, 5, 4, 10, 1)) == [
        utc(2026, 5, 4, 10, 0, 20), utc(2026, 5, 4, 10, 0, 40), utc(2026, 5, 4, 10, 1, 0)]
    # Minute 0, second 30 of every hour.
    assert ticks("0 * * * * 30", utc(2026, 5, 4, 10), utc(2026, 5, 4, 12)) == [
        utc(2026, 5, 4, 10, 0, 30), utc(2026, 5, 4, 11, 0, 30)]


def test_five_fields_mean_second_zero() -> None:
    cron = _Cron.parse("* * * * *")
    assert cron.matches(datetime(2026, 5, 4, 10, 7, 0))
    assert not cron.matches(datetime(2026, 5, 4, 10, 7, 1))


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        # From Wed 2026-05-06 10:30 UTC:
        ("@yearly", utc(2027, 1, 1)),
        ("@annually", utc(2027, 1, 1)),
        ("@monthly", utc(2026, 6, 1)),
        ("@weekly", utc(2026, 5, 10)),  # next Sunday
        ("@daily", utc(2026, 5, 7)),
        ("@midnight", utc(2026, 5, 7)),
        ("@hourly", utc(2026, 5, 6, 11)),
        ("@HOURLY", utc(2026, 5, 6, 11)),
        ("@Weekly", utc(2026, 5, 10)),
    ],
)
def test_each_alias_fires_at_its_expansion(alias: str, expected: float) -> None:
    assert nxt(alias, utc(2026, 5, 6, 10, 30)) == expected


def test_matches_checks_naive_wall_time() -> None:
    cron = _Cron.parse("30 2 13 * fri")
    assert cron.matches(datetime(2026, 3, 13, 2, 30))  # Friday the 13th
    assert cron.matches(datetime(2026, 1, 2, 2, 30))  # a Friday
    assert cron.matches(datetime(2026, 1, 13, 2, 30))  # a Tuesday the 13th
    assert not cron.matches(datetime(2026, 1, 14, 2, 30))  # Wednesday the 14th
    assert not cron.matches(datetime(2026, 1, 13, 2, 31))
    # Wall times inside a DST gap still match as wall times.
    assert _Cron.parse("30 2 * * *").matches(datetime(2026, 3, 29, 2, 30))


# ---------------------------------------------------------------- errors


def test_a_wrong_field_count_is_an_error() -> None:
    assert error_of("* * *") == (
        "cron expression '* * *': 3 fields, expected 5 (minute hour day-of-month "
        "month day-of-week) or 6 (minute hour day-of-month month day-of-week second)")
    assert "7 fields" in error_of("* * * * * * *")
    assert "'*': 1 field," in error_of("*")


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("61 * * * *", "cron expression '61 * * * *': field 1 (minute) has 61, outside 0-59"),
        ("0 24 * * *", "cron expression '0 24 * * *': field 2 (hour) has 24, outside 0-23"),
        ("0 0 0 * *", "cron expression '0 0 0 * *': field 3 (day-of-month) has 0, outside 1-31"),
        ("0 0 32 * *", "cron expression '0 0 32 * *': field 3 (day-of-month) has 32, outside 1-31"),
        ("0 0 * 13 *", "cron expression '0 0 * 13 *': field 4 (month) has 13, outside 1-12"),
        ("0 0 * * 8", "cron expression '0 0 * * 8': field 5 (day-of-week) has 8, outside 0-7"),
        ("0 0 * * * 60", "cron expression '0 0 * * * 60': field 6 (second) has 60, outside 0-59"),
        ("1-75 * * * *", "cron expression '1-75 * * * *': field 1 (minute) has 75, outside 0-59"),
    ],
)
def test_an_out_of_range_value_names_its_field(expr: str, message: str) -> None:
    assert error_of(expr) == message


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("*/0 * * * *", "cron expression '*/0 * * * *': field 1 (minute) has step '0' in '*/0', "
                        "expected a whole number of 1 or more"),
        ("0 */x * * *", "cron expression '0 */x * * *': field 2 (hour) has step 'x' in '*/x', "
                        "expected a whole number of 1 or more"),
        ("5/ * * * *", "cron expression '5/ * * * *': field 1 (minute) has step '' in '5/', "
                       "expected a whole number of 1 or more"),
        ("1-5/-1 * * * *", "cron expression '1-5/-1 * * * *': field 1 (minute) has step '-1' "
                           "in '1-5/-1', expected a whole number of 1 or more"),
    ],
)
def test_a_bad_step_is_an_error(expr: str, message: str) -> None:
    assert error_of(expr) == message


def test_a_reversed_range_is_an_error() -> None:
    assert error_of("50-10 * * * *") == (
        "cron expression '50-10 * * * *': field 1 (minute) has range '50-10' "
        "whose start 50 is after its end 10")
    assert error_of("0 0 * * fri-mon") == (
        "cron expression '0 0 * * fri-mon': field 5 (day-of-week) has range 'fri-mon' "
        "whose start 5 is after its end 1")
    assert error_of("0 0 * * mon-sun").endswith(
        "whose start 1 is after its end 0 (write 7 for Sunday at the end of a range)")
    assert "range 'dec-jan'" in error_of("0 0 1 dec-jan *")


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 0 1 foo *", "cron expression '0 0 1 foo *': field 4 (month) has 'foo', "
                        "expected a number or month name (jan-dec)"),
        ("0 0 * * funday", "cron expression '0 0 * * funday': field 5 (day-of-week) has "
                           "'funday', expected a number or weekday name (sun-sat)"),
        ("jan * * * *", "cron expression 'jan * * * *': field 1 (minute) has 'jan', "
                        "expected a number"),
        ("0 0 * jan mar", "cron expression '0 0 * jan mar': field 5 (day-of-week) has 'mar', "
                          "expected a number or weekday name (sun-sat)"),
        ("0 0 L * *", "cron expression '0 0 L * *': field 3 (day-of-month) has 'L', "
                      "expected a number"),
        ("0 0 ? * *", "cron expression '0 0 ? * *': field 3 (day-of-month) has '?', "
                      "expected a number"),
        ("1-2-3 * * * *", "cron expression '1-2-3 * * * *': field 1 (minute) has '2-3', "
                          "expected a number"),
        ("-5 * * * *", "cron expression '-5 * * * *': field 1 (minute) has an empty value "
                       "in '-5'"),
        ("1,,2 * * * *", "cron expression '1,,2 * * * *': field 1 (minute) has an empty "
                         "list item in '1,,2'"),
    ],
)
def test_an_unknown_name_or_malformed_value_is_an_error(expr: str, message: str) -> None:
    assert error_of(expr) == message


def test_an_unknown_alias_lists_the_known_ones() -> None:
    assert error_of("@fortnightly") == (
        "cron expression '@fortnightly': unknown alias '@fortnightly', known: @yearly, "
        "@annually, @monthly, @weekly, @daily, @midnight, @hourly")
    assert error_of("@daily 5") == "cron expression '@daily 5': alias '@daily' takes no other fields"


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 0 30 2 *", "cron expression '0 0 30 2 *' never fires: no month in it (2) has day 30"),
        ("0 0 31 4,6,9,11 *", "cron expression '0 0 31 4,6,9,11 *' never fires: no month in "
                              "it (4, 6, 9, 11) has day 31"),
        ("0 0 30,31 feb *", "cron expression '0 0 30,31 feb *' never fires: no month in it (2) "
                            "has any of days 30, 31"),
        # */2 in day-of-week counts as unrestricted, so the AND rule applies.
        ("0 0 31 2 */2", "cron expression '0 0 31 2 */2' never fires: no month in it (2) "
                         "has day 31"),
    ],
)
def test_an_expression_that_can_never_fire_is_an_error(expr: str, message: str) -> None:
    assert error_of(expr) == message


def test_possible_rare_days_are_not_rejected() -> None:
    _Cron.parse("0 0 29 2 *")  # leap day
    _Cron.parse("0 0 31 1-3 *")  # January and March have a 31st
    _Cron.parse("0 0 30 2 mon")  # OR rule: every Monday in February


@pytest.mark.parametrize("value", [None, 5, 1.5, b"* * * * *", ["*"] * 5])
def test_a_non_string_is_an_error(value: object) -> None:
    assert error_of(value) == f"cron expression must be a string, got {type(value).__name__}"


@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_an_empty_expression_is_an_error(value: str) -> None:
    assert error_of(value) == "cron expression '': empty, expected 5 or 6 fields or an @alias"


def test_cron_error_is_a_value_error() -> None:
    assert issubclass(CronError, ValueError)


# ---------------------------------------------------------------- search


def test_next_after_is_strictly_after_an_exact_tick() -> None:
    # At exactly 2026-05-04 00:00 the next daily tick is the following day.
    assert nxt("0 0 * * *", utc(2026, 5, 4)) == utc(2026, 5, 5)
    assert nxt("0 0 * * *", utc(2026, 5, 4) - 0.5) == utc(2026, 5, 4)
    assert nxt("0 0 * * *", utc(2026, 5, 4) + 0.5) == utc(2026, 5, 5)
    assert nxt("* * * * * *", utc(2026, 5, 4, 0, 0, 0) + 0.999) == utc(2026, 5, 4, 0, 0, 1)


def test_next_after_returns_a_float() -> None:
    result = nxt("0 0 * * *", utc(2026, 5, 4))
    assert isinstance(result, float)


def test_month_ends_skip_short_months() -> None:
    # The 31st after 2026-04-01: April has 30 days -> May 31; then July 31.
    assert nxt("0 0 31 * *", utc(2026, 4, 1)) == utc(2026, 5, 31)
    assert nxt("0 0 31 * *", utc(2026, 5, 31)) == utc(2026, 7, 31)
    # The 30th after Jan 30 skips February -> March 30.
    assert nxt("0 0 30 * *", utc(2026, 1, 30)) == utc(2026, 3, 30)


def test_december_rolls_over_into_january() -> None:
    assert nxt("0 0 1 1 *", utc(2026, 6, 15)) == utc(2027, 1, 1)
    assert nxt("*/30 * * * *", utc(2026, 12, 31, 23, 45)) == utc(2027, 1, 1)
    assert nxt("59 23 31 12 *", utc(2026, 12, 31, 23, 59)) == utc(2027, 12, 31, 23, 59)
    assert nxt("* * * * * *", utc(2026, 12, 31, 23, 59, 59)) == utc(2027, 1, 1)


def test_february_29_is_found_in_the_next_leap_year() -> None:
    assert nxt("0 0 29 2 *", utc(2026, 1, 1)) == utc(2028, 2, 29)
    assert nxt("0 0 29 2 *", utc(2028, 2, 29)) == utc(2032, 2, 29)
    # 2100 is not a leap year: 2096 -> 2104.
    assert nxt("0 0 29 2 *", utc(2096, 3, 1)) == utc(2104, 2, 29)


def test_leap_day_or_weekday_still_fires() -> None:
    # OR rule: Feb Mondays plus Feb 29.  Feb 2026 Mondays: 2, 9, 16, 23.
    assert ticks("0 0 29 2 mon", utc(2026, 1, 1), utc(2026, 12, 31)) == [
        utc(2026, 2, d) for d in (2, 9, 16, 23)]
    # 2028-02-29 is a Tuesday, so it fires there too (Feb 28 2028 is a Monday).
    assert ticks("0 0 29 2 mon", utc(2028, 2, 27), utc(2028, 3, 1)) == [
        utc(2028, 2, 28), utc(2028, 2, 29)]


def test_the_horizon_is_ten_years() -> None:
    # */31 counts as unrestricted, so: day 1 of February AND a Monday.
    # Feb 1 is a Monday in 2027 and then next in 2038 (11 years).
    expr = "0 0 */31 2 mon"
    assert nxt(expr, utc(2027, 1, 1)) == utc(2027, 2, 1)
    assert nxt(expr, utc(2027, 2, 1)) is None  # 2038-02-01 is past 2037-02-01
    assert nxt(expr, utc(2028, 2, 2)) == utc(2038, 2, 1)  # within 2038-02-02
    # ticks_between is bounded by `end`, not by the horizon.
    assert ticks(expr, utc(2027, 2, 1), utc(2039, 1, 1)) == [utc(2038, 2, 1)]


def test_valid_expressions_always_find_a_tick() -> None:
    exprs = ["0 0 29 2 *", "0 0 31 * *", "59 23 31 12 *", "0 0 13 * fri",
             "0 0 1 * mon", "0 12 * 2 sun", "* * * * * 59", "@yearly", "0 0 29 2 mon"]
    for year in range(2000, 2120, 7):
        for expr in exprs:
            after = utc(year, 3, 1)
            found = nxt(expr, after)
            assert found is not None and found > after
            assert _Cron.parse(expr).matches(datetime.fromtimestamp(found, UTC).replace(tzinfo=None))


def test_searches_run_up_to_the_end_of_year_9999() -> None:
    # Near datetime's limit the horizon is cut at 9999-12-31 23:59:59.
    assert nxt("59 23 31 12 *", utc(9999, 12, 29)) == utc(9999, 12, 31, 23, 59)
    assert nxt("59 23 31 12 *", utc(9999, 12, 31, 23, 59)) is None
    assert nxt("* * * * * *", utc(9999, 12, 31, 23, 59, 58)) == utc(9999, 12, 31, 23, 59, 59)


def test_ticks_between_accepts_an_unbounded_end() -> None:
    # The first three New Year midnights after the epoch.
    assert ticks("@yearly", 0, float("inf"), limit=3) == [
        utc(1971, 1, 1), utc(1972, 1, 1), utc(1973, 1, 1)]


def test_ticks_between_limits_and_orders() -> None:
    # Every 10 minutes from 00:00 (exclusive): 00:10, 00:20, 00:30 are the first three.
    assert ticks("*/10 * * * *", utc(2026, 5, 4), utc(2026, 5, 5), limit=3) == [
        utc(2026, 5, 4, 0, 10), utc(2026, 5, 4, 0, 20), utc(2026, 5, 4, 0, 30)]
    all_ticks = ticks("*/10 * * * *", utc(2026, 5, 4), utc(2026, 5, 5))
    assert len(all_ticks) == 144  # 00:10 .. 24:00 inclusive
    assert all_ticks == sorted(all_ticks) and all_ticks[-1] == utc(2026, 5, 5)
    assert ticks("*/10 * * * *", utc(2026, 5, 4), utc(2026, 5, 5), limit=0) == []
    assert ticks("*/10 * * * *", utc(2026, 5, 5), utc(2026, 5, 4)) == []
    assert ticks("*/10 * * * *", utc(2026, 5, 4), utc(2026, 5, 4)) == []


def test_ticks_between_excludes_start_and_includes_end() -> None:
    assert ticks("0 * * * *", utc(2026, 5, 4, 1), utc(2026, 5, 4, 3)) == [
        utc(2026, 5, 4, 2), utc(2026, 5, 4, 3)]


def test_ticks_between_agrees_with_repeated_next_after() -> None:
    for expr in ("*/7 * * * *", "0 0 13 * fri", "15 2 * * *", "* * * * * */13"):
        for tz in (UTC, BERLIN, NEW_YORK, LORD_HOWE):
            cron = _Cron.parse(expr)
            start, end = at(tz, 2026, 10, 3), at(tz, 2026, 11, 3)
            listed = cron.ticks_between(start, end, tz, 500)
            chained: list[float] = []
            cursor = start
            while len(chained) < 500:
                found = cron.next_after(cursor, tz)
                assert found is not None
                if found > end:
                    break
                chained.append(found)
                cursor = found
            assert listed == chained


# ---------------------------------------------------------------- daylight saving

# Europe/Berlin 2026: 03-29 01:00 UTC clocks go 02:00 CET -> 03:00 CEST (gap
# 02:00-03:00); 10-25 01:00 UTC they go 03:00 CEST -> 02:00 CET (02:00-03:00
# repeated).  CET = UTC+1, CEST = UTC+2.


def test_berlin_spring_forward_daily_0230_fires_at_the_gap_end_once() -> None:
    # 03-28 02:30 CET = 01:30Z; 03-29 02:30 is skipped -> 03:00 CEST = 01:00Z;
    # 03-30 02:30 CEST = 00:30Z.
    assert ticks("30 2 * * *", utc(2026, 3, 27, 12), utc(2026, 3, 30, 12), BERLIN) == [
        utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]
    assert nxt("30 2 * * *", utc(2026, 3, 28, 12), BERLIN) == utc(2026, 3, 29, 1, 0)


def test_berlin_spring_forward_quarter_hours_collapse_into_the_gap_end() -> None:
    # 01:45 CET = 00:45Z; 02:00, 02:15, 02:30, 02:45 (skipped) and the real
    # 03:00 CEST all -> 01:00Z once; then 03:15 CEST = 01:15Z ... 04:00 = 02:00Z.
    assert ticks("*/15 * * * *", utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 2), BERLIN) == [
        utc(2026, 3, 29, 0, 45), utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 15),
        utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 1, 45), utc(2026, 3, 29, 2, 0)]
    assert nxt("*/15 * * * *", utc(2026, 3, 29, 0, 45), BERLIN) == utc(2026, 3, 29, 1, 0)
    assert nxt("*/15 * * * *", utc(2026, 3, 29, 0, 59, 59), BERLIN) == utc(2026, 3, 29, 1, 0)
    # Exactly at the gap end, the collapsed tick is not "after" any more.
    assert nxt("*/15 * * * *", utc(2026, 3, 29, 1, 0), BERLIN) == utc(2026, 3, 29, 1, 15)


def test_berlin_spring_forward_equal_instants_count_once() -> None:
    # 02:00, 02:30 (skipped) and 03:00 -> 01:00Z once; 03:30 CEST = 01:30Z.
    assert ticks("0,30 2,3 * * *", utc(2026, 3, 29), utc(2026, 3, 29, 12), BERLIN) == [
        utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 30)]
    assert ticks("0 2 * * *", utc(2026, 3, 29), utc(2026, 3, 29, 12), BERLIN) == [
        utc(2026, 3, 29, 1, 0)]


def test_berlin_spring_forward_every_second_skips_the_gap() -> None:
    # 00:59:59Z (01:59:59 CET), then all of 02:00:00-02:59:59 and 03:00:00
    # collapse into 01:00:00Z, then 01:00:01Z, 01:00:02Z.
    assert ticks("* * * * * *", utc(2026, 3, 29, 0, 59, 58), utc(2026, 3, 29, 1, 0, 2), BERLIN) == [
        utc(2026, 3, 29, 0, 59, 59), utc(2026, 3, 29, 1, 0, 0),
        utc(2026, 3, 29, 1, 0, 1), utc(2026, 3, 29, 1, 0, 2)]


def test_berlin_fall_back_daily_0230_fires_once_on_the_first_pass() -> None:
    # 10-24 02:30 CEST = 00:30Z; 10-25 02:30 first pass (CEST) = 00:30Z only;
    # 10-26 02:30 CET = 01:30Z.
    assert ticks("30 2 * * *", utc(2026, 10, 23, 12), utc(2026, 10, 26, 12), BERLIN) == [
        utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_berlin_fall_back_quarter_hours_are_listed_exactly() -> None:
    # Local 00:00 CEST = 22:00Z (10-24) ... 02:45 CEST = 00:45Z (12 ticks), no
    # second-pass 02:xx (01:00Z-01:45Z), then 03:00 CET = 02:00Z ... 04:00 CET = 03:00Z.
    first_pass = [utc(2026, 10, 24, 22, m) for m in (0, 15, 30, 45)] + [
        utc(2026, 10, 24, 23, m) for m in (0, 15, 30, 45)] + [
        utc(2026, 10, 25, 0, m) for m in (0, 15, 30, 45)]
    after_repeat = [utc(2026, 10, 25, 2, m) for m in (0, 15, 30, 45)] + [utc(2026, 10, 25, 3)]
    start = at(BERLIN, 2026, 10, 24, 23, 59)
    end = at(BERLIN, 2026, 10, 25, 4, 0)
    assert end == utc(2026, 10, 25, 3)
    assert ticks("*/15 * * * *", start, end, BERLIN) == first_pass + after_repeat


def test_berlin_next_after_from_inside_the_repeated_hour() -> None:
    # Second pass 02:10 CET = 01:10Z -> 03:00 CET = 02:00Z (not 02:15).
    after = at(BERLIN, 2026, 10, 25, 2, 10, fold=1)
    assert after == utc(2026, 10, 25, 1, 10)
    assert nxt("*/15 * * * *", after, BERLIN) == utc(2026, 10, 25, 2, 0)
    assert nxt("* * * * * *", after, BERLIN) == utc(2026, 10, 25, 2, 0)
    assert nxt("30 2 * * *", after, BERLIN) == utc(2026, 10, 26, 1, 30)
    # First pass 02:10 CEST = 00:10Z -> 02:15 CEST = 00:15Z.
    assert nxt("*/15 * * * *", utc(2026, 10, 25, 0, 10), BERLIN) == utc(2026, 10, 25, 0, 15)
    # End of the first pass 02:45 CEST = 00:45Z -> 03:00 CET = 02:00Z.
    assert nxt("*/15 * * * *", utc(2026, 10, 25, 0, 45), BERLIN) == utc(2026, 10, 25, 2, 0)
    # Every second: 02:59:59 CEST = 00:59:59Z -> then 03:00:00 CET = 02:00:00Z.
    assert ticks("* * * * * *", utc(2026, 10, 25, 0, 59, 58), utc(2026, 10, 25, 2, 0, 1), BERLIN) == [
        utc(2026, 10, 25, 0, 59, 59), utc(2026, 10, 25, 2, 0, 0), utc(2026, 10, 25, 2, 0, 1)]


def test_berlin_fall_back_every_second_fires_82800_times_that_day() -> None:
    # 24 hours of instants, minus the 3600 second-pass seconds.
    start = utc(2026, 10, 24, 12)
    got = ticks("* * * * * *", start, start + 86400, BERLIN, limit=100_000)
    assert len(got) == 82_800 and got == sorted(set(got))


# America/New_York 2026: 03-08 07:00Z clocks go 02:00 EST -> 03:00 EDT;
# 11-01 06:00Z they go 02:00 EDT -> 01:00 EST (01:00-02:00 repeated).
# EST = UTC-5, EDT = UTC-4.


def test_new_york_spring_forward() -> None:
    # 03-07 02:30 EST = 07:30Z; 03-08 02:30 skipped -> 03:00 EDT = 07:00Z;
    # 03-09 02:30 EDT = 06:30Z.
    assert ticks("30 2 * * *", utc(2026, 3, 7), utc(2026, 3, 9, 12), NEW_YORK) == [
        utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)]
    # Hourly: 00:00 EST 05:00Z, 01:00 EST 06:00Z, 02:00 (skipped) and 03:00 EDT
    # both 07:00Z, 04:00 EDT 08:00Z.
    assert ticks("0 * * * *", utc(2026, 3, 8, 4, 30), utc(2026, 3, 8, 8, 30), NEW_YORK) == [
        utc(2026, 3, 8, 5), utc(2026, 3, 8, 6), utc(2026, 3, 8, 7), utc(2026, 3, 8, 8)]


def test_new_york_fall_back() -> None:
    # 01:30 daily: 11-01 first pass 01:30 EDT = 05:30Z only; 11-02 01:30 EST = 06:30Z.
    assert ticks("30 1 * * *", utc(2026, 10, 31, 12), utc(2026, 11, 2, 12), NEW_YORK) == [
        utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]
    # Hourly: 00:00 EDT 04:00Z, 01:00 EDT 05:00Z, (01:00 EST 06:00Z is a
    # repeat), 02:00 EST 07:00Z.
    assert ticks("0 * * * *", utc(2026, 11, 1, 3, 30), utc(2026, 11, 1, 7, 30), NEW_YORK) == [
        utc(2026, 11, 1, 4), utc(2026, 11, 1, 5), utc(2026, 11, 1, 7)]
    # From the second pass 01:20 EST = 06:20Z: next */15 is 02:00 EST = 07:00Z.
    after = at(NEW_YORK, 2026, 11, 1, 1, 20, fold=1)
    assert after == utc(2026, 11, 1, 6, 20)
    assert nxt("*/15 * * * *", after, NEW_YORK) == utc(2026, 11, 1, 7)


# Australia/Lord_Howe 2026: 04-04 15:00Z clocks go 02:00 (+11) -> 01:30
# (+10:30), so 01:30-02:00 repeats; 10-03 15:30Z they go 02:00 (+10:30) ->
# 02:30 (+11), so 02:00-02:30 is skipped.


def test_lord_howe_half_hour_fall_back() -> None:
    # 01:15 +11 = 14:15Z, 01:30 +11 = 14:30Z, 01:45 +11 = 14:45Z; second pass
    # 01:30/01:45 +10:30 (15:00Z, 15:15Z) skipped; 02:00 +10:30 = 15:30Z, 02:15 = 15:45Z.
    assert ticks("*/15 * * * *", utc(2026, 4, 4, 14), utc(2026, 4, 4, 15, 45), LORD_HOWE) == [
        utc(2026, 4, 4, 14, 15), utc(2026, 4, 4, 14, 30), utc(2026, 4, 4, 14, 45),
        utc(2026, 4, 4, 15, 30), utc(2026, 4, 4, 15, 45)]
    # Daily 01:45 fires at the first pass only (14:45Z), next day 01:45 +10:30 = 15:15Z.
    assert ticks("45 1 * * *", utc(2026, 4, 4), utc(2026, 4, 5, 23), LORD_HOWE) == [
        utc(2026, 4, 4, 14, 45), utc(2026, 4, 5, 15, 15)]
    # From the second pass 01:40 +10:30 = 15:10Z -> 02:00 +10:30 = 15:30Z.
    assert nxt("*/15 * * * *", utc(2026, 4, 4, 15, 10), LORD_HOWE) == utc(2026, 4, 4, 15, 30)


def test_lord_howe_half_hour_spring_forward() -> None:
    # 01:45 +10:30 = 15:15Z; 02:00, 02:15 (skipped) and 02:30 +11 -> 15:30Z once;
    # 02:45 +11 = 15:45Z.
    assert ticks("*/15 * * * *", utc(2026, 10, 3, 15), utc(2026, 10, 3, 15, 45), LORD_HOWE) == [
        utc(2026, 10, 3, 15, 15), utc(2026, 10, 3, 15, 30), utc(2026, 10, 3, 15, 45)]
    assert nxt("15 2 * * *", utc(2026, 10, 3), LORD_HOWE) == utc(2026, 10, 3, 15, 30)
    assert nxt("*/15 * * * *", utc(2026, 10, 3, 15, 30), LORD_HOWE) == utc(2026, 10, 3, 15, 45)


def test_utc_has_no_surprises_on_european_transition_days() -> None:
    for day in (date(2026, 3, 29), date(2026, 10, 25)):
        start = utc(day.year, day.month, day.day)
        assert ticks("30 2 * * *", start, start + 86400) == [start + 2.5 * 3600]
        quarter = ticks("*/15 * * * *", start, start + 86400)
        assert quarter == [start + 900 * k for k in range(1, 97)]


def test_fixed_offset_zones_work() -> None:
    plus_5_30 = timezone(timedelta(hours=5, minutes=30))
    # 09:00 +05:30 = 03:30Z.
    assert nxt("0 9 * * *", utc(2026, 5, 4), plus_5_30) == utc(2026, 5, 4, 3, 30)


# ---------------------------------------------------------------- speed


# ---------------------------------------------------------------- random comparison

# Independent copy of the field layout, so the random test checks the parser
# as well as the search.
FIELDS = [("minute", 0, 59), ("hour", 0, 23), ("dom", 1, 31), ("month", 1, 12),
          ("dow", 0, 7), ("second", 0, 59)]
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def random_case(rng: random.Random, text: str) -> str:
    return "".join(ch.upper() if rng.random() < 0.5 else ch for ch in text)


def random_item(rng: random.Random, pos: int) -> tuple[str, set[int]]:
    _, low, high = FIELDS[pos]
    open_high = 6 if pos == 4 else high
    names = MONTHS if pos == 3 else DAYS if pos == 4 else None

    def spell(value: int) -> str:
        if names is not None and rng.random() < 0.4 and not (pos == 4 and value == 7):
            return random_case(rng, names[value - low])
        return str(value)

    kind = rng.choice(["number", "range", "star_step", "range_step", "start_step"])
    if kind == "number":
        value = rng.randint(low, high)
        return spell(value), {value}
    if kind == "star_step":
        step = rng.randint(1, open_high - low + 2)
        return f"*/{step}", set(range(low, open_high + 1, step))
    first = rng.randint(low, high)
    if kind == "start_step":
        step = rng.randint(1, open_high - low + 2)
        return f"{spell(first)}/{step}", set(range(first, max(first, open_high) + 1, step))
    last = rng.randint(first, high)
    if kind == "range":
        return f"{spell(first)}-{spell(last)}", set(range(first, last + 1))
    step = rng.randint(1, high - low + 2)
    return f"{spell(first)}-{spell(last)}/{step}", set(range(first, last + 1, step))


def random_field(rng: random.Random, pos: int) -> tuple[str, set[int]]:
    _, low, high = FIELDS[pos]
    roll = rng.random()
    star_chance = 0.55 if pos in (2, 3, 4) else 0.25
    if roll < star_chance:
        return "*", set(range(low, (6 if pos == 4 else high) + 1))
    count = 1 if roll < 0.85 else rng.randint(2, 3)
    texts, values = [], set()
    for _ in range(count):
        text, items = random_item(rng, pos)
        texts.append(text)
        values |= items
    if pos == 4 and 7 in values:
        values = (values - {7}) | {0}
    return ",".join(texts), values


def reference_matches(sets: list[set[int]], either: bool, wall: datetime) -> bool:
    minutes, hours, doms, months, dows, seconds = sets
    if wall.second not in seconds or wall.minute not in minutes or wall.hour not in hours:
        return False
    if wall.month not in months:
        return False
    dom_ok = wall.day in doms
    dow_ok = (wall.weekday() + 1) % 7 in dows
    return (dom_ok or dow_ok) if either else (dom_ok and dow_ok)


def reference_next_utc(sets: list[set[int]], either: bool, after: float, days: int) -> float | None:
    """Brute force over UTC wall times: every minute (and second) of the days
    from after's day for `days` more days, skipping only days and hours that
    fail the plain membership tests."""
    start = datetime.fromtimestamp(after // 1, UTC).replace(tzinfo=None)
    minutes, hours, doms, months, dows, seconds = sets
    for offset in range(days + 1):
        day = start.date() + timedelta(days=offset)
        if not reference_matches(sets, either, datetime(day.year, day.month, day.day,
                                                         min(hours), min(minutes), min(seconds))):
            continue
        for hour in range(24):
            if hour not in hours:
                continue
            for minute in range(60):
                if minute not in minutes:
                    continue
                for second in range(60):
                    if second not in seconds:
                        continue
                    wall = datetime(day.year, day.month, day.day, hour, minute, second)
                    if reference_matches(sets, either, wall):
                        instant = wall.replace(tzinfo=UTC).timestamp()
                        if instant > after:
                            return instant
    return None


def random_expression(rng: random.Random) -> tuple[str, list[set[int]], bool, bool]:
    """(text, value sets in minute..second order, either-day rule, never fires)."""
    six = rng.random() < 0.3
    texts, sets = [], []
    for pos in range(6 if six else 5):
        text, values = random_field(rng, pos)
        texts.append(text)
        sets.append(values)
    if not six:
        sets.append({0})
    either = not (texts[2].startswith("*") or texts[4].startswith("*"))
    longest = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}
    never = not either and min(sets[2]) > max(longest[m] for m in sets[3])
    return " ".join(texts), sets, either, never


def test_two_thousand_random_expressions_agree_with_brute_force() -> None:
    rng = random.Random(20260504)
    window_days = 3
    checked = 0
    for _ in range(2000):
        text, sets, either, never = random_expression(rng)
        if never:
            with pytest.raises(CronError, match="never fires"):
                _Cron.parse(text)
            continue
        cron = _Cron.parse(text)
        after = rng.uniform(utc(2020, 1, 1), utc(2030, 1, 1))
        if rng.random() < 0.3:
            after = float(int(after))  # whole seconds too
        for _ in range(3):
            probe = datetime.fromtimestamp(rng.uniform(utc(2020, 1, 1), utc(2030, 1, 1)) // 1, UTC)
            wall = probe.replace(tzinfo=None)
            assert cron.matches(wall) == reference_matches(sets, either, wall), (text, wall)
        expected = reference_next_utc(sets, either, after, window_days)
        got = cron.next_after(after, UTC)
        window_end = datetime.fromtimestamp(after // 1, UTC).replace(
            hour=0, minute=0, second=0) + timedelta(days=window_days + 1)
        if expected is None:
            assert got is None or got >= window_end.timestamp(), (text, after, got)
            if got is None:
                continue
            # Retry from shortly before the tick the search found, so the
            # brute force can confirm nothing earlier was missed.
            after = got - rng.uniform(1, 2 * 86400)
            expected = reference_next_utc(sets, either, after, window_days)
            got = cron.next_after(after, UTC)
            assert expected is not None
        assert got == expected, (text, after, got, expected)
        assert cron.matches(datetime.fromtimestamp(expected, UTC).replace(tzinfo=None))
        # Exactly at the tick, the next one is strictly later.
        again = cron.next_after(expected, UTC)
        assert again is None or again > expected
        ref_again = reference_next_utc(sets, either, expected, window_days)
        if ref_again is not None:
            assert again == ref_again, (text, expected, again, ref_again)
        checked += 1
    assert checked > 1900


def reference_ticks_local(
    sets: list[set[int]], either: bool, tz: tzinfo, day: date, start: float, end: float
) -> list[float]:
    """Brute force over one local day's wall minutes, mapped by the stated rules."""
    instants = []
    for minute_of_day in range(24 * 60):
        wall = datetime(day.year, day.month, day.day) + timedelta(minutes=minute_of_day)
        if not reference_matches(sets, either, wall):
            continue
        occurrences = sorted(
            t for t in (wall.replace(tzinfo=tz, fold=f).timestamp() for f in (0, 1))
            if datetime.fromtimestamp(t, tz).replace(tzinfo=None) == wall)
        if occurrences:
            instants.append(occurrences[0])  # repeated wall time: first pass
            continue
        # Skipped wall time: the first instant, scanning forward by minutes, whose
        # wall time is past this one (the gap ends on a whole minute in these zones).
        probe = min(wall.replace(tzinfo=tz, fold=f).timestamp() for f in (0, 1))
        while datetime.fromtimestamp(probe, tz).replace(tzinfo=None) <= wall:
            probe += 60
        while datetime.fromtimestamp(probe - 60, tz).replace(tzinfo=None) > wall:
            probe -= 60
        instants.append(probe)
    return sorted({t for t in instants if start < t <= end})


def test_random_five_field_expressions_on_transition_days_agree_with_brute_force() -> None:
    rng = random.Random(4242)
    days = [(BERLIN, date(2026, 3, 29)), (BERLIN, date(2026, 10, 25)),
            (NEW_YORK, date(2026, 3, 8)), (NEW_YORK, date(2026, 11, 1)),
            (LORD_HOWE, date(2026, 4, 5)), (LORD_HOWE, date(2026, 10, 4))]
    compared = 0
    while compared < 150:
        text, sets, either, never = random_expression(rng)
        if never or text.count(" ") != 4:
            continue
        cron = _Cron.parse(text)
        for tz, day in days:
            # The whole local day, (previous midnight, next midnight].
            start = at(tz, day.year, day.month, day.day) - 1
            following = day + timedelta(days=1)
            end = at(tz, following.year, following.month, following.day) - 1
            expected = reference_ticks_local(sets, either, tz, day, start, end)
            assert cron.ticks_between(start, end, tz, 5000) == expected, (text, tz, day)
            if expected:
                assert cron.next_after(start, tz) == expected[0]
        compared += 1
