"""caps_zoo.hardware: the CPU's bf16 units read from /proc/cpuinfo, and the
warning for mixed_bfloat16 where bfloat16 is emulated (7x slower, measured)."""

import warnings

import pytest
import tensorflow as tf

from caps_zoo import hardware

# Two processors, as /proc/cpuinfo lists them; only the first is read.
XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile
"""
EPYC = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 fma
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm
"""


@pytest.fixture
def cpuinfo(tmp_path):
    def write(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return str(path)
    return write


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [] if kind == "GPU" else real(kind))


def test_bf16_units_read_from_the_flags(cpuinfo, tmp_path):
    assert hardware.cpu_bf16_units(cpuinfo(XEON)) == ("avx512_bf16", "amx_bf16")
    assert hardware.cpu_bf16_units(cpuinfo(EPYC)) == ()
    # No x86 flags line (ARM), or no file (not Linux): unknown, not "none".
    assert hardware.cpu_bf16_units(cpuinfo(ARM)) is None
    assert hardware.cpu_bf16_units(str(tmp_path / "missing")) is None


def test_machine_description_names_the_cpu_and_its_bf16_units(cpuinfo):
    described = hardware.machine_description(cpuinfo(EPYC))
    assert "AMD EPYC" in described and "no bf16 units" in described and "no GPU" in described
    assert "avx512_bf16, amx_bf16" in hardware.machine_description(cpuinfo(XEON))
    assert "bf16" not in hardware.machine_description(cpuinfo(ARM))


def test_mixed_bfloat16_warns_only_where_bfloat16_is_emulated(cpuinfo):
    with pytest.warns(RuntimeWarning, match="AMD EPYC.*--precision float32"):
        hardware.check_precision("mixed_bfloat16", cpuinfo(EPYC))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hardware.check_precision("mixed_bfloat16", cpuinfo(XEON))
        hardware.check_precision("mixed_bfloat16", cpuinfo(ARM))  # unknown: no claim
        hardware.check_precision("float32", cpuinfo(EPYC))
        hardware.check_precision("mixed_float16", cpuinfo(EPYC))


def test_mixed_bfloat16_does_not_warn_beside_a_gpu(cpuinfo, monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hardware.check_precision("mixed_bfloat16", cpuinfo(EPYC))
