"""A device reached over SSH (paramiko): verified host keys, content-addressed pushes, quoted commands.

Why paramiko directly and not fabric: every call here needs the socket (TCP_USER_TIMEOUT, so a dead link
fails in seconds rather than hanging for minutes), the host-key policy and the channel (stdin, exit status,
a deadline); fabric would wrap all three and add a stdin-reading layer that breaks under pytest.

Device layout, under the device's ``workdir``::

    store/<sha256 of the group>/<original file names>   one folder per pushed group (an artifact and its
                                                        sidecar files, the agent, an inputs file)
    store/.tmp-<id>-<random>/                           a transfer in progress; renamed when verified

A group's folder exists only once every file in it was hashed *on the device* and matched, so a partial or
corrupted transfer is never run, and an unchanged artifact is never sent twice.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import posixpath
import secrets
import shlex
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from edgekit.config.device import SshDevice
from edgekit.errors import AgentError, DeviceError
from edgekit.transport.base import CommandResult, PushStats, Transport, file_sha256

if TYPE_CHECKING:
    import paramiko

TCP_USER_TIMEOUT_MS = 10_000  # unacknowledged data for this long = the link is dead
KEEPALIVE_SECONDS = 3
MAX_OUTPUT_BYTES = 32 * 1024 * 1024  # what a device sends back is untrusted: bound it
UPLOAD_TIMEOUT_S = 1800.0  # a 2 GB model over a slow Wi-Fi link; a dead link fails long before (TCP user timeout)
_PID_MARK = "edgekit-pid "

# Runs on the device with its own python (standard library only), reading the group's files from stdin
# one after another: each is written into a temporary folder and hashed as it arrives; the folder is
# renamed to its content address only when every hash matched. Any failure removes it and says why
# (with the errno text: "No space left on device", "Read-only file system").
_RECEIVE = r"""
import hashlib, json, os, shutil, sys
final, tmp, files = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
src = sys.stdin.buffer
try:
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    os.mkdir(tmp)
    for name, size, digest in files:
        h, left = hashlib.sha256(), size
        with open(os.path.join(tmp, name), "wb") as f:
            while left:
                block = src.read(min(left, 1 << 20))
                if not block:
                    raise EOFError(f"{name}: the transfer ended after {size - left} of {size} bytes")
                f.write(block)
                h.update(block)
                left -= len(block)
        if h.hexdigest() != digest:
            raise ValueError(f"{name}: sha256 mismatch after transfer")
    try:
        os.rename(tmp, final)
    except OSError:
        if not os.path.isdir(final):  # else: the same content arrived meanwhile by another push
            raise
        shutil.rmtree(tmp, ignore_errors=True)
except BaseException as exc:
    shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(f"{type(exc).__name__}: {exc}")
