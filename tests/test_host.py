"""Which machine stands in for which profile: kernel classes, cores, and --measure-here.

Every host here is injected, so the decisions are pinned whatever CPU runs the suite.
"""

import json

import pytest

from edgeprune.backends.onnx_tools.quantize import int8_config_for, reduce_range_for
from edgeprune.errors import InputError
from edgeprune.host import Host, kernel_class
from edgeprune.measure.local import stand_in
from edgeprune.profile import host_profile, load_profile
from edgeprune.target import BuildOptions

from conftest import DIGITS, build_report, run_cli

AVX2 = {"sse2", "sse4_2", "avx", "avx2", "fma", "f16c"}
SKYLAKE_SP = AVX2 | {"avx512f", "avx512bw", "avx512dq", "avx512vl"}
ZEN4 = SKYLAKE_SP | {"avx512_vnni", "avx512_bf16"}
ALDER_LAKE = AVX2 | {"avx_vnni"}
SAPPHIRE_RAPIDS = ZEN4 | {"avx_vnni", "amx_tile", "amx_int8", "amx_bf16"}


def host(flags: set[str], cores: int, cpu: str = "test CPU", machine: str = "x86_64") -> Host:
    return Host(cpu=cpu, machine=machine, cores=cores, flags=frozenset(flags), system="Linux", mhz=3000.0)


@pytest.mark.parametrize(("flags", "fp32", "int8"), [
    (AVX2, "avx2", "avx2"),
    (SKYLAKE_SP, "avx512", "avx512-core"),
    (ZEN4, "avx512", "avx512-vnni"),
    (ALDER_LAKE, "avx2", "avx-vnni"),
    (SAPPHIRE_RAPIDS, "avx512", "amx"),
])
def test_kernel_class_follows_what_onnx_runtime_dispatches_on(flags, fp32, int8):
    assert (kernel_class(flags, "fp32", "x86"), kernel_class(flags, "int8", "x86")) == (fp32, int8)
    assert kernel_class(flags, "fp16", "x86") == fp32  # fp16 runs on the fp32 kernels of these CPUs


def test_arm_classes_and_unknown_flags():
    assert kernel_class({"neon", "asimd", "asimddp"}, "int8", "arm") == "neon-dot"
    assert kernel_class({"neon", "asimd", "asimddp", "i8mm"}, "int8", "arm") == "neon-i8mm"
    assert kernel_class(set(), "fp32", "x86") is None


def test_builtin_x86_profiles_carry_the_class_of_their_cpu():
    classes = {name: (load_profile(name).kernel_class("fp32"), load_profile(name).kernel_class("int8"))
               for name in ("x86-avx2", "x86-avx512-vnni", "x86-amx")}
    assert classes == {"x86-avx2": ("avx2", "avx2"), "x86-avx512-vnni": ("avx512", "avx512-vnni"),
                       "x86-amx": ("avx512", "amx")}
    # u8 x s8 on every x86 class: what ONNX Runtime's kernels take and the only type it fuses residual adds for
    assert [load_profile(n).int8_activation for n in classes] == ["u8", "u8", "u8"]


# (host, profile, precision) -> stands in?
MATRIX = [
    (host(AVX2, 4), "x86-avx2", "fp32", True),
    (host(AVX2, 4), "x86-avx2", "int8", True),
    (host(AVX2, 8), "x86-avx2", "int8", True),           # more cores: timed with the profile's 4
    (host(AVX2, 2), "x86-avx2", "fp32", False),          # fewer cores than the device
    (host(ALDER_LAKE, 8), "x86-avx2", "fp32", True),     # same fp32 kernels
    (host(ALDER_LAKE, 8), "x86-avx2", "int8", False),    # AVX-VNNI int8 is not the device's U8S8
    (host(ZEN4, 16), "x86-avx2", "fp32", False),         # AVX-512 fp32 kernels
    (host(ZEN4, 16), "x86-avx512-vnni", "fp32", True),
    (host(ZEN4, 16), "x86-avx512-vnni", "int8", True),
    (host(ZEN4, 8), "x86-avx512-vnni", "int8", False),   # 8 of 16 cores
    (host(SKYLAKE_SP, 16), "x86-avx512-vnni", "fp32", True),
    (host(SKYLAKE_SP, 16), "x86-avx512-vnni", "int8", False),  # no VNNI
    (host(SAPPHIRE_RAPIDS, 56), "x86-avx2", "fp32", False),
    (host(SAPPHIRE_RAPIDS, 56), "x86-avx2", "int8", False),
    (host(SAPPHIRE_RAPIDS, 56), "x86-avx512-vnni", "fp32", True),
    (host(SAPPHIRE_RAPIDS, 56), "x86-avx512-vnni", "int8", False),  # AMX int8 kernels
    (host(SAPPHIRE_RAPIDS, 56), "x86-amx", "int8", True),
    (host(SAPPHIRE_RAPIDS, 2), "x86-amx", "int8", False),
    (host(ZEN4, 56), "x86-amx", "int8", False),
    (host({"neon", "asimd", "asimddp"}, 8, machine="aarch64"), "x86-avx2", "fp32", False),
]


