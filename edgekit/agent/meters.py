"""Energy per inference from the device's own meters, an external meter, a labelled estimate, or an honest
"unavailable". Runs on the device: standard library only, Python >= 3.9.

Why: a missing sensor must never look like a measurement. The meter is picked automatically and named in
the result, an unreadable or frozen sensor is reported as such (never 0 mJ), every figure carries an error
bar, and the idle draw of the device is measured and subtracted so the figure is the workload's own.

This module is the meter: it takes the sensor that ``sensors.py`` found (on a GPU run the GPU board's NVML
energy first; then RAPL, a Jetson's INA3221, the Raspberry Pi 5 PMIC, hwmon or an external meter command, in
that order of preference), reads or samples
it around the timed window, integrates, subtracts the idle draw and attaches the error bars below.

Why hand-written: no maintained library reads these power sensors, or measures a window with them, on a
device that has the standard library only; and the rules below (what is subtracted, how each error bar is
bounded, when a figure is refused) are this benchmark's contract with the host.

With no readable source, a ``power_model`` from the device profile gives a result with status
``estimated`` (source ``power-model``), never ``measured``.

How a window is measured: counters (rapl, hwmon energy, external J) are read in ``start()`` and ``stop()``
and the window's time is taken at the middle of each read. Power sources are sampled by a background
thread every ``interval_s`` (plus one read in ``start()`` before, and one in ``stop()`` after, the timed
region so the window is always covered); the samples (perf_counter time, W) are integrated with the
trapezoid rule over exactly [t_start, t_stop], interpolating linearly at the edges (holding the nearest
sample where the edge is not bracketed), so samples outside the window do not count.

Idle baseline: ``measure_idle(seconds)`` measures the mean power P_idle while this process sleeps, just
before the workload. Then, for a window of T seconds, N inferences and window energy E:

- ``energy_total_mj_per_inference`` = E / N (gross: everything the sensor's domain drew);
- ``energy_mj_per_inference`` = (E - P_idle * T) / N (the workload's energy above idle); ``None`` when
  the idle baseline could not be measured (the gross figure is still given). If it comes out <= 0 the
  value is kept (a real measurement can fall within noise) and the status is
  ``measured: within idle noise (...)``, so it cannot be mistaken for a clean figure.

Error bar ``energy_error_mj`` (per inference, on ``energy_mj_per_inference``; ``energy_total_error_mj``
is the same without the idle term, on the gross figure). With P = E / T the window's mean power:

- counters: (P * tau + 2 * r) / N, where tau is the counter's update interval (RAPL ~1 ms; hwmon
  ``update_interval`` or 1 ms assumed; an external meter: the longest read call) and r its resolution
  (1 uJ per sysfs counter; the printed precision of an external meter): each read can be up to one update
  stale, which bounds the window's error by one interval of energy, and each read rounds to r.
- sampled power: (P * dt + SE(P) * T) / N, where dt is the effective sampling interval (the largest of the
  configured interval, the sensor's own update interval and the observed spacing of samples) and SE(P)
  = stdev(window samples) / sqrt(n) the standard error of the samples' mean: the first term bounds the
  edge error (a power step at the window's edge can be missed by up to one interval), the second the
  error of estimating the mean power from n samples (samples are correlated, so it is a floor).
- idle subtraction adds sigma_idle * T / N, with sigma_idle the idle mean's error: SE of the idle samples
  for sampled power, (P_idle * tau + 2 * r) / T_idle for counters.

A window shorter than 10 sampling (or update) intervals is flagged in ``note`` as too short to trust.

Interface used by the agent::

    meter = open_meter(config)   # None: disabled
    meter.measure_idle()         # before the timed loop (config idle_seconds, default 0.5 s)
    meter.start(); <timed loop>; meter.stop()
    meter.result(iterations)     # dict, see RESULT_KEYS

Any failure of a sensor during idle, start or stop becomes an ``unavailable: reading X failed: ...``
result (idle: a note), never an exception out of the meter.
"""

from __future__ import annotations

