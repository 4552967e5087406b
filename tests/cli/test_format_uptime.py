"""Get-VM's Uptime as Hyper-V writes a TimeSpan: hh:mm:ss, d.hh:mm:ss past a day."""

from vmis.cli.table import format_uptime


def test_format_uptime():
    assert format_uptime(None) == ""
    assert format_uptime(True) == ""
    assert format_uptime(0) == "00:00:00"
    assert format_uptime(59.9) == "00:00:59"
    assert format_uptime(3 * 3600 + 4 * 60 + 5) == "03:04:05"
    assert format_uptime(86399) == "23:59:59"
    assert format_uptime(2 * 86400 + 3661) == "2.01:01:01"