@pytest.mark.parametrize(("machine", "profile", "precision", "here"), MATRIX)
def test_a_host_stands_in_only_with_the_same_kernels_and_enough_cores(machine, profile, precision, here):
    decision = stand_in(load_profile(profile), precision, machine)
    assert decision.here is here, decision.reason
    if here:
        assert decision.threads == load_profile(profile).cores  # timed with the device's cores
        assert "runs the kernels of profile" in decision.reason
    else:
        assert decision.threads is None and decision.reason


def test_an_amx_host_never_measures_for_avx2_unless_told_and_then_says_how_it_differs():
    amx = host(SAPPHIRE_RAPIDS, 2, cpu="Intel Xeon Platinum 8480+")
    refused = stand_in(load_profile("x86-avx2"), "int8", amx)
    assert not refused.here and "amx int8 kernels, profile x86-avx2 avx2" in refused.reason
    assert "2 cores, profile x86-avx2 4" in refused.reason
    told = stand_in(load_profile("x86-avx2"), "int8", amx, measure_here=True)
    assert told.here and told.measure_here and told.threads == 2  # all it has, never more than the device's
    assert "amx int8 kernels" in told.differs and told.to_dict()["host"].startswith("Intel Xeon Platinum 8480+")


def test_threads_beyond_the_profile_and_measure_here_for_a_gpu_are_refused():
    with pytest.raises(InputError, match="--threads 8 is more than the 4 cores of profile x86-avx2"):
        stand_in(load_profile("x86-avx2"), "fp32", host(AVX2, 16), threads=8)
    with pytest.raises(InputError, match="--measure-here times a CPU profile"):
        stand_in(load_profile("a100"), "fp16", host(AVX2, 16), measure_here=True)
    assert not stand_in(load_profile("jetson-orin-nano"), "fp16", host(SAPPHIRE_RAPIDS, 56)).here


@pytest.mark.parametrize("flags", [AVX2, SKYLAKE_SP, ZEN4, ALDER_LAKE, SAPPHIRE_RAPIDS])
def test_the_host_profile_is_valid_and_is_its_own_device(flags):
    machine = host(flags, 2)
    profile = host_profile(machine)
    assert profile.name == "host" and profile.cores == 2
    for precision in ("fp32", "fp16", "int8"):
        assert stand_in(profile, precision, machine).here
    assert profile.compute["int8"].dense_tops >= profile.compute["fp32"].dense_tops > 0
    full_range = profile.kernel_class("int8") in ("avx-vnni", "avx512-vnni", "amx")
    assert profile.int8_activation == "u8" and profile.int8_full_range is full_range


def test_int8_settings_follow_the_class_of_the_device_and_of_the_verifying_host():
    avx2, vnni, amx = (load_profile(n) for n in ("x86-avx2", "x86-avx512-vnni", "x86-amx"))
    assert reduce_range_for(avx2, host(SAPPHIRE_RAPIDS, 4))[0] is True        # the device saturates
    assert reduce_range_for(vnni, host(AVX2, 4))[0] is True                  # the verifying host saturates
    assert reduce_range_for(vnni, host(ZEN4, 4)) == (False, "")
    assert reduce_range_for(amx, host(SAPPHIRE_RAPIDS, 4)) == (False, "")
    assert "avx2 int8 kernels" in reduce_range_for(avx2, host(ZEN4, 4))[1]


def test_int8_config_is_u8s8_full_range_on_amx():
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 4, 3, 3], [0.1] * 288)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    config = int8_config_for(load_profile("x86-amx"), helper.make_model(graph), host=host(SAPPHIRE_RAPIDS, 16))
    assert (config.mode, config.activation, config.reduce_range) == ("static", "u8", False)


def test_a_build_for_avx2_on_an_amx_host_is_estimated_and_measure_here_records_the_host(tmp_path):
    amx = host(SAPPHIRE_RAPIDS, 16, cpu="Intel Xeon Platinum 8480+")
    report = build_report(BuildOptions(model=str(DIGITS), profile="x86-avx2", output=tmp_path / "est", strategy="none",
                                quantize="none", host=amx))
    lat = report["latency"]
    assert lat["source"] == "estimated" and lat["median_ms"] == lat["estimated_ms"] > 0
    assert "avx512 fp32 kernels, profile x86-avx2 avx2" in lat["note"] and "stands_in" not in lat
    told = build_report(BuildOptions(model=str(DIGITS), profile="x86-avx2", output=tmp_path / "here", strategy="none",
                              quantize="none", host=amx, measure_here=True))
    lat = told["latency"]
    assert lat["source"] == "measured" and lat["measure_here"] is True and lat["threads"] == 4
    assert lat["host"].startswith("Intel Xeon Platinum 8480+") and "avx512 fp32 kernels" in lat["differs"]
    assert json.loads((tmp_path / "here" / "report.json").read_text())["latency"]["differs"] == lat["differs"]


def test_measure_here_is_a_flag_and_a_target_key(tmp_path):
    target = tmp_path / "t.toml"
    target.write_text(f'model = "{DIGITS}"\nprofile = "x86-avx2"\nstrategy = "none"\nmeasure-here = "yes"\n')
    proc = run_cli("build", str(target), "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and "measure-here must be true or false" in proc.stderr
    assert "--measure-here" in run_cli("build", "--help").stdout
