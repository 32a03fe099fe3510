"""`simulator.stopping`: stop signals recorded, not raised, until the work reaches a point where it can stop."""
import signal
import threading

import pytest

from simulator.stopping import Stopped, check, stop_requests


class Guard(Exception):
    """Raised by the handler these tests put in place, so that a signal left unhandled fails the test only."""


def _guard(signum, frame):
    raise Guard(signum)


@pytest.fixture
def guarded():
    """SIGINT and SIGTERM raise `Guard` (not pytest's KeyboardInterrupt, nor SIGTERM's death)."""
    before = {sig: signal.signal(sig, _guard) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_a_signal_is_recorded_and_raised_at_the_next_check(guarded):
    with stop_requests() as caught:
        check()  # nothing yet
        signal.raise_signal(signal.SIGTERM)
        assert caught == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is _guard  # the first puts the previous handlers back...
        with pytest.raises(Guard):
            signal.raise_signal(signal.SIGINT)  # ...so that a second acts as before: at once
        with pytest.raises(Stopped, match="stopped by SIGTERM") as stop:
            check()
    assert stop.value.exit_status == 143 and isinstance(stop.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGINT) is _guard
    check()  # outside: a no-op


def test_nested_requests_share_one_record_and_the_handlers_come_back(guarded):
    with stop_requests() as outer:
        with stop_requests() as inner:
            assert inner is outer
        assert signal.getsignal(signal.SIGINT) is not _guard  # the inner one did not restore them
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(Stopped, match="SIGINT") as stop:
            check()
        assert stop.value.exit_status == 130
    assert signal.getsignal(signal.SIGINT) is _guard and signal.getsignal(signal.SIGTERM) is _guard


def test_an_ignored_signal_stays_ignored_and_disabled_requests_record_nothing(guarded):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job inherits it
    with stop_requests() as caught:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)
        check()
        assert caught == []
    with stop_requests(enabled=False) as caught:
        with pytest.raises(Guard):
            signal.raise_signal(signal.SIGTERM)
        assert caught == []


def test_outside_the_main_thread_nothing_is_installed(guarded):
    seen = {}

    def run():
        with stop_requests() as caught:
            seen["handler"], seen["caught"] = signal.getsignal(signal.SIGTERM), caught
    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == {"handler": _guard, "caught": []}


def test_a_signal_after_the_last_check_lets_the_work_complete_and_says_so(guarded, capsys):
    with stop_requests():
        check()  # the last point where the work could stop
        signal.raise_signal(signal.SIGTERM)  # while the final output is written
    assert capsys.readouterr().err.strip() == "SIGTERM came after the last point where the work could stop: it completed"
    assert signal.getsignal(signal.SIGTERM) is _guard
    with stop_requests():
        pass
    with stop_requests() as caught:  # a command that stopped, caught its Stopped and returned its status
        signal.raise_signal(signal.SIGINT)
        try:
            check()
        except Stopped:
            pass
        assert caught == [signal.SIGINT]
    assert capsys.readouterr().err == ""
