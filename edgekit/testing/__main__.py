"""``python -m edgekit.testing serve``: run loopback test devices until Ctrl-C, to try edgekit without a board.

Writes a devices.yaml naming them, so ``edgekit deploy --device NAME --devices-file FILE`` reaches a real sshd.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from edgekit.testing import DEVICE_ENVS, TestDevice, device_python, start_arm64_device, start_sshd, write_devices_file
from edgekit.testing._arm64 import ARM64_ENV


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgekit.testing", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start sshd test devices on loopback and write a devices.yaml")
    serve.add_argument("--device", action="append", metavar="NAME=ENV[:PROFILE]", required=True,
                       help=f"ENV: host, {ARM64_ENV} (an emulated arm64 device: qemu-user, root) or one of "
                            f"{', '.join(DEVICE_ENVS)}; repeat for more devices")
    serve.add_argument("--devices-file", default="test-devices.yaml", type=Path)
    serve.add_argument("--root", type=Path, help="folder for keys and workdirs (default: a temp folder)")
    args = parser.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="edgekit-test-devices-"))
    args.devices_file.unlink(missing_ok=True)
    devices: list[TestDevice] = []
    try:
        for spec in args.device:
            name, _, rest = spec.partition("=")
            env, _, profile = (rest or "host").partition(":")
            if env == ARM64_ENV:
                print(f"starting {name} (emulated arm64; building its root on first use takes 6 to 10 minutes)",
                      file=sys.stderr)
                devices.append(start_arm64_device(root / name, name=name, profile=profile or "pi4",
                                                  log=lambda msg: print(msg, file=sys.stderr)))
                continue
            print(f"starting {name} (python env {env}; building it on first use can take a minute)", file=sys.stderr)
            devices.append(start_sshd(root / name, name=name, python=device_python(env), profile=profile or None))
        write_devices_file(args.devices_file, devices)
        for dev in devices:
            where = f"{dev.user}@{dev.host}:{dev.port} workdir {dev.device_path(dev.workdir)}"
            print(f"{dev.name}: {where}", file=sys.stderr)
        print(f"wrote {args.devices_file}; Ctrl-C stops the devices", file=sys.stderr)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's `cmd &` starts us with SIGINT ignored
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        for dev in devices:
            dev.stop()
        if devices:  # the devices it names are gone: a stale file must not look ready to a waiting script
            args.devices_file.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
