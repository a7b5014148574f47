"""Time to x on a build's timeline: linear, except that long agent-down gaps become
fixed-width breaks (drawn "not to scale"), so the steps around them stay readable."""

from __future__ import annotations

import math
from dataclasses import dataclass

BREAK_W = 36  # pixels of a shortened gap


@dataclass
class _Break:
    start: float
    end: float
    x: float = 0.0


class Scale:
    """Seconds to pixels; long agent-down gaps become fixed-width breaks."""

    def __init__(self, t0: float, t1: float, x0: float, x1: float, gaps: list[tuple[float, float]]):
        self.t0, self.t1 = t0, max(t1, t0 + 1e-3)
        self.x0, self.x1 = x0, x1
        total = self.t1 - self.t0
        candidates = [
            _Break(a, b)
            for a, b in sorted(gaps)
            if b - a > max(0.25 * total, 10.0) and t0 <= a < b <= self.t1
        ]
        visible = total - sum(g.end - g.start for g in candidates)
        room = (x1 - x0) - BREAK_W * len(candidates)
        self.per_second = room / max(visible, 1e-6)
        # Each break's x is placed by the breaks before it, which are already in.
        self.breaks: list[_Break] = []
        for gap in candidates:
            gap.x = self._linear(gap.start)
            self.breaks.append(gap)

    def _linear(self, ts: float) -> float:
        x, last = self.x0, self.t0
        for gap in self.breaks:
            if ts >= gap.start:
                x += (gap.start - last) * self.per_second + BREAK_W
                last = gap.end
        return x + (max(ts, last) - last) * self.per_second

    def x(self, ts: float) -> float:
        ts = min(max(ts, self.t0), self.t1)
        for gap in self.breaks:
            if gap.start <= ts <= gap.end:
                return gap.x + (ts - gap.start) / (gap.end - gap.start) * BREAK_W
        return min(self._linear(ts), self.x1)

    def ticks(self) -> list[float]:
        visible = (self.x1 - self.x0 - BREAK_W * len(self.breaks)) / self.per_second
        raw = visible / 8
        magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
        step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
        out: list[float] = []
        last_x = -1e9
        n = 0
        while True:
            ts = self.t0 + n * step
            n += 1
            if ts > self.t1 + 1e-9:
                break
            if any(g.start < ts < g.end for g in self.breaks):
                continue
            x = self.x(ts)
            if x - last_x >= 48:
                out.append(ts)
                last_x = x
        return out


__all__ = ["BREAK_W", "Scale"]
