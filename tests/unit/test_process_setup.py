"""What `prepare_process` sets up in a service's process: the cyclic collector's thresholds.

Runs in a child interpreter: the test process keeps its own collector settings.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from shared.serve import GC_THRESHOLDS


def test_a_service_process_collects_young_objects_every_10000_allocations() -> None:
    code = """
        import gc
        from shared.serve import prepare_process
        from shared.settings import NewsflowSettings

        before = gc.get_threshold()
        prepare_process(NewsflowSettings(cpu_scheduling="normal", log_format="json"))
        print(*before, *gc.get_threshold())
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    numbers = [int(n) for n in done.stdout.split()]
    assert numbers[:3] == [700, 10, 10]  # the interpreter's own, for contrast
    assert tuple(numbers[3:]) == GC_THRESHOLDS == (10_000, 10, 10)
