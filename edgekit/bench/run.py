"""``benchmark``: run each artifact through the agent on a device and collect rows."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from edgekit._paths import cache_dir
from edgekit.bench.config import BenchConfig
from edgekit.bench.results import artifact_row, measurement_fields, to_frame
from edgekit.config.device import LocalDevice, SshDevice, get_device
from edgekit.errors import AgentError
from edgekit.transport import Transport, open_transport


def benchmark(
    artifacts: Sequence[Any],
    device: str | LocalDevice | SshDevice = "local",
    config: BenchConfig | None = None,
    *,
    devices_file: str | Path | None = None,
    on_event: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Measure every artifact on ``device``; failed exports and failed runs become rows with ``error``."""
    cfg = config or BenchConfig()
    dev = get_device(device, devices_file)
    transport = open_transport(dev)
    try:
        agent = transport.put(_agent_bundle())
        rows = []
        for art in artifacts:
            if on_event and not art.error:
                on_event(f"measuring {art.target} {art.precision} on {dev.name}")
            rows.append(_measure(art, dev.name, transport, agent, cfg))
    finally:
        transport.close()
    return to_frame(rows)


def _agent_bundle() -> Path:
    from edgekit.agent.bundle import build_agent

    return build_agent(cache_dir() / "agent")


def _measure(art: Any, device: str, transport: Transport, agent: str, cfg: BenchConfig) -> dict[str, Any]:
    row = artifact_row(art, device)
    if art.error or art.path is None:
        return row
    request = {
        "artifact": transport.put(art.path), "format": art.format, "inputs": transport.put(art.inputs),
        "threads": cfg.threads or art.threads,
        "warmup_iterations": cfg.warmup_iterations, "warmup_seconds": cfg.warmup_seconds,
        "min_iterations": cfg.min_iterations, "min_seconds": cfg.min_seconds, "max_seconds": cfg.max_seconds,
    }
    try:
        result = run_agent(transport, agent, request, cfg.timeout)
    except AgentError as exc:
        row["error"] = f"benchmark failed: {exc}"
        return row
    row.update(measurement_fields(result))
    return row


def run_agent(transport: Transport, agent: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run the agent once with ``request``; its JSON answer, or AgentError with the command and output."""
    with tempfile.TemporaryDirectory(prefix="edgekit-req-") as tmp:
        req = Path(tmp) / "request.json"
        req.write_text(json.dumps(request))
        argv = [transport.python, agent, "run", "--request", transport.put(req)]
        res = transport.run(argv, timeout=timeout)
    answer = _last_json(res.stdout)
    if answer is None:
        raise AgentError("the agent gave no JSON answer", command=argv, exit_code=res.exit_code,
                         stdout=res.stdout, stderr=res.stderr)
    if not answer.get("ok"):
        err = answer.get("error") or {}
        raise AgentError(f"{err.get('stage', '?')}: {err.get('type', 'Error')}: {err.get('message', '')}",
                         command=argv, exit_code=res.exit_code, stderr=res.stderr)
    return answer


def _last_json(stdout: str) -> dict[str, Any] | None:
    """The agent's answer; tolerate runtime chatter printed before it."""
    try:
        value = json.loads(stdout)
        return value if isinstance(value, dict) else None
    except json.JSONDecodeError:
        pass
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None
