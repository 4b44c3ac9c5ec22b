"""A process puts itself under SCHED_BATCH (or back to normal), every thread it has included;
and what `prepare_process` sets up in a service's process besides: the collector's thresholds.

Each case runs in a child interpreter: the test process keeps its own policy and collector.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from shared.serve import GC_THRESHOLDS

linux_only = pytest.mark.skipif(
    not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's; elsewhere it reports normal"
)


def run_child(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.split()


@linux_only
def test_batch_covers_threads_started_before_and_after_and_normal_undoes_it() -> None:
    seen = run_child(
        """
        import threading
        from shared.cpu import apply_cpu_scheduling, current_cpu_scheduling

        started = threading.Event()
        stop = threading.Event()

        def wait() -> None:
            started.set()
            stop.wait()

        before = threading.Thread(target=wait)
        before.start()
        started.wait()
        print(current_cpu_scheduling(), apply_cpu_scheduling("batch"))
        after = threading.Thread(target=stop.wait)
        after.start()
        print(current_cpu_scheduling(), current_cpu_scheduling(before.native_id),
              current_cpu_scheduling(after.native_id))
        print(apply_cpu_scheduling("normal"), current_cpu_scheduling(before.native_id))
        stop.set()
        """
    )
    assert seen == ["normal", "batch", "batch", "batch", "batch", "normal", "normal"]


@linux_only
def test_children_inherit_it() -> None:
    seen = run_child(
        """
        import subprocess, sys
        from shared.cpu import apply_cpu_scheduling

        apply_cpu_scheduling("batch")
        subprocess.run([sys.executable, "-c",
                        "from shared.cpu import current_cpu_scheduling as c; print(c())"])
        """
    )
    assert seen == ["batch"]


@linux_only
def test_the_setting_defaults_to_batch_and_refuses_other_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    monkeypatch.delenv("NEWSFLOW_CPU_SCHEDULING", raising=False)  # the default, whatever the shell

    from shared.settings import NewsflowSettings

    assert NewsflowSettings().cpu_scheduling == "batch"
    assert NewsflowSettings(cpu_scheduling="normal").cpu_scheduling == "normal"
    with pytest.raises(ValidationError, match="cpu_scheduling"):
        NewsflowSettings(cpu_scheduling="realtime")


def test_a_service_process_collects_young_objects_every_10000_allocations() -> None:
    numbers = run_child(
        """
        import gc
        from shared.serve import prepare_process
        from shared.settings import NewsflowSettings

        before = gc.get_threshold()
        prepare_process(NewsflowSettings(cpu_scheduling="normal", log_format="json"))
        print(*before, *gc.get_threshold())
        """
    )
    assert numbers[:3] == ["700", "10", "10"]  # the interpreter's own, for contrast
    assert tuple(int(n) for n in numbers[3:]) == GC_THRESHOLDS == (10_000, 10, 10)