"""

# Runs on the device: why can't we write under argv[1]? (nearest existing ancestor: read-only, no permission,
# or fewer free bytes than argv[2]).
_PROBE_WRITABLE = r"""
import os, sys
path, needed = sys.argv[1], int(sys.argv[2])
while not os.path.isdir(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
st = os.statvfs(path)
free = st.f_bavail * st.f_frsize
if st.f_flag & getattr(os, "ST_RDONLY", 1):
    print(f"the filesystem holding {path} is read-only: choose another 'workdir' in devices.yaml")
elif not os.access(path, os.W_OK):
    print(f"{path} is not writable by this user: fix its permissions or choose another 'workdir'")
elif free < needed + (1 << 20):
    print(f"disk full: {free} bytes free at {path}, {needed} needed: free space or choose another 'workdir'")
else:
    print(f"{path} looks writable with {free} bytes free; see the error above")
"""


def host_key_name(host: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts."""
    return host if port == 22 else f"[{host}]:{port}"


def known_hosts_path(device: SshDevice) -> Path:
    return Path(device.known_hosts).expanduser() if device.known_hosts else Path.home() / ".ssh" / "known_hosts"


def connect(device: SshDevice) -> "paramiko.SSHClient":
    """An authenticated client, or DeviceError saying what failed and how to fix it."""
    import paramiko

    known = known_hosts_path(device)
    client = paramiko.SSHClient()
    if known.is_file():
        client.load_host_keys(str(known))
    client.set_missing_host_key_policy(_HostKeyPolicy(device, known))
    sock = _open_socket(device)
    identity = str(Path(device.identity_file).expanduser()) if device.identity_file else None
    if identity and not Path(identity).is_file():
        sock.close()
        raise DeviceError(f"identity_file {identity} does not exist; fix the path in devices.yaml",
                          device=device.name)
    try:
        client.connect(
            device.host, device.port, username=device.user or getpass.getuser(), sock=sock,
            key_filename=identity, look_for_keys=identity is None, allow_agent=True,
            timeout=device.connect_timeout, banner_timeout=device.connect_timeout,
            auth_timeout=device.connect_timeout,
        )
    except DeviceError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise DeviceError(
            f"host key of {host_key_name(device.host, device.port)} CHANGED: it is not the one in {known} "
            f"(got {exc.key.get_name()} {_fingerprint(exc.key)}). If the device was reinstalled, remove the "
            f"old key with: ssh-keygen -R '{host_key_name(device.host, device.port)}' -f {known} ; "
            "otherwise someone may be intercepting the connection", device=device.name) from exc
    except paramiko.PasswordRequiredException as exc:
        client.close()
        raise DeviceError(f"the key {identity} is protected by a passphrase: load it into ssh-agent "
                          f"(ssh-add {identity}); edgekit never stores passphrases", device=device.name) from exc
    except paramiko.AuthenticationException as exc:
        client.close()
        who = f"{device.user or getpass.getuser()}@{device.host}:{device.port}"
        key = f"key {identity}" if identity else "ssh-agent / ~/.ssh keys"
        raise DeviceError(f"authentication failed for {who} with {key}: add the public key to the device's "
                          f"~/.ssh/authorized_keys (ssh-copy-id -i KEY.pub -p {device.port} {who.split(':')[0]})",
                          device=device.name) from exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        client.close()
        raise DeviceError(f"SSH handshake with {device.host}:{device.port} failed: {type(exc).__name__}: {exc}",
                          device=device.name, transient=True) from exc
    transport = client.get_transport()
    assert transport is not None
    transport.set_keepalive(KEEPALIVE_SECONDS)
    return client


def _open_socket(device: SshDevice) -> socket.socket:
    where = f"{device.host}:{device.port}"
    try:
        sock = socket.create_connection((device.host, device.port), timeout=device.connect_timeout)
    except ConnectionRefusedError as exc:
        raise DeviceError(f"connection refused by {where}: is sshd running there, and is the port right?",
                          device=device.name, transient=True) from exc
    except socket.timeout as exc:
        raise DeviceError(f"no answer from {where} within {device.connect_timeout:g} s (device off, wrong "
                          "address, or a firewall)", device=device.name, transient=True) from exc
    except OSError as exc:
        raise DeviceError(f"cannot reach {where}: {exc}", device=device.name, transient=True) from exc
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
    return sock


def _fingerprint(key: Any) -> str:
    import base64

    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _HostKeyPolicy:
    """Refuse unknown host keys with the fix in the message, unless the device opted in to trust-on-first-use."""

    def __init__(self, device: SshDevice, known: Path) -> None:
        self.device, self.known = device, known

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        name = host_key_name(self.device.host, self.device.port)
        if not self.device.trust_new_host:
            port = f"-p {self.device.port} " if self.device.port != 22 else ""
            raise DeviceError(
                f"unknown host key for {name} ({key.get_name()} {_fingerprint(key)}), not in {self.known}. "
                f"Check the fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then "
                f"trust it: ssh-keyscan {port}{self.device.host} >> {self.known} , or pass --trust-new-host "
                "(trust_new_host: true in devices.yaml) to accept and record it", device=self.device.name)
        self.known.parent.mkdir(parents=True, exist_ok=True)
        with open(self.known, "a", encoding="utf-8") as f:
            f.write(f"{name} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(name, key.get_name(), key)


class SshTransport(Transport):
    workdir: str  # always set: an SSH device has a folder of edgekit's own
    def __init__(self, device: SshDevice) -> None:
        self.device = device
        self.device_name = device.name
        self.python = device.python
        self.stats = PushStats()
        self.client = connect(device)
        self._sftp: Any = None
        self.workdir = self._absolute(device.workdir)

    # ---- commands -------------------------------------------------------------------------------------

    def run(self, argv: list[str], *, timeout: float, stdin: bytes | Iterable[bytes] | None = None) -> CommandResult:
        """Run ``argv`` in the login home; every word quoted, so names with spaces or ``;`` stay words."""
        command = (f"echo {_PID_MARK}$$ >&2 && "
                   ': "${OMP_NUM_THREADS:=1}" && export OMP_NUM_THREADS && exec ' + shlex.join(argv))
        start = time.perf_counter()
        try:
            out, err, code = self._exec(command, timeout, stdin, argv)
        except (OSError, EOFError) as exc:  # paramiko raises socket errors and EOFError on a dead link
            raise DeviceError(f"connection lost while running {argv[0]}: {type(exc).__name__}: {exc}",
                              device=self.device_name, transient=True) from exc
        _, err = _split_pid(err)
        if code == -1 and not err.strip() and not out:
            err = "no exit status: the command was killed by a signal or the connection dropped"
        return CommandResult(argv, code, out, err, time.perf_counter() - start)

    def _exec(self, command: str, timeout: float, stdin: bytes | Iterable[bytes] | None,
              argv: list[str]) -> tuple[str, str, int]:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise DeviceError("the SSH connection is closed", device=self.device_name, transient=True)
        chan = transport.open_session(timeout=self.device.connect_timeout)
        try:
            chan.exec_command(command)
            deadline = time.monotonic() + timeout
            _send(chan, stdin, timeout)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            while True:
                busy = False
                while chan.recv_ready():
                    out += chan.recv(65536)
                    busy = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    busy = True
                if len(out) > MAX_OUTPUT_BYTES or len(err) > MAX_OUTPUT_BYTES:
                    self._kill(err)
                    raise AgentError(f"the device sent more than {MAX_OUTPUT_BYTES >> 20} MiB of output",
                                     command=argv)
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if not transport.is_active():
                    raise EOFError("the SSH transport closed")
                if time.monotonic() > deadline:
                    self._kill(err)
                    raise AgentError(f"timed out after {timeout:g} s on device {self.device_name!r} (killed)",
                                     command=argv, stdout=_decode(out), stderr=_decode(err))
                if not busy:
                    time.sleep(0.005)
            code = chan.recv_exit_status()
            if code == -1 and not transport.is_active():
                # paramiko closes a dead transport's channels as if they had ended: without this, a dropped
                # link would look like a command killed by a signal (not retried) instead of a lost connection
                raise EOFError("the SSH connection dropped before the command's exit status arrived")
            return _decode(out), _decode(err), code
        finally:
            chan.close()

    def _kill(self, err: bytearray) -> None:
        """A remote command outlives its channel: kill it by the pid it reported first."""
        pid, _ = _split_pid(_decode(err))
        if pid and pid.isdigit():  # the device's word for its pid is untrusted text
            try:
                self._exec(f"kill -KILL {pid}", 10, None, ["kill", pid])
            except Exception:
                pass

    # ---- files ----------------------------------------------------------------------------------------

    def stage(self, files: Sequence[Path]) -> list[str]:
        """Push ``files`` as one content-addressed folder (skipped when the device already has it)."""
        files = [Path(f) for f in files]
        digests = {f.name: file_sha256(f) for f in files}
        if len(digests) != len(files):
            raise DeviceError(f"cannot push files with the same name together: {[str(f) for f in files]}",
                              device=self.device_name)
        group = hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest()
        store = posixpath.join(self.workdir, "store")
        final = posixpath.join(store, group)
        remote = [posixpath.join(final, f.name) for f in files]
        if self._is_dir(final):
            self.stats.files_skipped += len(files)
        else:
            self._upload_group(files, digests, store, final)
        return remote

    def _upload_group(self, files: list[Path], digests: dict[str, str], store: str, final: str) -> None:
        """Stream the files into one remote command that writes, hashes, verifies and publishes them."""
        tmp = posixpath.join(store, f".tmp-{posixpath.basename(final)[:16]}-{secrets.token_hex(4)}")
        manifest = [(f.name, f.stat().st_size, digests[f.name]) for f in files]
        argv = [self.python, "-c", _RECEIVE, final, tmp, json.dumps(manifest)]
        res = self.run(argv, timeout=UPLOAD_TIMEOUT_S, stdin=_file_chunks(files))
        if res.exit_code == 0:
            self.stats.bytes_sent += sum(size for _, size, _ in manifest)
            self.stats.files_sent += len(files)
            return
        detail = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit code {res.exit_code}"
        if res.exit_code == 127:
            raise DeviceError(f"python {self.python!r} not found on the device: set 'python' in devices.yaml "
                              f"({detail})", device=self.device_name)
        if "mismatch" not in detail:
            detail += f" ({self._diagnose(store, sum(size for _, size, _ in manifest))})"
        raise DeviceError(f"upload to {tmp} failed: {detail}", device=self.device_name)

    def _diagnose(self, folder: str, needed: int) -> str:
        """SFTP says only "Failure" for a full disk and a read-only one alike: ask the device which it is."""
        res = self.run([self.python, "-c", _PROBE_WRITABLE, folder, str(needed)], timeout=30)
        return res.stdout.strip() or f"could not diagnose: {res.stderr.strip()[-300:] or res.exit_code}"

    def sftp(self) -> Any:
        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except Exception as exc:
                raise DeviceError(f"cannot open SFTP (is the sftp subsystem enabled in sshd_config?): {exc}",
                                  device=self.device_name) from exc
        return self._sftp

    def _absolute(self, workdir: str) -> str:
        """``~/x`` and relative paths are under the login home, as with scp."""
        if workdir.startswith("~/") or workdir == "~":
            workdir = workdir[2:] or "."
        try:
            home = self.sftp().normalize(".")
        except OSError as exc:
            raise DeviceError(f"cannot read the home folder over SFTP: {exc}", device=self.device_name) from exc
        return posixpath.normpath(posixpath.join(home, workdir))

    def _is_dir(self, path: str) -> bool:
        import stat

        try:
            return stat.S_ISDIR(self.sftp().stat(path).st_mode or 0)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise DeviceError(f"cannot look at {path}: {_os_error_text(exc)}", device=self.device_name) from exc

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        self.client.close()


def _os_error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _send(chan: Any, stdin: bytes | Iterable[bytes] | None, timeout: float) -> None:
    """Feed the command's stdin. If it stops reading (it failed), stop too: its stderr will say why."""
    if stdin is None:
        return
    chan.settimeout(timeout)
    try:
        for chunk in [stdin] if isinstance(stdin, (bytes, bytearray)) else stdin:
            chan.sendall(chunk)
    except socket.timeout:
        raise
    except OSError:
        if chan.get_transport() is None or not chan.get_transport().is_active():
            raise
    finally:
        chan.settimeout(None)


def _file_chunks(files: Sequence[Path], size: int = 1 << 20) -> Iterator[bytes]:
    for path in files:
        with open(path, "rb") as f:
            yield from iter(lambda: f.read(size), b"")


def _split_pid(stderr: str) -> tuple[str | None, str]:
    first, _, rest = stderr.partition("\n")
    if first.startswith(_PID_MARK):
        return first[len(_PID_MARK):].strip(), rest
    return None, stderr


def _decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")