import bisect
import math
import statistics
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    from .sensors import COMMAND_TIMEOUT_S, CounterError, CounterSensor, PowerSensor, Sensor, find_sensor
else:
    # Not "if __package__": Python 3.9's zipimport runs a module before it sets __package__, so inside the
    # device zipapp that test sent the agent to the branch below and every run failed on "No module named
    # 'sensors'". Relative imports still resolve there (from __name__).
    try:
        from .sensors import COMMAND_TIMEOUT_S, CounterError, CounterSensor, PowerSensor, Sensor, find_sensor
    except ImportError:  # meters.py imported on its own, with this directory on sys.path (a test does so)
        from sensors import COMMAND_TIMEOUT_S, CounterError, CounterSensor, PowerSensor, Sensor, find_sensor

# ---- configuration ----------------------------------------------------------------------------------

DEFAULTS: Dict[str, Any] = {
    "sysfs_root": "/",
    "vcgencmd": "vcgencmd",  # a name looked up on PATH, a path, or None to skip the Pi 5 PMIC
    "external": None,  # argv list of an external meter command, or None
    "interval_s": 0.05,  # sampling interval of power sources
    "power_model": None,  # {"idle_w": float, "active_w": float} from the device profile, or None
    "idle_seconds": 0.5,  # default length of measure_idle()
    "command_timeout_s": COMMAND_TIMEOUT_S,  # per call of vcgencmd or the external command
    "accelerator": None,  # the run's accelerator ("cuda"): the GPU board's NVML energy is tried first
}
ACCELERATORS = ("cuda",)
RESULT_KEYS = (
    "status", "source", "energy_mj_per_inference", "energy_total_mj_per_inference", "energy_error_mj",
    "energy_total_error_mj", "idle_power_mw", "active_power_mw", "window_s", "samples", "interval_s", "note",
)
SHORT_WINDOW_INTERVALS = 10  # a window shorter than this many sampling intervals is flagged

NOTES = {
    "rapl": "CPU package energy (everything the package did meanwhile)",
    "jetson-ina3221": "Jetson module input power (sum of everything on the module; the carrier board is "
                      "not included where it has its own rail)",
    "pi5-pmic": "sum of the Pi 5 PMIC's rail powers (SoC, memory, IO); PMIC conversion losses and 5 V "
                "peripherals are not included, so this is below the board's input power",
    "hwmon": "energy of the sensor's whole domain",
    "external": "external meter's reading (its whole scope)",
    "nvml": "the NVIDIA GPU board's energy from NVML (the GPU, its memory and board; the host CPU, host memory "
            "and the rest of the machine are not included)",
}


def check_config(config: Any) -> dict:
    """The config with defaults filled in; ValueError naming the bad key for anything malformed."""
    if not isinstance(config, dict):
        raise ValueError(f"energy config must be a dict or None, got {config!r}")
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown energy config key(s) {unknown}; known: {sorted(DEFAULTS)}")
    cfg = dict(DEFAULTS)
    cfg.update(config)
    if not isinstance(cfg["sysfs_root"], str) or not cfg["sysfs_root"]:
        raise ValueError(f"energy config 'sysfs_root' must be a non-empty string, got {cfg['sysfs_root']!r}")
    if cfg["vcgencmd"] is not None and (not isinstance(cfg["vcgencmd"], str) or not cfg["vcgencmd"]):
        raise ValueError(f"energy config 'vcgencmd' must be a command name, a path or null, got {cfg['vcgencmd']!r}")
    ext = cfg["external"]
    if ext is not None and (not isinstance(ext, list) or not ext or not all(isinstance(a, str) and a for a in ext)):
        raise ValueError(f"energy config 'external' must be null or a non-empty argv list of strings, got {ext!r}")
    if cfg["accelerator"] is not None and cfg["accelerator"] not in ACCELERATORS:
        raise ValueError(f"energy config 'accelerator' must be null or one of {list(ACCELERATORS)}, "
                         f"got {cfg['accelerator']!r}")
    _check_number(cfg, "interval_s", 1e-3, 10.0)
    _check_number(cfg, "idle_seconds", 0.0, 600.0)
    _check_number(cfg, "command_timeout_s", 1e-3, 600.0)
    model = cfg["power_model"]
    if model is not None:
        if not isinstance(model, dict):
            raise ValueError(f"energy config 'power_model' must be null or a dict, got {model!r}")
        for key in ("idle_w", "active_w"):
            _check_number(model, key, 0.0, 1e6, where="power_model.")
        if model["active_w"] < model["idle_w"]:
            raise ValueError(f"energy config power_model: active_w ({model['active_w']}) < idle_w ({model['idle_w']})")
    return cfg


