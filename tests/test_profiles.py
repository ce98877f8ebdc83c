import json
import re

import pytest
import tomllib

from edgeprune.errors import InputError
from edgeprune.profile import available_profiles, load_profile, load_profile_file

from conftest import ROOT, run_cli

SEVEN = {"jetson-orin-nano", "jetson-agx-orin", "iphone-15-pro", "x86-avx2", "x86-avx512-vnni", "x86-amx", "a100",
         "rtx-3090"}


def test_list_json_has_the_seven_builtin_profiles():
    proc = run_cli("profiles", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert SEVEN <= set(rows)
    assert rows["host"]["path"] is None and rows["host"]["kernels"]["fp32"] in ("sse", "avx2", "avx512", "neon")


@pytest.mark.parametrize("name", sorted(SEVEN))
def test_every_builtin_profile_is_valid_and_cites_its_numbers(name):
    profile = load_profile(name)
    assert profile.name == name
    raw = tomllib.loads((ROOT / "profiles" / f"{name}.toml").read_text())
    for key in ("channel_multiple", "memory_bandwidth_gbs", "memory_gb"):
        assert raw[key]["source"].strip()
    for precision in profile.precisions:
        if precision == "int4":  # weight-only: it computes in a precision the profile lists with its peak
            assert set(profile.compute) & {"fp32", "fp16", "int8"}
            continue
        assert profile.compute[precision].source.strip()
    assert profile.efficiency.source.strip() and profile.sparsity.source.strip()


def test_profiles_state_what_their_hardware_exploits():
    assert load_profile("a100").sparsity.nm.min_channels == 256
    assert load_profile("a100").peak_tops("fp16", sparse=True) == 2 * load_profile("a100").peak_tops("fp16")
    assert load_profile("iphone-15-pro").sparsity.unstructured.min_sparsity == 0.75
    assert load_profile("x86-avx2").sparsity.nm is None and load_profile("x86-avx2").int8_activation == "u8"
    assert load_profile("x86-avx512-vnni").int8_activation == "u8"
    assert load_profile("jetson-orin-nano").preferred_format == "tensorrt"


def test_show_json_round_trips_the_file():
    proc = run_cli("profiles", "show", "jetson-orin-nano", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["compute"]["int8"] == {"dense_tops": 20.0, "sparse_tops": 40.0,
                                       "source": data["compute"]["int8"]["source"]}
    assert data["memory_bandwidth_gbs"]["value"] == 68


def _broken_copy(tmp_path, drop=None, replace=None):
    text = (ROOT / "profiles" / "x86-avx2.toml").read_text()
    if drop:
        text = "\n".join(line for line in text.splitlines() if not line.startswith(drop))
    if replace:
        text = text.replace(*replace)
    path = tmp_path / "my-board.toml"
    path.write_text(text.replace('name = "x86-avx2"', 'name = "my-board"'))
    return path


def test_broken_profile_names_file_and_field_with_exit_2(tmp_path):
    path = _broken_copy(tmp_path, drop="memory_bandwidth_gbs")
    proc = run_cli("profiles", "show", str(path))
    assert proc.returncode == 2
    assert "memory_bandwidth_gbs" in proc.stderr and "my-board.toml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wrong_type_and_unknown_field_are_named(tmp_path):
    bad_type = _broken_copy(tmp_path, replace=("dense_tops = 0.384", 'dense_tops = "fast"'))
    with pytest.raises(InputError, match=r"compute\.fp32\.dense_tops"):
        load_profile_file(bad_type)
    unknown = _broken_copy(tmp_path, replace=("cores = 4", "cores = 4\ncoers = 4"))
    with pytest.raises(InputError, match="coers"):
        load_profile_file(unknown)
    not_toml = tmp_path / "broken.toml"
    not_toml.write_text("name = [")
    with pytest.raises(InputError, match="not valid TOML"):
        load_profile_file(not_toml)


def test_user_profiles_by_path_and_by_search_path(tmp_path, monkeypatch):
    path = _broken_copy(tmp_path)  # a valid copy under another name
    assert load_profile(str(path)).name == "my-board"
    monkeypatch.setenv("EDGEPRUNE_PROFILE_PATH", str(tmp_path))
    assert "my-board" in available_profiles()
    assert load_profile("my-board").cores == 4
    proc = run_cli("profiles", "list", "--json", env={"EDGEPRUNE_PROFILE_PATH": str(tmp_path)})
    assert "my-board" in {row["name"] for row in json.loads(proc.stdout)}


def test_unknown_profile_is_exit_2_listing_the_known_ones():
    proc = run_cli("profiles", "show", "jetson-nano-9000")
    assert proc.returncode == 2
    assert "unknown profile" in proc.stderr and "x86-avx2" in proc.stderr


def test_probe_writes_a_valid_profile_of_this_machine(tmp_path):
    out = tmp_path / "here.toml"
    proc = run_cli("profiles", "probe", "-o", str(out), "--name", "here", "--seconds", "0.15")
    assert proc.returncode == 0, proc.stderr
    profile = load_profile_file(out)
    assert profile.name == "here" and profile.cores >= 1
    # A CPU does at least a GFLOP/s and moves at least 1 GB/s; anything less is a broken probe.
    assert profile.compute["fp32"].dense_tops > 1e-3
    assert profile.memory_bandwidth_gbs.value > 1
    assert "int8" in profile.compute and profile.compute["int8"].dense_tops > 1e-3
    assert "measured" in profile.compute["fp32"].source
    # the estimator's factors are calibrated on this machine: compute per precision, shallow and depthwise terms
    eff = profile.efficiency
    assert "calibrated" in eff.source and 0.01 <= eff.compute <= 1
    assert set(eff.compute_by_precision) >= {"fp32", "int8"} and set(eff.depthwise_ns_by_precision) == {"fp32", "int8"}
    assert set(eff.depthwise_channel_ns_by_precision) == {"fp32", "int8"}
    assert "depthwise convolutions" in eff.source
    # how far the machine's speed swung while probed: the shortest kernels' round medians, over the calibration
    assert eff.swing >= 1 and f"swing {eff.swing:g}" in eff.source and f"swing {eff.swing:g})" in proc.stderr
    # and what a kernel split over the threads cost at times, on the hand-off chain timed in the same rounds
    assert eff.stall_us is not None and eff.stall_us >= 0 and f"stall {eff.stall_us:g} us" in eff.source
    # fitted to the rounds in which that chain said the machine was quiet (or, where too few were, to every round)
    quiet = re.search(r"fitted to the (\d+) of (\d+) rounds in which the machine was quiet", eff.source)
    assert (quiet and 3 <= int(quiet[1]) <= int(quiet[2])) or "fitted to every round: in only" in eff.source
    # the probe writes the kernel classes of this machine, so the profile stands for it
    from edgeprune.host import this_host
    from edgeprune.measure.local import stand_in

    assert profile.kernels == {p: this_host().kernel_class(p) for p in ("fp32", "int8")}
    assert stand_in(profile, "int8").here and stand_in(profile, "fp32").threads == profile.cores


def test_a_probe_of_a_virtual_machine_counts_on_its_threads_running_no_faster_than_one(tmp_path):
    """A VM's other cores may at times not run when a kernel hands them work (seen on a 2-vCPU VM: a
    MobileNetV2 at two threads as slow as at one, for seconds): its probe's swing is at least its chain of
    the shortest kernels' time on one thread over its median on all, timed in the same rounds."""
    import dataclasses
    import re

    from edgeprune.host import this_host
    from edgeprune.probe import probe_host

    here = this_host()
    virtual = dataclasses.replace(here, flags=here.flags | {"hypervisor"})
    data = probe_host(name="vm", seconds=0.15, threads=2, host=virtual)
    eff = data["efficiency"]
    found = re.search(r"it ran ([\d.]+) times as long on one thread as on 2", eff["source"])
    assert found, eff["source"]
    # (probed while the machine runs slow, two threads are no faster than one: the ratio is then near 1 or below)
    assert eff["swing"] >= max(1.0, float(found.group(1)) - 0.005)
    assert f"swing {eff['swing']:g}" in eff["source"]
    # each hand-off kernel at worst as long as on one thread: its one-thread time, per kernel, is counted too
    assert "stall" in eff["source"] and "(at worst: on one thread)" in eff["source"]

