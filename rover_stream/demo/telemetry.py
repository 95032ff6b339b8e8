"""The rover's telemetry: a small simulation that is a pure function of time.

The rover lives on a sped-up Mars: a sol lasts :data:`SOL_SECONDS` of wall time (20 minutes), so a visitor
sees night, dawn charging, a day of driving with a sampling stop, and dusk. Every :data:`TICK` seconds of
wall time is one reading, numbered ``tick = floor(unix_time / TICK)``; :func:`reading` gives the reading of
any tick, for any process on any host, without shared state:

* the daily plan is fixed: asleep at night, charging after dawn, driving, a sampling stop, driving again,
  idle at dusk; the distance driven is the driving time so far times the speed, and the rover follows a
  closed loop of waypoints around a crater rim, so its position comes from the distance alone;
* the sun's elevation follows the time of sol; solar power follows the sun (and a slowly varying dust
  factor); the battery integrates the power balance over the sol (a profile computed once), so it drains
  while driving and at night and charges in sunlight;
* the temperature follows the sun with a lag of about two hours, plus the electronics' heat while driving,
  plus a smooth deterministic wobble (not random noise).

Since every process computes the same reading for the same tick, several workers (and a restarted server)
show the same rover; the producer publishes each tick once per deployment, and can re-publish the ticks a
restart missed.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache
from typing import Any

TICK = 2.0
SOL_SECONDS = 1200.0
TICKS_PER_SOL = int(SOL_SECONDS / TICK)
#: Sol 0 (landing) begins at this Unix time (2026-11-01T00:00:00Z).
EPOCH = 1793491200.0
SPEED = 0.3  # metres per second while driving (the time is sped up too)
#: The daily plan: (start, end, status) as fractions of a sol; midnight is 0.
PLAN = (
    (0.00, 0.25, "sleeping"),
    (0.25, 0.38, "charging"),
    (0.38, 0.47, "driving"),
    (0.47, 0.55, "sampling"),
    (0.55, 0.64, "driving"),
    (0.64, 0.80, "idle"),
    (0.80, 1.00, "sleeping"),
)
DRIVING_PER_SOL = sum(end - start for start, end, status in PLAN if status == "driving")
#: Waypoints (metres, east and north of the landing site) of the loop the rover drives, around a crater.
WAYPOINTS = ((0.0, 0.0), (60.0, 25.0), (130.0, 20.0), (185.0, 70.0), (170.0, 150.0), (95.0, 185.0),
             (25.0, 160.0), (-20.0, 95.0))
LANDING = (-4.5895, 137.4417)  # latitude, longitude (Gale crater)
METRES_PER_DEGREE = 2 * math.pi * 3_389_500 / 360
BATTERY_CAPACITY_WH = 1200.0
PANEL_PEAK_W = 200.0
#: Power drawn (W) in each state: driving draws more than the panels give even at noon.
DRAW_W = {"sleeping": 15.0, "charging": 15.0, "driving": 190.0, "sampling": 60.0, "idle": 30.0}


def _legs() -> tuple[list[tuple[float, float, float, float, float]], float]:
    legs, total = [], 0.0
    for i, (x0, y0) in enumerate(WAYPOINTS):
        x1, y1 = WAYPOINTS[(i + 1) % len(WAYPOINTS)]
        length = math.hypot(x1 - x0, y1 - y0)
        legs.append((total, length, x0, y0, math.atan2(x1 - x0, y1 - y0)))
        total += length
    return legs, total


LEGS, LOOP_METRES = _legs()


def status_at(fraction: float) -> str:
    for start, end, status in PLAN:
        if start <= fraction < end:
            return status
    return "sleeping"


def driving_fraction_before(fraction: float) -> float:
    """Fraction of a sol spent driving between midnight and ``fraction``."""
    return sum(max(0.0, min(end, fraction) - start) for start, end, status in PLAN if status == "driving")


def sun_elevation(fraction: float) -> float:
    """Degrees above the horizon: sunrise at 0.25, noon at 0.5, sunset at 0.75."""
    return 75.0 * math.sin(2 * math.pi * (fraction - 0.25))


def dust_factor(sol: int) -> float:
    """Dust on the panels: slowly varying, cleaned now and then by wind (deterministic)."""
    return 0.82 + 0.12 * math.cos(sol / 9.0) + 0.04 * math.sin(sol / 2.3)


def solar_power(fraction: float, sol: int) -> float:
    return max(0.0, math.sin(math.radians(sun_elevation(fraction)))) * PANEL_PEAK_W * dust_factor(sol)


#: Seconds of Mars time per tick: the sol is sped up from 88,775 s to SOL_SECONDS.
MARS_SECONDS_PER_TICK = TICK * 88775.0 / SOL_SECONDS


def _battery_start(sol: int) -> float:
    return 64.0 + 8.0 * math.sin(sol / 5.0)


@lru_cache(maxsize=8)
def battery_profile(sol: int) -> tuple[float, ...]:
    """The battery level (%) at each tick of ``sol``: the power balance integrated over the sol. What the
    balance leaves over or short at the end of the sol is spread evenly over it (the heaters' and the
    radioisotope generator's share), so the level is continuous from one sol to the next."""
    levels, level = [], 0.0
    for i in range(TICKS_PER_SOL):
        fraction = i / TICKS_PER_SOL
        levels.append(level)
        net = solar_power(fraction, sol) - DRAW_W[status_at(fraction)]
        level += net * MARS_SECONDS_PER_TICK / 3600.0 / BATTERY_CAPACITY_WH * 100.0
    start, end = _battery_start(sol), _battery_start(sol + 1)
    correction = (end - start - level) / TICKS_PER_SOL
    return tuple(min(100.0, max(2.0, start + v + correction * i)) for i, v in enumerate(levels))


def position(distance: float) -> tuple[float, float, float]:
    """x, y (metres) and heading (degrees from north) after driving ``distance`` metres around the loop."""
    d = distance % LOOP_METRES
    for start, length, x0, y0, heading in reversed(LEGS):
        if d >= start:
            t = (d - start) / length
            x1, y1 = x0 + length * math.sin(heading), y0 + length * math.cos(heading)
            return x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, math.degrees(heading) % 360
    return WAYPOINTS[0][0], WAYPOINTS[0][1], 0.0


def waypoint(distance: float) -> int:
    d = distance % LOOP_METRES
    return max(i for i, leg in enumerate(LEGS) if d >= leg[0])


def current_tick(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // TICK)


def reading(tick: int) -> dict[str, Any]:
    """The telemetry of ``tick`` (the same in every process)."""
    t = tick * TICK
    since = t - EPOCH
    sol = int(since // SOL_SECONDS)
    fraction = (since % SOL_SECONDS) / SOL_SECONDS
    status = status_at(fraction)
    driven = (sol * DRIVING_PER_SOL + driving_fraction_before(fraction)) * SOL_SECONDS * SPEED
    x, y, heading = position(driven)
    elevation = sun_elevation(fraction)
    solar = solar_power(fraction, sol)
    # Ground temperature: follows the sun about two hours (1/12 sol) late; electronics warm up when driving.
    lagged = sun_elevation(fraction - 1 / 12)
    wobble = 1.5 * math.sin(tick / 7.0) + 0.8 * math.sin(tick / 2.9)
    temperature = -62.0 + 0.55 * max(-20.0, lagged) + (6.0 if status == "driving" else 0.0) + wobble
    minutes = int(fraction * 24 * 60)
    # The light time from Mars to Earth swings between about 4 and 22 minutes over the synodic period.
    delay = 780.0 + 540.0 * math.cos(2 * math.pi * since / (780 * 86400.0))
    return {
        "tick": tick,
        "time": t,
        "sol": sol,
        "local_solar_time": f"{minutes // 60:02d}:{minutes % 60:02d}",
        "sun_elevation_deg": round(elevation, 1),
        "location": {
            "x_m": round(x, 2),
            "y_m": round(y, 2),
            "lat": round(LANDING[0] + y / METRES_PER_DEGREE, 6),
            "lon": round(LANDING[1] + x / (METRES_PER_DEGREE * math.cos(math.radians(LANDING[0]))), 6),
        },
        "heading_deg": round(heading, 1),
        "speed_mps": SPEED if status == "driving" else 0.0,
        "odometer_m": round(driven, 1),
        "battery_level": round(battery_profile(sol)[int(fraction * TICKS_PER_SOL)], 2),
        "solar_power_w": round(solar, 1),
        "power_draw_w": DRAW_W[status],
        "temperature_c": round(temperature, 1),
        "status": status,
        "waypoint": waypoint(driven),
        "signal_delay_s": round(delay, 1),
    }


def recent(count: int, now: float | None = None) -> list[dict[str, Any]]:
    """The last ``count`` readings up to now, oldest first."""
    last = current_tick(now)
    return [reading(tick) for tick in range(last - count + 1, last + 1)]