def _check_number(d: dict, key: str, low: float, high: float, where: str = "") -> None:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"energy config '{where}{key}' must be a number in [{low}, {high}], got {value!r}")


# ---- sampling and integration -------------------------------------------------------------------------

Sample = Tuple[float, float]  # (time.perf_counter() seconds, watts)


def integrate_window(samples: List[Sample], t0: float, t1: float) -> Tuple[float, int]:
    """(joules over exactly [t0, t1], number of samples strictly inside) by the trapezoid rule.

    The power at each edge is interpolated linearly between the samples around it, or held from the
    nearest sample when the edge is not bracketed; samples outside the window only shape those edge values.
    """
    if not samples:
        raise ValueError("no power samples")
    if t1 <= t0:
        raise ValueError(f"empty window [{t0}, {t1}]")
    pts = sorted(samples)
    times = [t for t, _ in pts]

    def at(t: float) -> float:
        if t <= times[0]:
            return pts[0][1]
        if t >= times[-1]:
            return pts[-1][1]
        i = bisect.bisect_right(times, t)
        (ta, wa), (tb, wb) = pts[i - 1], pts[i]
        return wa if tb == ta else wa + (wb - wa) * (t - ta) / (tb - ta)

    inside = [(t, w) for t, w in pts if t0 < t < t1]
    knots = [(t0, at(t0))] + inside + [(t1, at(t1))]
    energy = sum((tb - ta) * (wa + wb) / 2 for (ta, wa), (tb, wb) in zip(knots, knots[1:]))
    return energy, len(inside)


def _standard_error(values: List[float]) -> Optional[float]:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) >= 2 else None


class _Sampler:
    """A daemon thread appending (perf_counter, W) to ``samples`` every ``interval_s`` until stopped.

    It only reads (a file, or one short command), so the timed loop shares the CPU with a few reads per
    interval; a read that fails stops the thread and is kept in ``error``.
    """

    def __init__(self, read_w: Callable[[], float], interval_s: float, samples: List[Sample]):
        self.read_w = read_w
        self.interval_s = interval_s
        self.samples = samples
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgekit-power-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            begin = time.perf_counter()
            try:
                watts = self.read_w()
            except Exception as exc:  # kept for result(); the thread ends
                self.error = exc
                return
            end = time.perf_counter()
            self.samples.append(((begin + end) / 2, watts))
            self._stop.wait(max(0.0, self.interval_s - (time.perf_counter() - begin)))

    def stop(self, timeout_s: float) -> bool:
        """Stop and join; False if the thread is still stuck in a read after ``timeout_s``."""
        self._stop.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def _timed_sample(read_w: Callable[[], float]) -> Sample:
    begin = time.perf_counter()
    watts = read_w()
    return (begin + time.perf_counter()) / 2, watts


def _failure(sensor: Sensor, exc: BaseException) -> str:
    return f"reading {sensor.source} failed: {type(exc).__name__}: {exc}"


# ---- the meter ----------------------------------------------------------------------------------------


