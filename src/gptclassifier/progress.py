"""What a long job reports as it goes: the seconds of each phase, and lines for a log."""

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm


class Phases:
    """Seconds spent in each named phase, in the order the phases first ran."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        """Add the time spent inside the `with` block to phase `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        """Return the phases on one line, e.g. `model 1.2 s, training 20.4 s`."""
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.seconds.items())


def silent(line: str) -> None:
    """Take a log line and show it nowhere: the log of a job that is asked for none."""


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "it") -> tqdm:
    """Return a bar that counts to `total`: off when not `enabled` or not on a terminal."""
    # disable=None is tqdm's own test: no bar when standard error is not a terminal (a log, CI).
    return tqdm(total=total, desc=desc, unit=unit, disable=None if enabled else True, leave=False)


def ticking(items: Iterable, bar: tqdm) -> Iterator:
    """Yield each item, then move `bar` one step: a loader counted without being wrapped."""
    for item in items:
        yield item
        bar.update()
