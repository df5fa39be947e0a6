"""The per-stage time breakdown (harness/timings.py): exclusive time per stage, the rest as `other`."""
import pytest

from harness import timings
from harness.timings import StageClock


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def t(monkeypatch):
    """The clock's time, moved by hand."""
    fake = FakeTime()
    monkeypatch.setattr(timings.time, "perf_counter", fake)
    return fake


def test_a_nested_stage_pauses_the_outer_one_and_the_stages_add_up(t):
    clock = StageClock()
    with clock("prepare"):
        t.now += 2.0
    with clock("scoring"):          # scoring 1 s, then it starts its engine (5 s), then scores 3 s more
        t.now += 1.0
        with clock("engine_start"):
            t.now += 5.0
        t.now += 3.0
    with clock("scoring"):          # a second dataset: 0.5 s
        t.now += 0.5
    b = clock.breakdown(wall_s=15.0)
    assert b["stages"] == {"prepare": 2.0, "quantize": 0.0, "engine_start": 5.0, "scoring": 4.5, "judging": 0.0,
                           "report": 0.0}
    assert b["other_s"] == 3.5 and b["wall_s"] == 15.0  # 15 - (2 + 5 + 4.5)


def test_an_open_stage_counts_up_to_now_and_an_unknown_stage_is_refused(t):
    clock = StageClock()
    with clock("report"):
        t.now += 1.25
        assert clock.breakdown(wall_s=2.0)["stages"]["report"] == 1.25
    with pytest.raises(ValueError, match="unknown stage 'warmup'"):
        with clock("warmup"):
            pass


def test_the_line_and_the_table_say_each_stage():
    b = {"stages": {"prepare": 1.0, "quantize": 0.0, "engine_start": 30.0, "scoring": 8.0, "judging": 0.5,
                    "report": 0.5}, "other_s": 10.0, "wall_s": 50.0}
    assert timings.line(b) == ("time: prepare 1.0 s, quantize 0.0 s, engine start 30.0 s, scoring 8.0 s, judging "
                               "0.5 s, report 0.5 s, other 10.0 s; 50.0 s in all")
    rows = timings.table(b).splitlines()
    assert rows[0].split("|")[1:4] == [" stage        ", "   seconds ", "   share "]
    assert "| engine start |     30.00 |     60% |" in rows  # 30 of 50 s
    assert rows[-1] == "| **wall**     |     50.00 |    100% |"


def test_work_beside_a_stage_is_shown_but_not_summed(t):
    """The data prepared in another process (6 s) while the engine started here (10 s), then 0.5 s waited for it:
    prepare 0.5 s here, engine start 10 s, other 1.5 of 12 s; the 6 s are shown beside, not in the sum."""
    clock = StageClock()
    with clock("engine_start"):
        t.now += 10.0
    with clock("prepare"):
        t.now += 0.5
    clock.beside("prepare", 6.0, "engine_start")
    b = clock.breakdown(wall_s=12.0)
    assert b["stages"]["prepare"] == 0.5 and b["stages"]["engine_start"] == 10.0 and b["other_s"] == 1.5
    assert b["beside"] == {"prepare": {"seconds": 6.0, "during": "engine_start"}}
    assert timings.line(b).startswith("time: prepare 0.5 s (+6.0 s beside engine start), quantize 0.0 s, engine "
                                      "start 10.0 s")
    rows = timings.table(b).splitlines()
    assert rows[-2].startswith("| **wall**") and rows[-1].split("|")[1:3] == [
        " prepare, beside engine start ", "    (6.00) "]
    with pytest.raises(ValueError, match="unknown stage"):
        clock.beside("prepare", 1.0, "warmup")