class Meter:
    """Measures one timed window (and the idle baseline before it) with one sensor, or estimates it.

    ``source`` names the sensor (or the power model); None when there is nothing to measure with.
    """

    def __init__(self, sensor: Optional[Sensor], reason: str = "", checked: Optional[List[str]] = None,
                 config: Optional[dict] = None):
        cfg = dict(DEFAULTS)
        cfg.update(config or {})
        self.sensor = sensor
        self.reason = reason  # why there is no sensor
        self.checked = list(checked or [])
        self.interval_s = float(cfg["interval_s"])
        self.idle_seconds = float(cfg["idle_seconds"])
        self.command_timeout_s = float(cfg["command_timeout_s"])
        self.power_model = cfg["power_model"] if sensor is None else None
        if sensor is not None:
            self.source: Optional[str] = sensor.source
        elif self.power_model:
            pm = self.power_model
            self.source = f"power-model: device profile (idle_w={pm['idle_w']}, active_w={pm['active_w']})"
        else:
            self.source = None
        self._error: Optional[str] = None
        self._idle_w: Optional[float] = None
        self._idle_sigma_w = 0.0
        self._idle_note = "idle baseline not measured (measure_idle() was not called)"
        self._t_start: Optional[float] = None
        self._t_stop: Optional[float] = None
        self._readings: List[Any] = []
        self._read_s: List[float] = []  # how long each counter read took
        self._samples: List[Sample] = []
        self._sampler: Optional[_Sampler] = None

    # -- measuring --

    def measure_idle(self, seconds: Optional[float] = None) -> None:
        """Mean power while this process sleeps for ``seconds`` (default: config idle_seconds)."""
        seconds = self.idle_seconds if seconds is None else float(seconds)
        if self.sensor is None:
            return
        if seconds <= 0:
            self._idle_note = "idle baseline disabled (idle_seconds = 0)"
            return
        try:
            if isinstance(self.sensor, CounterSensor):
                self._idle_counter(self.sensor, seconds)
            else:
                self._idle_power(self.sensor, seconds)  # type: ignore[arg-type]
        except Exception as exc:
            self._idle_w = None
            self._idle_note = f"idle baseline not measured: {_failure(self.sensor, exc)}"

    def _idle_counter(self, sensor: CounterSensor, seconds: float) -> None:
        before, t0, _ = self._read_counter(sensor)
        time.sleep(seconds)
        after, t1, _ = self._read_counter(sensor)
        span = t1 - t0
        energy = sensor.delta_j(before, after)
        if energy <= 0:
            self._idle_note = f"idle baseline not measured: counter did not advance over {span:.3f} s idle"
            return
        self._idle_w = energy / span
        tau = max(sensor.update_interval_s or 0.0, max(self._read_s[-2:]))
        self._idle_sigma_w = (self._idle_w * tau + 2 * sensor.resolution_j) / span
        self._idle_note = f"idle power {self._idle_w * 1e3:.1f} mW measured over {span:.3f} s just before the run"

    def _idle_power(self, sensor: PowerSensor, seconds: float) -> None:
        samples: List[Sample] = []
        sampler = _Sampler(sensor.read_w, self.interval_s, samples)
        samples.append(_timed_sample(sensor.read_w))
        sampler.start()
        t0 = time.perf_counter()
        time.sleep(seconds)
        t1 = time.perf_counter()
        try:
            samples.append(_timed_sample(sensor.read_w))
        finally:
            sampler.stop(self.command_timeout_s + 1.0)
        if sampler.error is not None:
            raise sampler.error
        energy, _ = integrate_window(samples, t0, t1)
        inside = [w for t, w in samples if t0 < t < t1]
        self._idle_w = energy / (t1 - t0)
        se = _standard_error(inside)
        self._idle_sigma_w = se or 0.0
        self._idle_note = (f"idle power {self._idle_w * 1e3:.1f} mW measured over {t1 - t0:.3f} s "
                           f"({len(inside)} samples) just before the run")
        if se is None:
            self._idle_note += "; too few idle samples for an error estimate of the idle power"

    def _read_counter(self, sensor: CounterSensor) -> Tuple[Any, float, float]:
        begin = time.perf_counter()
        reading = sensor.read()
        end = time.perf_counter()
        self._read_s.append(end - begin)
        return reading, (begin + end) / 2, end - begin

    def start(self) -> None:
        """Call immediately before the timed loop."""
        if self._sampler is not None:  # start() twice without stop(): end the old sampler first
            self._sampler.stop(self.command_timeout_s + 1.0)
        self._t_start = self._t_stop = None
        self._readings, self._samples, self._sampler = [], [], None
        sensor = self.sensor
        if sensor is None:
            self._t_start = time.perf_counter()
            return
        self._error = None
        try:
            if isinstance(sensor, CounterSensor):
                reading, self._t_start, _ = self._read_counter(sensor)
                self._readings.append(reading)
            else:
                read_w = sensor.read_w  # type: ignore[attr-defined]
                self._samples.append(_timed_sample(read_w))
                self._sampler = _Sampler(read_w, self.interval_s, self._samples)
                self._sampler.start()
                self._t_start = time.perf_counter()
        except Exception as exc:
            self._error = _failure(sensor, exc)
            self._t_start = time.perf_counter()

    def stop(self) -> None:
        """Call immediately after the timed loop."""
        sensor = self.sensor
        if sensor is None or self._t_start is None:
            self._t_stop = time.perf_counter()
            return
        if isinstance(sensor, CounterSensor):
            if self._error is None:
                try:
                    reading, self._t_stop, _ = self._read_counter(sensor)
                    self._readings.append(reading)
                except Exception as exc:
                    self._error = _failure(sensor, exc)
            if self._t_stop is None:
                self._t_stop = time.perf_counter()
            return
        self._t_stop = time.perf_counter()
        sampler, self._sampler = self._sampler, None
        if sampler is None:  # start() failed; its error is kept
            return
        try:
            self._samples.append(_timed_sample(sensor.read_w))  # type: ignore[attr-defined]
        except Exception as exc:
            self._error = self._error or _failure(sensor, exc)
        stopped = sampler.stop(self.command_timeout_s + 1.0)
        if sampler.error is not None:
            self._error = self._error or _failure(sensor, sampler.error)
        if not stopped:
            self._error = self._error or f"reading {sensor.source} failed: the sampler did not stop (a read hung)"

    # -- results --

    def result(self, iterations: int) -> dict:
        """The energy figures for ``iterations`` inferences in the window (keys: RESULT_KEYS)."""
        window = None
        if self._t_start is not None and self._t_stop is not None:
            window = self._t_stop - self._t_start
        if self.sensor is None:
            if not self.power_model:
                return self._unavailable(self.reason or "no sensor", window)
            return self._estimate(iterations, window)
        if self._error is not None:
            return self._unavailable(self._error, window)
        if window is None:
            return self._unavailable("the meter was not started and stopped around the timed loop", None)
        if iterations < 1:
            return self._unavailable("no iterations were timed", window)
        if window <= 0:
            return self._unavailable(f"empty window ({window} s)", window)
        try:
            if isinstance(self.sensor, CounterSensor):
                figures = self._counter_window(self.sensor, window)
            else:
                figures = self._power_window(window)
        except Exception as exc:
            return self._unavailable(f"computing energy from {self.sensor.source} failed: "
                                     f"{type(exc).__name__}: {exc}", window)
        if isinstance(figures, str):
            return self._unavailable(figures, window)
        energy_j, err_window_j, interval, samples, notes = figures
        return self._measured(iterations, window, energy_j, err_window_j, interval, samples, notes)

    def _counter_window(self, sensor: CounterSensor, window: float) -> Any:
        before, after = self._readings
        try:
            energy = sensor.delta_j(before, after)
        except CounterError as exc:
            return str(exc)
        if energy <= 0:  # a real window always consumes energy; a frozen counter is not "0 mJ"
            return f"counter did not advance over a {window:.3f} s window ({before} -> {after})"
        tau = max(sensor.update_interval_s or 0.0, max(self._read_s[-2:]))
        power = energy / window
        error = power * tau + 2 * sensor.resolution_j
        return energy, error, tau, len(self._readings), []

    def _power_window(self, window: float) -> Any:
        t0, t1 = self._t_start, self._t_stop
        assert t0 is not None and t1 is not None
        energy, n_inside = integrate_window(self._samples, t0, t1)
        inside = [w for t, w in self._samples if t0 < t < t1]
        if max([w for _, w in self._samples]) <= 0:
            return f"power sensor read 0 W throughout the {window:.3f} s window (rail not connected?)"
        times = sorted(t for t, _ in self._samples)
        spacing = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0
        dt = max(self.interval_s, self.sensor.update_interval_s or 0.0, spacing)  # type: ignore[union-attr]
        se = _standard_error(inside)
        notes = []
        if se is None:
            notes.append(f"only {n_inside} sample(s) inside the window: no standard error of the mean power")
        error = (energy / window) * dt + (se or 0.0) * window
        return energy, error, dt, n_inside, notes

    def _measured(self, iterations: int, window: float, energy_j: float, err_window_j: float, interval: float,
                  samples: int, extra_notes: List[str]) -> dict:
        assert self.sensor is not None
        kind = "sampled every" if self.sensor.kind == "power" else "counter update interval"
        notes = [f"{NOTES[self.sensor.name]}; {kind} {interval:.4g} s"] + self.sensor.notes + extra_notes
        status = "measured"
        net_mj = net_err_mj = None
        if self._idle_w is not None:
            net_j = energy_j - self._idle_w * window
            net_err_j = err_window_j + self._idle_sigma_w * window
            net_mj, net_err_mj = net_j * 1e3 / iterations, net_err_j * 1e3 / iterations
            notes.append(self._idle_note + "; energy_mj_per_inference is above idle")
            if net_j <= 0:
                status = "measured: within idle noise (net energy <= 0 after idle subtraction)"
            elif net_j < net_err_j:
                notes.append("net energy above idle is smaller than its error bar")
        else:
            notes.append(self._idle_note + "; only the gross energy_total_mj_per_inference is given")
        if window < SHORT_WINDOW_INTERVALS * interval:
            notes.append(f"window {window:.4g} s is shorter than {SHORT_WINDOW_INTERVALS} sampling intervals "
                         f"({interval:.4g} s): too short to trust")
        return {
            "status": status,
            "source": self.source,
            "energy_mj_per_inference": net_mj,
            "energy_total_mj_per_inference": energy_j * 1e3 / iterations,
            "energy_error_mj": net_err_mj,
            "energy_total_error_mj": err_window_j * 1e3 / iterations,
            "idle_power_mw": None if self._idle_w is None else self._idle_w * 1e3,
            "active_power_mw": energy_j / window * 1e3,
            "window_s": window,
            "samples": samples,
            "interval_s": interval,
            "note": "; ".join(notes),
        }

    def _estimate(self, iterations: int, window: Optional[float]) -> dict:
        if window is None or window <= 0:
            return self._unavailable("the meter was not started and stopped around the timed loop", window)
        if iterations < 1:
            return self._unavailable("no iterations were timed", window)
        pm = self.power_model
        assert pm is not None
        idle_w, active_w = float(pm["idle_w"]), float(pm["active_w"])
        return {
            "status": "estimated",
            "source": self.source,
            "energy_mj_per_inference": (active_w - idle_w) * window * 1e3 / iterations,
            "energy_total_mj_per_inference": active_w * window * 1e3 / iterations,
            "energy_error_mj": None,
            "energy_total_error_mj": None,
            "idle_power_mw": idle_w * 1e3,
            "active_power_mw": active_w * 1e3,
            "window_s": window,
            "samples": None,
            "interval_s": None,
            "note": ("estimate from the device profile's power model (active_w over the window, idle_w "
                     "subtracted), not a measurement; no error bar; no sensor was readable: " + self.reason),
        }

    def _unavailable(self, reason: str, window: Optional[float]) -> dict:
        result = dict.fromkeys(RESULT_KEYS)
        result.update(status=f"unavailable: {reason}", source=self.source, window_s=window, note="")
        return result


def open_meter(config: Optional[dict]) -> Meter:
    """A meter for the request's energy config; None means disabled. ValueError for a malformed config;
    never raises for a missing or unreadable sensor (the meter reports that)."""
    if config is None:
        return Meter(None, "disabled by request")
    cfg = check_config(config)
    sensor, reason, checked = find_sensor(cfg["sysfs_root"], cfg["vcgencmd"], cfg["external"],
                                          cfg["command_timeout_s"], cfg["accelerator"])
    return Meter(sensor, reason, checked, cfg)
