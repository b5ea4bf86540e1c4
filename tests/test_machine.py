"""cringe.machine: the CPU as result file names and reports name it, read from /proc/cpuinfo."""

import platform

import pytest

from cringe import machine, models

CPUINFO = (
    "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu amx_bf16\n"
)


def fake_cpuinfo(monkeypatch, tmp_path, text: str | None) -> None:
    path = tmp_path / "cpuinfo"
    if text is not None:
        path.write_text(text)
    monkeypatch.setattr(machine, "Path", lambda _: path)


def test_fields_are_read_from_cpuinfo(monkeypatch, tmp_path):
    fake_cpuinfo(monkeypatch, tmp_path, CPUINFO)
    assert machine.cpu_model() == "Intel(R) Xeon(R) Processor"
    assert models.cpu_flags() == {"fpu", "amx_bf16"} and models.cpu_prefers_bf16()


def test_without_cpuinfo_the_platform_names_the_cpu(monkeypatch, tmp_path):
    fake_cpuinfo(monkeypatch, tmp_path, None)
    assert machine.cpuinfo("model name") == "" and models.cpu_flags() == set()
    assert machine.cpu_model() == (platform.processor() or platform.machine())


@pytest.mark.parametrize(
    "model, label",
    [
        ("Intel(R) Xeon(R) Platinum 8480+", "xeon"),
        ("AMD EPYC 7R13 Processor", "epyc"),
        ("Intel(R) Core(TM) i7-1185G7 @ 3.00GHz", "cpu"),
    ],
)
def test_result_files_name_the_cpu_family(monkeypatch, tmp_path, model, label):
    fake_cpuinfo(monkeypatch, tmp_path, f"model name\t: {model}\n")
    assert machine.cpu_label() == label
