"""Cleanup: reverse order, every release attempted, failures reported, scopes release early."""

import pytest

from bakery.cleanup import Cleanup, ReleaseError


def test_releases_run_in_reverse_and_go_on_past_a_failure():
    done, log = [], []
    cleanup = Cleanup(log.append)
    cleanup.push("first", lambda: done.append("first"))
    cleanup.push("broken", lambda: 1 / 0)
    cleanup.push("third", lambda: done.append("third"))
    cleanup.run()
    assert done == ["third", "first"]
    assert cleanup.leftovers == ["broken: division by zero"]
    assert log == ["cleanup FAILED: broken: division by zero"]
    cleanup.run()  # nothing twice
    assert done == ["third", "first"]


def test_a_scope_releases_its_own_resources_when_it_ends():
    done = []
    cleanup = Cleanup(lambda _: None)
    cleanup.push("outer", lambda: done.append("outer"))
    with cleanup.scope():
        cleanup.push("inner", lambda: done.append("inner"))
    assert done == ["inner"]
    cleanup.run()
    assert done == ["inner", "outer"]


def test_a_scope_releases_on_error_and_keeps_the_first_error():
    done = []
    cleanup = Cleanup(lambda _: None)
    with pytest.raises(KeyError), cleanup.scope():
        cleanup.push("inner", lambda: done.append("inner"))
        raise KeyError("the step failed")
    assert done == ["inner"]


def test_a_failed_release_in_a_scope_is_an_error():
    cleanup = Cleanup(lambda _: None)
    with pytest.raises(ReleaseError, match="could not release: mount /x: busy"), cleanup.scope():
        cleanup.push("mount /x", lambda: (_ for _ in ()).throw(OSError("busy")))
    assert cleanup.leftovers == ["mount /x: busy"]


def test_a_failed_release_never_hides_the_error_that_started_the_unwinding():
    cleanup = Cleanup(lambda _: None)
    with pytest.raises(KeyError), cleanup.scope():
        cleanup.push("mount /x", lambda: (_ for _ in ()).throw(OSError("busy")))
        raise KeyError("the step failed")
    assert cleanup.leftovers == ["mount /x: busy"]


def test_an_interrupt_during_a_create_call_waits_until_the_call_returned():
    import os
    import signal

    from bakery.cleanup import Terminated, interrupts_deferred

    made = []
    with pytest.raises(KeyboardInterrupt) as caught, interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the "call"
        made.append("server")  # the call still returns what it made
    assert made == ["server"] and not isinstance(caught.value, Terminated)
    with pytest.raises(Terminated), interrupts_deferred():
        os.kill(os.getpid(), signal.SIGTERM)
    # Outside the block, the usual handlers are back.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_cleanup_is_not_cut_short_by_a_second_interrupt():
    import os
    import signal

    from bakery.cleanup import shielded_from_interrupts

    done = []
    with shielded_from_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("released")
    assert done == ["released"]
