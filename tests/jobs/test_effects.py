import pytest

from jobs.effects import already_done, effect_once, external_effect
from jobs.models import Effect

pytestmark = pytest.mark.django_db


def test_database_effect_happens_once_however_often_it_runs():
    made = []
    for _ in range(3):
        with effect_once("invoice:1") as first:
            if first:
                made.append("invoice")
    assert made == ["invoice"]
    assert Effect.objects.filter(key="invoice:1").count() == 1


def test_failed_effect_is_not_recorded_and_runs_again():
    with pytest.raises(RuntimeError):
        with effect_once("invoice:2") as first:
            assert first
            raise RuntimeError("disk full")
    assert not already_done("invoice:2")
    with effect_once("invoice:2") as first:
        assert first


def test_external_effect_is_skipped_once_marked_sent():
    sent = []
    assert external_effect("mail:1", lambda: sent.append(1)) == (True, None)
    assert external_effect("mail:1", lambda: sent.append(2)) == (False, None)
    assert sent == [1]


def test_external_effect_that_raises_is_not_marked():
    def fail():
        raise ConnectionError("smtp down")

    with pytest.raises(ConnectionError):
        external_effect("mail:2", fail)
    assert not already_done("mail:2")
