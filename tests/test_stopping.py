"""`simulator.stopping`: stop signals recorded, not raised, until the work reaches a point where it can stop."""
import multiprocessing
import signal
import threading
import time

import pytest

from simulator.stopping import Stopped, StoppedAtOnce, check, command, stop_requests


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


def test_a_second_sigint_stops_at_once_as_a_stop(guarded):
    """Python's own SIGINT handler (a KeyboardInterrupt) acts on the second SIGINT as a `Stopped`, which the
    commands turn into one line and status 130 instead of a traceback; other handlers are put back as they were."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with stop_requests() as caught:
        signal.raise_signal(signal.SIGINT)
        assert caught == [signal.SIGINT] and signal.getsignal(signal.SIGTERM) is _guard
        with pytest.raises(StoppedAtOnce, match="^stopped at once by a second SIGINT$") as stop:
            signal.raise_signal(signal.SIGINT)
        assert stop.value.exit_status == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_sigint_ends_the_worker_processes(guarded):
    """Workers ignore SIGINT: the second one ends them, else a process pool whose shutdown the stop cut off
    waits for them for ever (`simulate --workers 2` hung so)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    worker = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,))
    worker.start()
    try:
        with stop_requests():
            signal.raise_signal(signal.SIGINT)
            assert worker.is_alive()  # the first one only records
            with pytest.raises(Stopped):
                signal.raise_signal(signal.SIGINT)
        worker.join(10)
        assert worker.exitcode == -signal.SIGTERM
    finally:
        worker.kill()


def _two_sigints(*args, **kwargs):
    signal.raise_signal(signal.SIGINT)  # recorded: the work would go on to its next check
    signal.raise_signal(signal.SIGINT)  # stops it at once
    raise AssertionError("not stopped")


@pytest.mark.parametrize("command", ["simulate", "photometry", "rcnn train", "rcnn evaluate"])
def test_a_second_ctrl_c_ends_a_command_in_one_line(command, guarded, monkeypatch, tmp_path, capsys):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if command == "simulate":
        import simulator.cli as cli
        import simulator.run as target

        name, argv, said = "simulate", ["--out", str(tmp_path / "d.h5"), "--no-progress"], (
            f"; 0 finished shards kept in {tmp_path / 'd.h5'}.parts: rerun the same command to go on")
    elif command == "photometry":
        import photometry.cli as cli
        import photometry.dataset as target

        name, argv, said = "run_photometry", [str(tmp_path / "d.h5")], (
            f"; the objects measured so far are kept in {tmp_path / 'd.h5'}.photometry-tmp: rerun the same command")
    else:
        import rcnn.cli as cli

        sub_command = command.split()[1]
        target = __import__(f"rcnn.{sub_command}", fromlist=["_"])
        name = sub_command
        argv = [sub_command, *(["DATA.h5", "--model", "lc", "--out", "RUN"] if sub_command == "train" else
                               ["RUN", "--data", "DATA.h5", "--out", "OUT"])]
        said = "; rerun the same command to go on from the last step saved" if sub_command == "train" else ""
    monkeypatch.setattr(target, name, _two_sigints)
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert err.startswith(f"{command}: stopped at once by a second SIGINT{said}") and err.count("\n") == 1, err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_before_the_stop_handling_is_one_line_on_the_command_line(capsys):
    """A Ctrl-C while a command imports its libraries (before `stop_requests`: seconds for JAX) gave a
    traceback of the import machinery."""
    @command("prog")
    def main(argv=None):
        raise KeyboardInterrupt

    assert main() == 130 and capsys.readouterr().err == "prog: stopped by SIGINT\n"
    with pytest.raises(KeyboardInterrupt):  # an API call: Python's exception
        main(["--flag"])
    import photometry.cli
    import rcnn.cli
    import simulator.cli
    import simulator.templates

    for cli in (photometry.cli, rcnn.cli, simulator.cli, simulator.templates):
        assert cli.main.__wrapped__.__name__ == "main", cli  # every command's main is wrapped


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
