"""Profiles, targets and devices: the shipped YAML validates, and bad YAML names file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import edgekit
from edgekit.config.profile import host_profile
from edgekit.errors import ConfigError, UnknownNameError


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_builtin_profiles_carry_the_schemes_the_hardware_wants() -> None:
    profiles = edgekit.list_profiles()
    assert set(profiles) >= {"pi4", "jetson-orin", "x86"}
    pi4, jetson, x86 = profiles["pi4"], profiles["jetson-orin"], profiles["x86"]
    assert (pi4.arch, pi4.backend, pi4.pruning.granularity) == ("aarch64", "xnnpack", "channel")
    assert pi4.quantization.mode == "static" and pi4.quantization.per_channel and pi4.quantization.weight.symmetric
    assert jetson.accelerator == "cuda" and jetson.pruning.granularity == "2:4"
    assert set(jetson.precisions) == {"fp16", "int8"}
    assert x86.backend == "fbgemm" and "avx512_vnni" in x86.isa and x86.quantization.per_channel
    for p in profiles.values():
        assert p.threads >= 1 and p.targets
        for t in p.targets:
            edgekit.load_target(t)  # every profile names only targets that exist


def test_builtin_targets_have_a_tolerance_for_every_precision() -> None:
    targets = edgekit.list_targets()
    assert {t.format: t.extension for t in targets.values()} == {"executorch": ".pte", "tflite": ".tflite", "onnx": ".onnx"}
    for t in targets.values():
        assert {"fp32", "int8"} <= set(t.precisions)
        assert set(t.precisions) <= set(t.tolerance), t.name


@pytest.mark.parametrize(("arch", "expected"), [("x86_64", "x86"), ("AMD64", "x86"), ("aarch64", "pi4")])
def test_local_takes_the_profile_matching_the_host(arch: str, expected: str) -> None:
    assert host_profile(arch=arch).name == expected


def test_jetson_wins_on_a_host_with_tegra_release(tmp_path: Path) -> None:
    marker = tmp_path / "nv_tegra_release"
    marker.write_text("R36\n")
    jetson = edgekit.load_profile("jetson-orin")
    data = jetson.model_dump(exclude={"source"})
    data["name"] = "my-jetson"
    data["match"] = {"arch": ["aarch64"], "files": [str(marker)]}
    import yaml

    (tmp_path / "my-jetson.yaml").write_text(yaml.safe_dump(data))
    assert host_profile(extra_dir=tmp_path, arch="aarch64").name == "my-jetson"


def test_unknown_profile_lists_valid_names_and_the_closest() -> None:
    with pytest.raises(UnknownNameError) as info:
        edgekit.load_profile("pi5")
    msg = str(info.value)
    assert "jetson-orin, pi4, x86" in msg and "did you mean 'pi4'" in msg


def test_unknown_target_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="executorch, onnx, tflite"):
        edgekit.load_target("coreml")


def test_user_profile_folder_adds_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "rk3588.yaml", """
        name: rk3588
        arch: aarch64
        backend: xnnpack
        threads: 4
        precisions: [int8]
        targets: [tflite]
    """)
    monkeypatch.setenv("EDGEKIT_PROFILES", str(tmp_path))
    assert edgekit.load_profile("rk3588").targets == ["tflite"]
    assert "rk3588" in edgekit.list_profiles()


@pytest.mark.parametrize(
    ("body", "line", "field", "words"),
    [
        ("name: bad\narch: x86_64\nbackend: fbgemm\nprecisions: [fp32]\ntargets: [onnx]\nthreds: 2\n",
         6, "threds", "unknown field"),
        ("name: bad\narch: x86_64\nbackend: fbgemm\nprecisions: [fp32]\ntargets: [onnx]\nthreads: many\n",
         6, "threads", "valid integer"),
        ("name: bad\narch: x86_64\nbackend: fbgemm\nprecisions: [fp32]\ntargets: [onnx]\n"
         "quantization:\n  weight:\n    granularity: per_row\n", 8, "quantization.weight.granularity", "per_channel"),
        ("name: bad\narch: x86_64\nbackend: tpu\nprecisions: [fp32]\ntargets: [onnx]\n", 3, "backend", "xnnpack"),
        ("name: bad\narch: x86_64\nbackend: fbgemm\nprecisions: [fp32, fp32]\ntargets: [onnx]\n",
         4, "precisions", "listed twice"),
    ],
)
def test_bad_profile_names_file_line_and_field(tmp_path: Path, body: str, line: int, field: str, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        edgekit.load_profile(str(path))
    msg = str(info.value)
    assert f"{path}:{line}" in msg and f"field '{field}'" in msg and words in msg


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.yaml", """
        name: broken
        targets: [onnx
        arch: x86_64
    """)
    with pytest.raises(ConfigError, match=rf"{path}:\d+: malformed YAML"):
        edgekit.load_profile(str(path))


def test_profile_name_must_match_file_name(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "name: b\narch: x86_64\nbackend: fbgemm\nprecisions: [fp32]\ntargets: [onnx]\n")
    with pytest.raises(ConfigError, match="rename the file to b.yaml"):
        edgekit.load_profile(str(path))


def test_target_tolerance_out_of_range_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "t.yaml", """
        name: t
        format: onnx
        extension: .onnx
        precisions: [fp32]
        tolerance:
          fp32: {min_cosine: 1.5}
    """)
    with pytest.raises(ConfigError, match=r"t.yaml:6: field 'tolerance.fp32.min_cosine'"):
        edgekit.load_target(str(path))


def test_devices_default_to_the_builtin_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert list(edgekit.load_devices()) == ["local"]


def test_devices_file_entries_and_errors(tmp_path: Path) -> None:
    good = write(tmp_path / "devices.yaml", """
        devices:
          - {name: pi4-lab, kind: ssh, host: 10.0.0.5, user: pi, profile: pi4, tags: [arm64]}
    """)
    devices = edgekit.load_devices(good)
    assert devices["pi4-lab"].kind == "ssh" and devices["pi4-lab"].port == 22 and "local" in devices
    dup = write(tmp_path / "dup.yaml", """
        devices:
          - {name: a, kind: ssh, host: h1}
          - {name: a, kind: ssh, host: h2}
    """)
    with pytest.raises(ConfigError, match=r"dup.yaml:3: field 'devices.1.name': duplicate device name 'a'; names "
                                          r"must be unique: rename this one or the one at line 2"):
        edgekit.load_devices(dup)
    secret = write(tmp_path / "secret.yaml", """
        devices:
          - {name: a, kind: ssh, host: h1, password: hunter2}
    """)
    with pytest.raises(ConfigError, match=r"secret.yaml:2: field 'devices.0.password': secrets do not belong in devices.yaml"):
        edgekit.load_devices(secret)
    with pytest.raises(UnknownNameError, match="did you mean 'pi4-lab'"):
        edgekit.get_device("pi4-lb", good)


def test_a_closed_port_is_refused_clearly_and_names_the_device() -> None:
    import socket

    from edgekit.errors import DeviceError
    from edgekit.transport import open_transport

    with socket.socket() as s:  # a loopback port nobody listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dev = edgekit.SshDevice(name="pi 4; lab", kind="ssh", host="127.0.0.1", port=port, connect_timeout=5)
    with pytest.raises(DeviceError, match=rf"device 'pi 4; lab': connection refused by 127.0.0.1:{port}: is sshd running"):
        open_transport(dev)


def test_the_commented_ssh_example_in_devices_yaml_is_valid(tmp_path) -> None:
    """The registry's example is what a user copies: uncommented, it must load as written."""
    from pathlib import Path

    from edgekit.config.device import load_devices

    text = (Path(__file__).parents[2] / "devices.yaml").read_text()
    example = [line[2:] for line in text.splitlines() if line.startswith("# ") and line[2:3] in ("d", " ")]
    start = example.index("devices:")
    (tmp_path / "devices.yaml").write_text("\n".join(example[start:]) + "\n")
    devices = load_devices(tmp_path / "devices.yaml")
    assert devices["pi-1"].kind == "ssh" and devices["pi-1"].profile == "pi4"
